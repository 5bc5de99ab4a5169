"""Golden numbers of DAPO's dynamic sampling: run verl's own statements on fixed groups.

    python tests/algo/golden/dapo_filter.py --verl /path/to/verl-checkout > tests/algo/golden/dapo_filter.json

Needs a checkout of verl at e2e729f (before the recipes moved out of the repository). The reward
manager and the trainer need Ray, a tokenizer and DataProto, so this script parses the two source
files and executes only the statements that decide: in ``verl/workers/reward_manager/dapo.py`` the
lines from ``score: float`` through the overlong-buffer block (score, acc, overlong penalty), and in
``recipe/dapo/dapo_ray_trainer.py`` the ``filter_groups`` branch up to ``new_batch =
new_batch[kept_traj_idxs]``, on a small stand-in for ``DataProto`` that holds the arrays they read.
The recipe's settings: ``filter_groups.metric=acc``, overlong buffer 4096 with factor 1.0 at 8192
response tokens (``recipe/dapo/run_dapo_qwen2.5_32b.sh``). Nothing of verl is stored here: only the
inputs below and the indices and rewards verl returns on them.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

MAX_LEN, BUFFER, FACTOR = 8192, 4096, 1.0
# (group id, correct, response length): group 0 all correct with one over-long response, group 1 all
# wrong with one over-long response, group 2 mixed, group 3 all correct and short, group 4 a single
# rollout, group 5 all correct with two different over-long lengths
ROLLOUTS = [(0, 1, 900), (0, 1, 5000), (0, 1, 1200), (0, 1, 300),
            (1, 0, 7000), (1, 0, 2000), (1, 0, 3100), (1, 0, 4095),
            (2, 1, 800), (2, 0, 6000), (2, 1, 1000), (2, 0, 500),
            (3, 1, 100), (3, 1, 200), (3, 1, 300), (3, 1, 400),
            (4, 1, 8000),
            (5, 1, 4500), (5, 1, 8192)]


def statements(path: Path, first, last) -> ast.Module:
    """The statements of ``path`` from the one ``first`` matches to the one ``last`` matches (inclusive),
    searched in every statement list of the module."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        for name in ("body", "orelse"):
            body = getattr(node, name, None)
            if not isinstance(body, list):
                continue
            starts = [i for i, s in enumerate(body) if first(s)]
            if starts:
                ends = [i for i, s in enumerate(body) if i >= starts[0] and last(s)]
                return ast.Module(body=body[starts[0]: ends[0] + 1], type_ignores=[])
    raise SystemExit(f"{path}: statements not found (is this verl @ e2e729f?)")


class Batch:
    """What the filter block reads of a DataProto: non_tensor_batch, batch, and row indexing."""

    def __init__(self, non_tensor: dict, tensors: dict) -> None:
        self.non_tensor_batch, self.batch = non_tensor, tensors

    def __getitem__(self, idx):
        return Batch({k: v[idx] for k, v in self.non_tensor_batch.items()}, {k: v[idx] for k, v in self.batch.items()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verl", type=Path, required=True)
    args = ap.parse_args()
    src = lambda s: ast.unparse(s)  # noqa: E731
    reward_code = compile(statements(
        args.verl / "verl/workers/reward_manager/dapo.py",
        lambda s: isinstance(s, ast.AnnAssign) and src(s.target) == "score",
        lambda s: isinstance(s, ast.If) and "overlong_buffer_cfg.enable" in src(s.test)), "dapo.py", "exec")
    filter_code = compile(statements(
        args.verl / "recipe/dapo/dapo_ray_trainer.py",
        lambda s: isinstance(s, ast.Assign) and src(s.targets[0]) == "metric_name",
        lambda s: isinstance(s, ast.Assign) and src(s).startswith("new_batch = new_batch[")), "trainer.py", "exec")

    extra, rewards = defaultdict(list), []
    manager = SimpleNamespace(overlong_buffer_cfg=SimpleNamespace(enable=True, len=BUFFER, penalty_factor=FACTOR, log=False),
                              max_resp_len=MAX_LEN)
    for _, correct, length in ROLLOUTS:
        ns = {"self": manager, "reward_extra_info": extra, "valid_response_length": length,
              "result": {"score": float(correct), "acc": bool(correct), "pred": None}}
        exec(reward_code, ns)
        rewards.append(float(ns["reward"]))
    uids = np.array([f"uid{g}" for g, _, _ in ROLLOUTS], dtype=object)
    new_batch = Batch({"uid": uids, "acc": np.array(extra["acc"], dtype=object)},
                      {"token_level_scores": torch.zeros(len(ROLLOUTS), 1)})
    trainer = SimpleNamespace(config=SimpleNamespace(algorithm=SimpleNamespace(filter_groups=SimpleNamespace(metric="acc"))))
    ns = {"self": trainer, "new_batch": new_batch, "np": np, "defaultdict": defaultdict, "num_prompt_in_batch": 0}
    exec(filter_code, ns)
    kept_idx = [int(i) for i in ns["kept_traj_idxs"]]
    print(json.dumps({"source": "verl @ e2e729f: workers/reward_manager/dapo.py, recipe/dapo/dapo_ray_trainer.py",
                      "max_len": MAX_LEN, "buffer": BUFFER, "factor": FACTOR, "rollouts": ROLLOUTS,
                      "rewards": rewards, "acc": [bool(a) for a in extra["acc"]], "kept": kept_idx,
                      "prompts_kept": int(ns["num_prompt_in_batch"])}, indent=1))


if __name__ == "__main__":
    main()
