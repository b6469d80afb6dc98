"""LoRA adapters in PEFT's format: a learned change ΔW as truncated-SVD factors, and back.

Writing (``export --as-adapter``): per matrix, ΔW = U·diag(σ)·Vᵀ in fp32; its first k singular
triplets give ``lora_B = U_k·diag(√σ_k)`` (out×k) and ``lora_A = diag(√σ_k)·V_kᵀ`` (k×in), so
lora_B·lora_A is the best rank-k approximation of ΔW (Eckart–Young) and keeps the fraction
Σ_{i≤k} σᵢ² / Σ σᵢ² of its energy (squared Frobenius norm). k comes from one of:

    rank=R      min(R, the matrix's rank) for every matrix;
    energy=E    per matrix, the smallest k that keeps at least E of that matrix's energy, so the
                worst matrix keeps >= E too (E = 1: every direction with a non-zero σ, which in
                floating point is the matrix's full rank min(out, in)).

The folder is what PEFT's save_pretrained writes: ``adapter_config.json`` (a LoraConfig, task
CAUSAL_LM) and ``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_{A,B}.weight``
under the model's own module names. PEFT's ``r`` is the largest k; matrices with a smaller k are
listed in ``rank_pattern``, and ``alpha_pattern`` repeats it with ``lora_alpha = r``, so that the
scaling alpha/r is 1 for every matrix and lora_B·lora_A is the approximation of ΔW as it is. PEFT
and vLLM (``max_lora_rank`` >= r, one of its sizes up to 512) both read the two patterns. Factors
stay fp32 whatever the base dtype: the change is small next to W, and bf16 factors would round it.

Reading (a ``model:`` that names an adapter): :func:`read_adapter` gives each base weight's
ΔW = scaling·B·A of a plain LoRA adapter (ours or any other), :func:`merged_weights` the base
weights with it added in fp32; variants whose effect is not B·A (DoRA, biases, saved modules, ...)
are refused in one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import ConfigError

if TYPE_CHECKING:
    import torch

# torch, safetensors and params (which imports torch) are imported inside the functions: models.py
# asks whether a folder is an adapter while the CLI answers --help or a bad recipe.

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
# Adapter options whose effect is not ΔW = scaling·B·A on a linear weight, and initialisations
# that also rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ): neither merges as B·A.
UNSUPPORTED_OPTIONS = ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save", "layer_replication",
                       "trainable_token_indices", "target_parameters", "alora_invocation_tokens")
BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")


class AdapterError(ConfigError):
    """An adapter that cannot be written or read as asked, explained in one line."""


@dataclass(frozen=True)
class RankChoice:
    """How the rank of each matrix is chosen: a rank for every matrix, or an energy per matrix."""

    rank: int | None = None
    energy: float | None = None

    @classmethod
    def of(cls, rank: int | None, energy: float | None) -> RankChoice:
        """The choice --rank / --energy make; DEFAULT_CHOICE when neither is given."""
        return DEFAULT_CHOICE if rank is None and energy is None else cls(rank, energy)

    def problem(self) -> str | None:
        """None if exactly one of rank and energy is set, and within range; else a one-line problem."""
        if (self.rank is None) == (self.energy is None):
            return "--rank and --energy both choose the adapter's rank: give one of them"
        if self.rank is not None and self.rank < 1:
            return f"--rank: got {self.rank}; expected an integer >= 1"
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            return f"--energy: got {self.energy:g}; expected a fraction of ΔW's energy in (0, 1], e.g. 0.99"
        return None

    @property
    def label(self) -> str:
        """The folder suffix and the card's words for it: r16, e0.99."""
        return f"r{self.rank}" if self.rank is not None else f"e{self.energy:g}"

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank} if self.rank is not None else {"energy": self.energy}


# The default (the measured trade-off between rank, energy and accuracy is in docs/adapters.md).
DEFAULT_CHOICE = RankChoice(energy=0.99)


@dataclass
class Factors:
    """One matrix's truncated SVD: ΔW ≈ lora_B·lora_A."""

    lora_A: torch.Tensor  # (k, in)
    lora_B: torch.Tensor  # (out, k)
    kept: float  # Σ kept σ²
    total: float  # Σ σ², the energy of ΔW

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]


def factorize(delta: torch.Tensor, choice: RankChoice) -> Factors | None:
    """ΔW's truncated SVD at the rank `choice` asks for; None when ΔW is exactly zero (nothing to adapt)."""
    import torch

    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    cumulative = (s.double() ** 2).cumsum(0)
    total = float(cumulative[-1])
    if total == 0.0:
        return None
    if choice.rank is not None:
        k = min(choice.rank, len(s))
    else:  # the fractions rise to exactly 1 (the total is their last sum): some k always reaches E <= 1
        k = int((cumulative / cumulative[-1] < choice.energy).sum()) + 1
    root = s[:k].sqrt()
    return Factors((root[:, None] * vh[:k]).contiguous(), (u[:, :k] * root).contiguous(), float(cumulative[k - 1]), total)


def module_of(weight: str) -> str:
    return weight.removesuffix(".weight")


def target_modules(modules: list[str], weights: list[str]) -> list[str]:
    """PEFT's target_modules: the short names (q_proj, ...) when they select exactly these modules
    among the model's 2-D `weights`, else the full module names (a run that trained some layers)."""
    short = sorted({m.rsplit(".", 1)[-1] for m in modules})
    selected = {module_of(w) for w in weights if module_of(w).rsplit(".", 1)[-1] in short}
    return short if selected == set(modules) else sorted(modules)


def write_adapter(folder: Path, factors: dict[str, Factors], base_model: str, model_weights: list[str]) -> dict:
    """Write adapter_config.json and adapter_model.safetensors for {base weight name: factors}
    into `folder`; `model_weights` are the base model's 2-D weights. Returns the config."""
    from peft import LoraConfig

    from .params import save_tensors

    ranks = {module_of(w): f.rank for w, f in factors.items()}
    r = max(ranks.values())
    pattern = {re.escape(m): k for m, k in sorted(ranks.items()) if k != r}  # keys are regexes to PEFT and vLLM
    config = LoraConfig(
        r=r, lora_alpha=r, rank_pattern=pattern, alpha_pattern=pattern, target_modules=sorted(ranks), lora_dropout=0.0,
        bias="none", task_type="CAUSAL_LM", base_model_name_or_path=base_model, inference_mode=True,
    ).to_dict()
    # What save_pretrained writes, in a stable order: its sets become sorted lists here.
    config.update(peft_type=config["peft_type"].value, target_modules=target_modules(sorted(ranks), model_weights))
    Path(folder, ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tensors = {}
    for weight, f in factors.items():
        tensors[f"{PEFT_PREFIX}{module_of(weight)}.lora_A.weight"] = f.lora_A
        tensors[f"{PEFT_PREFIX}{module_of(weight)}.lora_B.weight"] = f.lora_B
    save_tensors(tensors, Path(folder) / ADAPTER_WEIGHTS)
    return config


def is_adapter_folder(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def _pattern_value(pattern: dict, module: str):
    """PEFT's rank_pattern/alpha_pattern lookup (peft.utils.other.get_pattern_key): the first key
    that matches the end of the module name at a '.' boundary."""
    return next((v for k, v in pattern.items() if re.match(rf"(.*\.)?({k})$", module)), None)


def read_config(folder: Path) -> dict:
    """The adapter's config, checked to be a plain LoRA whose change is scaling·B·A."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: not a readable adapter config ({exc})") from None
    if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{path}: peft_type {config.get('peft_type') if isinstance(config, dict) else None!r}; only LoRA adapters merge as B·A")
    used = [k for k in UNSUPPORTED_OPTIONS if config.get(k)] + (["bias"] if config.get("bias", "none") != "none" else [])
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(BASE_REWRITING_INITS):
        used.append(f"init_lora_weights={init}")
    if used:
        raise AdapterError(f"{path}: uses {', '.join(used)}; only plain LoRA adapters (ΔW = scaling·B·A) can be merged")
    if not config.get("base_model_name_or_path"):
        raise AdapterError(f"{path}: no base_model_name_or_path; the adapter does not say which model it adapts")
    return config


def read_adapter(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config, {base weight name: ΔW in fp32}) of a plain LoRA adapter folder."""
    from safetensors.torch import load_file
    folder = Path(folder)
    config = read_config(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(f"{folder}: no {ADAPTER_WEIGHTS} (adapters saved as .bin are not read; re-save with safetensors)")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(folder / ADAPTER_WEIGHTS)).items():
        m = LORA_KEY.fullmatch(key)
        if m is None:
            raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: tensor {key} is not a LoRA factor of a linear layer")
        factors.setdefault(m.group(1), {})[m.group(2)] = tensor.float()
    deltas = {}
    for module, ab in factors.items():
        if ab.keys() != {"A", "B"}:
            raise AdapterError(f"{folder / ADAPTER_WEIGHTS}: {module} has lora_{''.join(ab)} only; expected lora_A and lora_B")
        rank = ab["A"].shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module) or config.get("lora_alpha", 8)
        scaling = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        deltas[f"{module}.weight"] = scaling * (ab["B"] @ ab["A"])
    return config, deltas


def merged_weights(base_dir: Path, deltas: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of the base checkpoint, the adapted ones as base + ΔW (added in fp32, stored in
    the base's dtype)."""
    from .params import load_tensors

    tensors = load_tensors(base_dir)
    for name, delta in deltas.items():
        if name not in tensors or tensors[name].shape != delta.shape:
            have = tuple(tensors[name].shape) if name in tensors else "no such weight"
            raise AdapterError(f"adapter: {name} {tuple(delta.shape)} does not fit the base model {base_dir} ({have})")
        tensors[name] = (tensors[name].float() + delta).to(tensors[name].dtype)
    return tensors
