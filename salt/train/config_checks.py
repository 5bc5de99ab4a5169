"""The run config's cross-field checks: rules that involve more than one key.

Each key's own checks (type, range, allowed values) are declared with the key in
:mod:`salt.train.config`; this module owns what :meth:`RunConfig.validate` checks afterwards:
sizes that must divide each other, method combinations, the tracking URI, the devices the config
asks for, and (``check_paths``) that model.path and the data files exist. Every error names the key
and the fix.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from salt import config_spec as spec
from salt.algo.decomposition import SaltConfig
from salt.algo.losses import LossConfig
from salt.config_spec import ConfigError, names_of

if TYPE_CHECKING:
    from salt.train.config import AlgorithmConfig, RunConfig


def model_path_problem(path: str, check_cache: bool = True, base: str | Path | None = None) -> str | None:
    """Why ``path`` cannot be loaded as a model (None: it can). A local dir (relative paths start at
    ``base``, default the working directory) needs a readable ``config.json``; ``owner/name`` that
    is no local path is a hub id, fine unless ``check_cache`` and ``HF_HUB_OFFLINE`` is set and it
    is not in the local Hugging Face cache."""
    from salt.tasks.sources import HUB_ID, at

    p = at(path, base)
    if (p / "config.json").is_file():
        return None if os.access(p / "config.json", os.R_OK) else f"has an unreadable {p / 'config.json'}"
    if p.exists():
        return "is a file, not a model dir" if p.is_file() else "has no config.json"
    if "/" not in path or path.startswith(("/", ".", "~")) or not HUB_ID.match(path):
        return "does not exist"
    if check_cache:
        from huggingface_hub import constants, try_to_load_from_cache

        if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(path, "config.json"), str):
            return ("is a hub id missing from the local Hugging Face cache, and HF_HUB_OFFLINE is set "
                    f"(download it first: huggingface-cli download {path})")
    return None


def _check_library_values(a: "AlgorithmConfig") -> None:
    """The values of the open sections, checked by the library's own dataclasses (messages name the key)."""
    spec.check_choice(a.loss.get("name"), names_of("salt.algo.losses:POLICY_LOSSES"), "algorithm.loss.name")
    try:
        LossConfig(**a.loss)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    try:
        SaltConfig(**a.salt.options)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"algorithm.salt: {exc}") from exc


def check_run_config(cfg: "RunConfig", check_paths: bool, check_devices: bool = True) -> None:
    """The checks that involve more than one key (each field's own checks ran in :func:`spec.check`)."""
    r, a, t = cfg.rollout, cfg.algorithm, cfg.train
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
            f"({' | '.join(names_of('salt.algo.selection:SELECTION_RULES')())}) or remove selection.n"
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
    # --- the open sections: names from the registry, values checked by the library's dataclasses
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
        import importlib.util

        if importlib.util.find_spec("vllm") is None:  # the device itself is vLLM's choice (at engine start)
            raise ConfigError(
                "rollout.backend = vllm needs vLLM in this environment: on a GPU `pip install .[vllm]`, on CPU "
                "its CPU build (`make setup-vllm`, then ./.venv-vllm/bin/salt); or set rollout.backend: hf"
            )
    if check_paths:
        what = model_path_problem(cfg.model.path)
        if what:
            raise ConfigError(
                f"model.path = '{cfg.model.path}' {what}; build the model first (`salt sft --out DIR`, or the "
                "workflow's warmup_sft rule) and point model.path at DIR/final, or at another Hugging Face model "
                "dir or hub id"
            )
        toy = [f"toy:{split}" for split in names_of("salt.tasks.toy:SPLITS")()]
        for key, value in (("data.train", cfg.data.train), ("data.eval", cfg.data.eval)):
            if value is None or str(value).startswith("toy:"):
                if value is not None and value not in toy:
                    raise ConfigError(f"{key} = {value!r}: the in-process toy splits are {', '.join(toy)}")
                continue
            if not Path(value).is_file():
                raise ConfigError(
                    f"{key} = '{value}' does not exist; create it with `salt prepare-data NAME --out DIR` "
                    f"(then DIR/data.jsonl) or use {' / '.join(repr(t) for t in toy)}"
                )
