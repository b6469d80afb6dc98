"""Push an exported model folder to the Hugging Face Hub (or any server speaking its API).

`push_folder` creates the repo if needed (``create_repo(exist_ok=True)``), the branch for
``--revision``, and uploads the folder in one ``upload_folder`` call. Every failure becomes a
:class:`HubError` with a one-line message: no token (how to get one), offline mode, HTTP errors
(401 token rejected, 403 no write access, ...), and network failures (the endpoint and the cause).

The endpoint is ``HF_ENDPOINT`` when set (read at call time, so a test can point it at a local
stand-in), else huggingface_hub's default. The token is ``HF_TOKEN`` or the one saved by
``hf auth login`` (older huggingface_hub: ``huggingface-cli login``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .terminal import first_line

TOKEN_HELP = "set HF_TOKEN=hf_... (a write token from https://huggingface.co/settings/tokens) or run `hf auth login`"
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


class HubError(RuntimeError):
    """A failed push, explained in one line."""


@dataclass
class PushResult:
    repo_url: str
    commit_url: str | None
    revision: str


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_repo_id(spec: str) -> bool:
    """True if `spec` has the form of a Hub repo id ORG/NAME (the one test the project uses:
    a model spec, a model card's base model, a push target)."""
    spec = spec or ""
    return bool(REPO_ID.fullmatch(spec)) and "--" not in spec and ".." not in spec and not spec.endswith((".", "-"))


def check_repo_id(repo_id: str) -> str | None:
    """None if `repo_id` is a valid ORG/NAME to push to, else a one-line problem."""
    if not is_repo_id(repo_id):
        return f"--push-to-hub: '{repo_id}' is not a repo id of the form ORG/NAME (letters, digits, - _ .)"
    if len(repo_id.split("/")[1]) > 96:
        return f"--push-to-hub: repo name '{repo_id.split('/')[1]}' is longer than 96 characters"
    return None


def find_token() -> tuple[str | None, str]:
    """(token or None, where it came from) without any network call."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(var, "").strip():
            return os.environ[var].strip(), var
    try:
        from huggingface_hub import get_token

        token = get_token()
    except Exception:  # e.g. an OIDC exchange that fails: treated as no token
        token = None
    return (token, "hf auth login") if token else (None, "")


def offline_mode() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _transport_errors() -> tuple[type, ...]:
    """Network-level exception classes of whichever HTTP client huggingface_hub uses."""
    import importlib

    classes: list[type] = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            classes.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(classes)


def describe_error(exc: BaseException, endpoint: str, repo_id: str) -> str:
    """One line for any exception of create_repo / create_branch / upload_folder."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(exc, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0) to push to the Hub"
    if isinstance(exc, HfHubHTTPError) and getattr(exc, "response", None) is not None:
        code = exc.response.status_code
        server = first_line(getattr(exc, "server_message", "") or "") or first_line(str(exc))
        if code == 401:
            return f"the Hub at {endpoint} rejected the token (HTTP 401: {server}); {TOKEN_HELP}"
        if code == 403:
            ns = repo_id.split("/")[0]
            return f"no write access to '{ns}' on {endpoint} (HTTP 403: {server}); use a token with write access to {ns}"
        if isinstance(exc, RevisionNotFoundError):
            return f"revision not found in {repo_id} (HTTP {code}: {server})"
        if isinstance(exc, RepositoryNotFoundError):
            return f"repo {repo_id} not found on {endpoint} (HTTP {code}: {server})"
        return f"the Hub at {endpoint} answered HTTP {code} for {repo_id}: {server}"
    if isinstance(exc, _transport_errors()):
        cause = first_line(str(exc)) or "no details"
        return f"could not reach the Hub at {endpoint} ({type(exc).__name__}: {cause}); check the network (and HF_ENDPOINT)"
    return f"push to {repo_id} failed ({type(exc).__name__}: {first_line(str(exc)) or 'no details'})"


def push_folder(
    folder: Path,
    repo_id: str,
    *,
    token: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    ignore_patterns: list[str] | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Create `repo_id` if needed and upload every file of `folder` to it (one commit or more)."""
    from huggingface_hub import HfApi

    endpoint = (endpoint or hub_endpoint()).rstrip("/")
    if offline_mode():
        raise HubError("HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0) to push to the Hub")
    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    try:
        api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
        if private:
            info = api.repo_info(repo_id, repo_type="model")
            if info.private is False:
                raise HubError(
                    f"{repo_id} already exists and is public; --private does not change an existing repo: "
                    "make it private on the Hub first, or drop --private"
                )
        if branch != "main":
            api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=branch,
            commit_message=commit_message or "Upload EGGROLL fine-tuned model (eggroll-rl export)",
            ignore_patterns=ignore_patterns,
        )
    except HubError:
        raise
    except Exception as exc:  # network, HTTP, offline: one line with the cause
        raise HubError(describe_error(exc, endpoint, repo_id)) from None
    return PushResult(
        repo_url=f"{endpoint}/{repo_id}" + (f"/tree/{branch}" if branch != "main" else ""),
        commit_url=getattr(commit, "commit_url", None),
        revision=branch,
    )
