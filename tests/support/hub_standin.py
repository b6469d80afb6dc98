"""A local stand-in for the Hugging Face Hub's HTTP API, enough for create_repo + upload_folder.

It implements exactly the calls huggingface_hub 2.x makes for ``HfApi.create_repo``,
``create_branch``, ``repo_info``, ``upload_folder`` and ``list_repo_files`` (read from
huggingface_hub/hf_api.py, _commit_api.py and _upload_pipeline.py):

    GET  /api/whoami-v2                                   the token's user
    POST /api/validate-yaml                               README metadata check (upload_folder sends README.md)
    POST /api/repos/create                                {name, organization, visibility, type}; 409 if it exists
    GET  /api/models/{org}/{name}[/revision/{rev}]        repo info (id, private, sha, siblings)
    POST /api/models/{org}/{name}/branch/{branch}         new branch from main; 409 if it exists
    POST /api/models/{org}/{name}/preupload/{rev}         upload mode per file: always "regular", so every
                                                          file's bytes come inline (base64) in the commit
    POST /api/models/{org}/{name}/commit/{rev}            ndjson: header, file (base64), deletedFile/Folder
    GET  /api/models/{org}/{name}/tree/{rev}[/{path}]     files and folders (recursive=true|false)

Because preupload never answers "lfs", no LFS batch or Xet storage call is ever made (a commit line
of kind "lfsFile" is rejected with 400). Write calls and reads of private repos need
``Authorization: Bearer <token>`` with the server's token (401 otherwise). Repos live in memory:
``server.repos[repo_id].branches[branch][path] -> bytes``; ``server.requests`` records
(method, path) of every call; ``server.fail[action] = (status, message)`` makes one kind of call
fail (action: create, info, branch, preupload, commit, tree). Only 127.0.0.1, random port.

    with HubStandIn(token="hf_test") as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        ...
        assert hub.files("org/name") == {...}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=dict)
    heads: dict[str, str] = field(default_factory=dict)
    commits: list[dict] = field(default_factory=list)


class _Error(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class HubStandIn:
    def __init__(self, token: str = "hf_standin_token", user: str = "standin-user"):
        self.token = token
        self.user = user
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.validated: list[str] = []  # README texts sent to /api/validate-yaml
        self.fail: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubStandIn":
        standin = self

        class Handler(_Handler):
            hub = standin

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HubStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests look at ----------------------------------------------------------------

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        with self.lock:
            return dict(self.repos[repo_id].branches[branch])

    # -- API -------------------------------------------------------------------------------

    def _auth(self, headers, required: bool) -> str | None:
        value = headers.get("authorization") or ""
        if not value:
            if required:
                raise _Error(401, "Invalid username or password.")
            return None
        if value != f"Bearer {self.token}":
            raise _Error(401, "Invalid credentials in Authorization header")
        return self.user

    def _repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and user is None):
            raise _Error(404, f"Repository Not Found for url: {repo_id}.", "RepoNotFound")
        return repo

    def _branch(self, repo: Repo, rev: str) -> dict[str, bytes]:
        if rev not in repo.branches:
            raise _Error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.branches[rev]

    def _check_fail(self, action: str) -> None:
        if action in self.fail:
            status, message = self.fail[action]
            raise _Error(status, message)

    def _commit(self, repo: Repo, branch: str, summary: str, files: dict[str, bytes]) -> str:
        oid = hashlib.sha1(
            json.dumps([repo.heads.get(branch), summary, sorted((p, git_blob_oid(b)) for p, b in files.items())]).encode()
        ).hexdigest()
        repo.heads[branch] = oid
        repo.commits.append({"oid": oid, "branch": branch, "summary": summary})
        return oid

    def handle(self, method: str, path: str, query: dict, headers, body: bytes) -> tuple[int, object, dict]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        with self.lock:
            self.requests.append((method, path))
            if method == "GET" and parts == ["api", "whoami-v2"]:
                user = self._auth(headers, required=True)
                return 200, {"type": "user", "name": user, "orgs": [], "auth": {"type": "access_token"}}, {}
            if method == "POST" and parts == ["api", "repos", "create"]:
                self._check_fail("create")
                self._auth(headers, required=True)
                payload = json.loads(body or b"{}")
                if payload.get("type", "model") != "model":
                    raise _Error(400, "only model repos in this stand-in")
                repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
                if repo_id in self.repos:
                    # like the Hub, the conflict names the existing repo (create_repo(exist_ok=True) reads it)
                    raise _Error(409, "You already created this model repo", "RepoExists", url=f"{self.url}/{repo_id}")
                repo = Repo(repo_id, private=payload.get("visibility") == "private")
                repo.branches["main"] = {".gitattributes": GITATTRIBUTES}
                self._commit(repo, "main", "initial commit", repo.branches["main"])
                self.repos[repo_id] = repo
                return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}, {}
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml(json.loads(body or b"{}"))
            if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                repo_id, action, rest = f"{parts[2]}/{parts[3]}", (parts[4] if len(parts) > 4 else ""), parts[5:]
                return self._repo_call(method, repo_id, action, rest, query, headers, body)
        raise _Error(404, f"no route for {method} {path} in the Hub stand-in")

    def _validate_yaml(self, payload: dict):
        """The README metadata must be a YAML mapping with list-of-string tags and a string licence."""
        content = payload.get("content", "")
        m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", content, re.S)
        errors = []
        if m:
            try:
                meta = yaml.safe_load(m.group(1))
            except yaml.YAMLError as exc:
                meta, errors = None, [{"message": f"invalid YAML: {exc}"}]
            if not errors and not isinstance(meta, dict):
                errors.append({"message": "metadata must be a YAML mapping"})
            elif not errors:
                if not isinstance(meta.get("license", ""), str):
                    errors.append({"message": '"license" must be a string'})
                tags = meta.get("tags", [])
                if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                    errors.append({"message": '"tags" must be a list of strings'})
        self.validated.append(content)
        if errors:
            return 400, {"error": "Invalid metadata in README.md", "errors": errors}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _repo_call(self, method, repo_id, action, rest, query, headers, body):
        if method == "GET" and action in ("", "revision"):
            self._check_fail("info")
            user = self._auth(headers, required=False)
            repo = self._repo(repo_id, user)
            branch = rest[0] if action == "revision" and rest else "main"
            files = self._branch(repo, branch)
            return 200, {
                "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "private": repo.private,
                "sha": repo.heads[branch], "siblings": [{"rfilename": p} for p in sorted(files)],
                "tags": [], "downloads": 0, "likes": 0, "disabled": False, "gated": False,
            }, {}
        if method == "POST" and action == "branch":
            self._check_fail("branch")
            user = self._auth(headers, required=True)
            repo = self._repo(repo_id, user)
            name = "/".join(rest)
            if name in repo.branches:
                raise _Error(409, f"Reference already exists: refs/heads/{name}")
            start = (json.loads(body or b"{}") or {}).get("startingPoint") or "main"
            repo.branches[name] = dict(self._branch(repo, start))
            repo.heads[name] = repo.heads[start]
            return 200, {}, {}
        if method == "POST" and action == "preupload":
            self._check_fail("preupload")
            user = self._auth(headers, required=True)
            repo = self._repo(repo_id, user)
            self._branch(repo, "/".join(rest))
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]}, {}
        if method == "POST" and action == "commit":
            self._check_fail("commit")
            user = self._auth(headers, required=True)
            repo = self._repo(repo_id, user)
            branch = "/".join(rest)
            files = dict(self._branch(repo, branch))
            summary = ""
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    summary = value.get("summary", "")
                elif key == "file":
                    if value.get("encoding") != "base64":
                        raise _Error(400, f"unsupported encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    files.pop(value["path"], None)
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {p: b for p, b in files.items() if not p.startswith(prefix)}
                else:  # lfsFile: preupload never asked for LFS
                    raise _Error(400, f"commit line of kind {key!r} is not supported by the stand-in")
            repo.branches[branch] = files
            oid = self._commit(repo, branch, summary, files)
            return 200, {"commitUrl": f"{self.url}/{repo_id}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}, {}
        if method == "GET" and action == "tree":
            self._check_fail("tree")
            user = self._auth(headers, required=False)
            repo = self._repo(repo_id, user)
            files = self._branch(repo, rest[0] if rest else "main")
            prefix = "/".join(rest[1:])
            prefix = prefix + "/" if prefix else ""
            recursive = (query.get("recursive", ["false"])[0]).lower() in ("true", "1")
            entries, dirs = [], set()
            for p in sorted(files):
                if not p.startswith(prefix):
                    continue
                sub = p[len(prefix):].split("/")
                for i in range(1, len(sub)):
                    dirs.add(prefix + "/".join(sub[:i]))
                if recursive or len(sub) == 1:
                    entries.append({"type": "file", "path": p, "size": len(files[p]), "oid": git_blob_oid(files[p])})
            for d in sorted(dirs):
                if recursive or "/" not in d[len(prefix):]:
                    entries.append({"type": "directory", "path": d, "size": 0, "oid": hashlib.sha1(d.encode()).hexdigest()})
            return 200, entries, {}
        raise _Error(404, f"no route for {method} /api/models/{repo_id}/{action} in the Hub stand-in")


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self, method: str) -> None:
        url = urlsplit(self.path)
        body = self._body()
        try:
            status, payload, extra = self.hub.handle(method, url.path, parse_qs(url.query), self.headers, body)
        except _Error as err:
            status, payload = err.status, {"error": err.message, **err.extra}
            extra = {"X-Error-Message": err.message}
            if err.code:
                extra["X-Error-Code"] = err.code
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_HEAD(self) -> None:
        self._serve("HEAD")
