"""Low-rank linear layers and the compressed model format.

``LowRankLinear`` computes ``A(B(x))``: B is r x n (no bias), A is m x r with the original bias,
so an m x n matrix costs r(m+n) weights.

A compressed model directory holds
- ``config.json``: the transformers config plus ``"lpaf_lowrank": {"ranks": {module: rank},
  "base_model_type": "bert"}``, with ``model_type`` set to ``lpaf_lowrank``;
- ``model.safetensors``: the factors ``<module>.A.weight``, ``<module>.A.bias``, ``<module>.B.weight``
  of every swapped module and every other weight of the model — never a full-rank matrix of a
  swapped module.

:func:`load_model` rebuilds such a directory (and loads plain Hugging Face directories) without
pickle and without remote code. ``model_type: lpaf_lowrank`` is what keeps plain transformers from
loading it wrong: ``AutoConfig`` / ``AutoModel*.from_pretrained`` and ``pipeline`` refuse a model type
they do not know (a ValueError naming ``lpaf_lowrank``), where the base model's type would have
"loaded" the directory with randomly initialised swapped modules. Directories written before
(``model_type`` of the base model beside the rank section) still load here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from lpaf import factorize
from lpaf.errors import LpafError
from lpaf.modules import find_encoder_linears, linear_weight

logger = logging.getLogger(__name__)

LOWRANK_CONFIG_KEY = "lpaf_lowrank"
LOWRANK_MODEL_TYPE = "lpaf_lowrank"  # unknown to transformers' Auto classes: they refuse the directory
LOWRANK_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

# Which Auto class rebuilds a saved architecture, by the suffix of ``config.architectures[0]``.
_AUTO_CLASS_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("Model", "AutoModel"),
)


class LowRankLinear(nn.Module):
    """y = A(B(x)); shapes: B.weight (rank, in_features), A.weight (out_features, rank)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.B = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.A = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same result as self.A(self.B(x)), but the bias is added in place after the product: on CPU,
        # addmm (what nn.Linear runs with a bias) first copies the broadcast bias into the fresh output
        # and then accumulates into it, an extra full pass over the module's largest tensor (about 2%
        # of a factorized BERT-base forward on CPU: benchmarks/inference_variants.py, "addmm_bias").
        out = F.linear(F.linear(x, self.B.weight), self.A.weight)
        return out if self.A.bias is None else out.add_(self.A.bias)

    def stored_weight_count(self) -> int:
        return self.rank * (self.in_features + self.out_features)

    def to_dense_weight(self) -> torch.Tensor:
        return self.A.weight @ self.B.weight

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"

    @torch.no_grad()
    def set_factors(self, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Copy factors A (out x rank) and B (rank x in), and optionally the bias, into the module.

        Checked for shape and finiteness first, so a failed factorization never leaves a half-updated
        module behind.
        """
        expected_a, expected_b = (self.out_features, self.rank), (self.rank, self.in_features)
        if tuple(A.shape) != expected_a or tuple(B.shape) != expected_b:
            raise LpafError(f"factor shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not match "
                            f"A {expected_a}, B {expected_b}")
        if bias is not None and (self.A.bias is None or tuple(bias.shape) != (self.out_features,)):
            raise LpafError(f"bias of shape {tuple(bias.shape)} does not fit a layer with "
                            f"{'no bias' if self.A.bias is None else f'bias ({self.out_features},)'}")
        tensors = [A, B] if bias is None else [A, B, bias]
        if not all(torch.isfinite(t).all() for t in tensors):
            raise LpafError(f"factors for a {self.out_features}x{self.in_features} layer contain NaN or Inf")
        self.A.weight.copy_(A)
        self.B.weight.copy_(B)
        if bias is not None:
            self.A.bias.copy_(bias)

    @classmethod
    def from_factors(cls, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor | None = None,
                     dtype: torch.dtype | None = None) -> "LowRankLinear":
        """A module carrying the given factors (A: out x rank, B: rank x in) and bias."""
        if A.dim() != 2 or B.dim() != 2 or A.shape[1] != B.shape[0]:
            raise LpafError(f"factors must be A (out x rank) and B (rank x in), got A {tuple(A.shape)}, "
                            f"B {tuple(B.shape)}")
        module = cls(B.shape[1], A.shape[0], A.shape[1], bias=bias is not None, device=A.device,
                     dtype=dtype or A.dtype)
        module.set_factors(A, B, bias)
        return module

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, factorizer: factorize.Factorizer | None = None,
                    weights: torch.Tensor | None = None) -> "LowRankLinear":
        """Factorize ``linear.weight`` (out x in) with ``factorizer(W, weights, rank) -> (A, B)``
        (default: truncated SVD); the new module keeps the linear's bias, dtype and device."""
        if not isinstance(linear, nn.Linear):
            raise LpafError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        factorizer = factorize.svd if factorizer is None else factorizer
        A, B = factorizer(linear.weight.detach(), weights, rank)
        dtype, device = linear.weight.dtype, linear.weight.device
        bias = None if linear.bias is None else linear.bias.detach()
        return cls.from_factors(A.to(device=device, dtype=dtype), B.to(device=device, dtype=dtype),
                                bias, dtype)

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """The dense nn.Linear computing the same function (weight = A B)."""
        weight = self.to_dense_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.A.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        linear.weight.copy_(weight)
        if self.A.bias is not None:
            linear.bias.copy_(self.A.bias)
        return linear


# --------------------------------------------------------------------------------------------
# Swapping encoder linears
# --------------------------------------------------------------------------------------------

def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _unknown_names_message(unknown: list[str], available: Mapping[str, nn.Module]) -> str:
    sample = ", ".join(list(available)[:3])
    return (f"{len(unknown)} name(s) are not encoder linear layers of this model: {', '.join(unknown[:5])}; "
            f"expected full module names such as {sample}")


def lowrank_ranks(model: nn.Module) -> dict[str, int]:
    """Module name -> rank of every LowRankLinear in the model (the ``ranks`` config section)."""
    return {name: mod.rank for name, mod in model.named_modules() if isinstance(mod, LowRankLinear)}


def swap_encoder_linears(model: nn.Module, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                         *, strict: bool = False) -> nn.Module:
    """Replace each named encoder nn.Linear by a LowRankLinear carrying (A, B) and the original bias.

    Names are full module names (``bert.encoder.layer.0.attention.self.query``). Every problem —
    unknown names, already-factorized modules, shape mismatches — is collected and reported in one
    error before anything is swapped. With ``strict``, encoder linears left dense are an error too.
    Returns the model (modified in place).
    """
    linears = find_encoder_linears(model)
    unknown = [name for name in factors if name not in linears]
    problems = [_unknown_names_message(unknown, linears)] if unknown else []
    for name, (A, B) in factors.items():
        module = linears.get(name)
        if module is None:
            continue
        if isinstance(module, LowRankLinear):
            problems.append(f"{name} is already factorized (rank {module.rank})")
        elif not isinstance(module, nn.Linear):
            problems.append(f"{name} is a {type(module).__name__}, not an nn.Linear")
        elif A.dim() != 2 or B.dim() != 2 or A.shape[0] != module.out_features \
                or B.shape[1] != module.in_features or A.shape[1] != B.shape[0]:
            problems.append(f"factors for {name} have shapes A {tuple(A.shape)}, B {tuple(B.shape)}; "
                            f"expected A ({module.out_features}, r), B (r, {module.in_features})")
    unmatched = [name for name in linears if name not in factors]
    if strict and unmatched:
        problems.append(f"{len(unmatched)} encoder linear(s) have no factors: {', '.join(unmatched[:5])}")
    if problems:
        raise LpafError("; ".join(problems))

    new_modules = {}
    for name, (A, B) in factors.items():  # build all first: a non-finite factor leaves the model untouched
        linear = linears[name]
        dtype, device = linear.weight.dtype, linear.weight.device
        bias = None if linear.bias is None else linear.bias.detach()
        try:
            new_modules[name] = LowRankLinear.from_factors(A.to(device=device, dtype=dtype),
                                                           B.to(device=device, dtype=dtype), bias, dtype)
        except LpafError as e:
            raise LpafError(f"{name}: {e}") from None
    for name, module in new_modules.items():
        _set_submodule(model, name, module)
    logger.info("swapped %d encoder linears into LowRankLinear; %d left dense", len(new_modules), len(unmatched))
    return model


def install_lowrank_modules(model: nn.Module, ranks: Mapping[str, int], source: str = "ranks") -> nn.Module:
    """Replace the named encoder linears by LowRankLinear modules of the given ranks (weights to be
    loaded afterwards). ``source`` names where the ranks came from, for error messages."""
    linears = find_encoder_linears(model)
    unknown = [name for name in ranks if name not in linears]
    problems = [_unknown_names_message(unknown, linears)] if unknown else []
    for name, rank in ranks.items():
        module = linears.get(name)
        if module is None:
            continue
        if not isinstance(module, nn.Linear):
            problems.append(f"{name} is a {type(module).__name__}, not an nn.Linear")
        elif isinstance(rank, bool) or not isinstance(rank, int) \
                or not 1 <= rank <= min(module.in_features, module.out_features):
            problems.append(f"rank of {name} must be an integer in "
                            f"[1, {min(module.in_features, module.out_features)}], got {rank!r}")
    if problems:
        raise LpafError(f"{source}: {'; '.join(problems)}")
    for name, rank in ranks.items():
        linear = linears[name]
        _set_submodule(model, name, LowRankLinear(linear.in_features, linear.out_features, rank,
                                                  bias=linear.bias is not None, device=linear.weight.device,
                                                  dtype=linear.weight.dtype))
    return model


def factorize_encoder(
    model: nn.Module,
    method: factorize.Method = "svd",
    *,
    density: float | None = None,
    rank_rule: factorize.RankRule = "budget",
    method_weights: Mapping[str, torch.Tensor] | None = None,
    **solver_options: Any,
) -> tuple[nn.Module, dict]:
    """Factorize every encoder linear of ``model`` in place: ranks, factors, swap — one call per stage.

    Ranks follow ``rank_rule`` ("budget": floor(p·m·n/(m+n)) at ``density``; "nnz": from each weight's
    non-zeros, for pruned models). ``method_weights`` and ``solver_options`` go to
    :func:`lpaf.factorize.factorize_matrices`. Returns the model and a report for metrics.json:
    the rank allocation, one log record per matrix, and the solver wall time.
    """
    linears = find_encoder_linears(model)
    done = [name for name, mod in linears.items() if isinstance(mod, LowRankLinear)]
    if done:
        raise LpafError(f"model is already factorized ({len(done)} LowRankLinear modules, e.g. {done[0]}); "
                        f"start from a dense or pruned model")
    weights = {name: linear_weight(mod).detach() for name, mod in linears.items()}
    shapes = {name: tuple(w.shape) for name, w in weights.items()}
    nnz = {name: int(torch.count_nonzero(w)) for name, w in weights.items()} if rank_rule == "nnz" else None
    plan = factorize.allocate_ranks(shapes, density, rule=rank_rule, nnz=nnz)
    start = time.perf_counter()
    results = factorize.factorize_matrices(weights, plan.ranks, method, method_weights, **solver_options)
    solver_s = time.perf_counter() - start
    swap_encoder_linears(model, {name: (r.A, r.B) for name, r in results.items()}, strict=True)
    report = {
        "method": method,
        "allocation": plan.to_dict(),
        "matrices": {name: r.log_record() for name, r in results.items()},
        "solver_wall_s": solver_s,
    }
    return model, report


# --------------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------------

def save_lowrank_model(model: nn.Module, out_dir: str | Path, tokenizer: Any = None) -> Path:
    """Write ``config.json`` (with the rank section), ``model.safetensors`` and the tokenizer."""
    import json

    import safetensors.torch

    from lpaf.artifacts import write_json

    ranks = lowrank_ranks(model)
    if not ranks:
        raise LpafError(f"{type(model).__name__} has no LowRankLinear modules; save dense models with "
                        f"save_pretrained")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_json_string"):
        raise LpafError(f"{type(model).__name__} has no transformers config; only transformers models "
                        f"can be saved in the low-rank format")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config_dict = json.loads(config.to_json_string(use_diff=False))
    config_dict["architectures"] = [type(model).__name__]
    config_dict[LOWRANK_CONFIG_KEY] = {"format_version": LOWRANK_FORMAT_VERSION, "ranks": ranks,
                                       "base_model_type": config_dict.get("model_type")}
    config_dict["model_type"] = LOWRANK_MODEL_TYPE
    # save_model de-duplicates tied tensors, which save_file would refuse.
    safetensors.torch.save_model(model, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    write_json(out_dir / CONFIG_FILE, config_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    return out_dir


def _auto_class(config_dict: dict, config_path: Path):
    import transformers

    architectures = config_dict.get("architectures") or []
    if not architectures:
        return transformers.AutoModel
    arch = str(architectures[0])
    for suffix, auto_name in _AUTO_CLASS_BY_SUFFIX:
        if arch.endswith(suffix):
            return getattr(transformers, auto_name)
    accepted = ", ".join(f"*{suffix}" for suffix, _ in _AUTO_CLASS_BY_SUFFIX)
    raise LpafError(f"{config_path}: architecture {arch} is not supported; expected one of {accepted}")


def _parse_ranks(section: Any, config_path: Path) -> dict[str, int]:
    ranks = section.get("ranks") if isinstance(section, dict) else None
    if not isinstance(ranks, dict) or not ranks:
        raise LpafError(f"{config_path}: '{LOWRANK_CONFIG_KEY}' must hold a non-empty 'ranks' mapping "
                        f"of module name to rank")
    return dict(ranks)


def _load_safetensors_strict(model: nn.Module, weights_path: Path) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    if not weights_path.is_file():
        raise LpafError(f"{weights_path} not found; a low-rank model directory needs its {WEIGHTS_FILE}")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights_path), strict=False)
    except (SafetensorError, OSError, ValueError) as e:
        raise LpafError(f"{weights_path} is not a readable safetensors file ({e})") from None
    except RuntimeError as e:  # size mismatches from load_state_dict
        lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line]
        detail = lines[0] if lines else str(e).splitlines()[0]
        raise LpafError(f"{weights_path} does not match the model in {CONFIG_FILE}: {detail}") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(sorted(missing)[:5])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(sorted(unexpected)[:5])}")
        raise LpafError(f"{weights_path} does not match the model in {CONFIG_FILE}: {'; '.join(parts)}")


def load_model(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a model directory: low-rank (lpaf format) or plain Hugging Face, safetensors only.

    The architecture (sequence classification, question answering or base model) comes from
    ``config.architectures``. ``kwargs`` go to ``from_config`` (low-rank) or ``from_pretrained``
    (plain), e.g. ``attn_implementation``. Remote code is never run. Returns the model in eval mode.
    """
    from lpaf.artifacts import read_json

    if kwargs.get("trust_remote_code"):
        raise LpafError("trust_remote_code is not supported: lpaf loads built-in transformers architectures only")
    kwargs.pop("trust_remote_code", None)
    path = Path(path)
    if not path.is_dir():
        raise LpafError(f"model directory not found: {path}")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise LpafError(f"{config_path} not found; expected a model directory with {CONFIG_FILE} and {WEIGHTS_FILE}")
    config_dict = read_json(config_path)
    auto_cls = _auto_class(config_dict, config_path)

    if LOWRANK_CONFIG_KEY not in config_dict:
        has_weights = (path / WEIGHTS_FILE).is_file() or (path / f"{WEIGHTS_FILE}.index.json").is_file()
        if not has_weights:
            raise LpafError(f"{path} has no {WEIGHTS_FILE}; lpaf loads safetensors only, never pickled weights")
        # A factorized model saved with plain save_pretrained has factors but no rank section:
        # rebuild its low-rank modules from the factor shapes instead of loading random weights.
        factor_ranks = _ranks_from_factor_shapes(path / WEIGHTS_FILE)
        if not factor_ranks:
            return _load_plain_checked(path, auto_cls, kwargs)
        ranks, rank_source = factor_ranks, f"the factor shapes in {path / WEIGHTS_FILE}"
        config = _plain_config(path, config_path)
    else:
        ranks, rank_source = _parse_ranks(config_dict[LOWRANK_CONFIG_KEY], config_path), str(config_path)
        config = base_config(config_dict, config_path)
    model = auto_cls.from_config(config, **kwargs)
    install_lowrank_modules(model, ranks, source=rank_source)
    _load_safetensors_strict(model, path / WEIGHTS_FILE)
    return model.eval()


def _plain_config(path: Path, config_path: Path):
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise LpafError(f"{config_path} is not a valid transformers config ({str(e).splitlines()[0]})") from None


def base_config(config_dict: dict, config_path: str | Path):
    """The base model's transformers config of a low-rank ``config.json`` (either format)."""
    from transformers import CONFIG_MAPPING

    section = config_dict.get(LOWRANK_CONFIG_KEY) or {}
    base_type = section.get("base_model_type") or config_dict.get("model_type")
    if base_type == LOWRANK_MODEL_TYPE or base_type not in CONFIG_MAPPING:
        raise LpafError(f"{config_path}: base model type {base_type!r} is not a transformers model type "
                        f"({LOWRANK_CONFIG_KEY}.base_model_type)")
    plain = {k: v for k, v in config_dict.items() if k not in (LOWRANK_CONFIG_KEY, "model_type")}
    try:
        return CONFIG_MAPPING[base_type].from_dict(plain)
    except (TypeError, ValueError) as e:
        raise LpafError(f"{config_path} is not a valid {base_type} config ({str(e).splitlines()[0]})") from None


def load_config(path: str | Path):
    """The transformers config of any model directory lpaf reads (for a low-rank one, its base model's)."""
    from lpaf.artifacts import read_json

    config_path = Path(path) / CONFIG_FILE
    config_dict = read_json(config_path)
    if LOWRANK_CONFIG_KEY in config_dict:
        return base_config(config_dict, config_path)
    return _plain_config(Path(path), config_path)


def _ranks_from_factor_shapes(weights_path: Path) -> dict[str, int]:
    """Module name -> rank for every ``<name>.A.weight`` / ``<name>.B.weight`` pair in a safetensors
    file (rank = A's columns); empty for a dense file or a sharded checkpoint."""
    from safetensors import SafetensorError, safe_open

    if not weights_path.is_file():
        return {}
    try:
        with safe_open(str(weights_path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise LpafError(f"{weights_path} is not a readable safetensors file ({e})") from None
    ranks = {}
    for key, shape in shapes.items():
        if key.endswith(".A.weight") and len(shape) == 2:
            name = key[: -len(".A.weight")]
            b_shape = shapes.get(f"{name}.B.weight")
            if b_shape is not None and len(b_shape) == 2 and b_shape[0] == shape[1]:
                ranks[name] = int(shape[1])
    return ranks


def _load_plain_checked(path: Path, auto_cls, kwargs: dict[str, Any]) -> nn.Module:
    """A plain checkpoint, refused when any encoder weight is missing or unexpected (transformers
    would initialise it at random and only log a report)."""
    kwargs = {"dtype": torch.float32, **kwargs}  # fp32 weights whatever the file stores (not dtype "auto")
    try:
        model, info = auto_cls.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                               output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise LpafError(f"cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    missing = sorted(k for k in info.get("missing_keys", []) if ".encoder." in k)
    unexpected = sorted(k for k in info.get("unexpected_keys", []) if ".encoder." in k)
    mismatched = [k for k, *_ in info.get("mismatched_keys", []) if ".encoder." in k]
    if missing or unexpected or mismatched:
        first = (missing or unexpected or mismatched)[0]
        raise LpafError(f"{path / WEIGHTS_FILE} does not match its config's encoder ({len(missing)} weights missing, "
                        f"{len(unexpected)} unexpected, {len(mismatched)} of another shape; first: {first}); "
                        f"refusing to return a model with randomly initialised encoder weights")
    return model.eval()
