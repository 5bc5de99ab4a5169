"""Golden numbers of the published actor's loss over micro-batches: verl's loss, SALT's dp_actor scaling.

    python tests/algo/golden/verl_micro_agg.py --verl /path/to/verl-v0.5.0 > tests/algo/golden/verl_micro_agg.json

``--verl`` is a checkout of verl v0.5.0 (the API SALT's ``dp_actor.py`` calls: ``compute_policy_loss(...,
clip_ratio_c, loss_agg_mode)``, ``agg_loss``). The script extracts ``compute_policy_loss`` and
``agg_loss`` from ``verl/trainer/ppo/core_algos.py`` and ``masked_sum`` / ``masked_mean`` from
``verl/utils/torch_functional.py`` with ``ast`` (the modules import Ray and more) and runs them per
micro-batch. The actor itself needs FSDP and a model, so its two lines that combine micro-batches
(Chang-pw/SALT @ 94ac08e ``verl/verl/workers/actor/dp_actor.py``, ``use_dynamic_bsz=True`` as in
``test_dapo_7b_math.sh``: ``loss = policy_loss * (response_mask.shape[0] / ppo_mini_batch_size)``, then
``loss.backward()`` per micro-batch) are written out below. DAPO's loss: clip 0.2 / 0.28, c = 10,
token-mean. Stored: the summed loss and its gradient with respect to the log-probs.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
from pathlib import Path

import torch

B, T = 8, 6
LENGTHS = [6, 2, 5, 1, 6, 3, 4, 2]
MICRO = [3, 3, 2]  # dynamic batch sizes (a token budget cuts micro-batches of different sizes)


def inputs():
    """Closed-form (B, T) log-probs, old log-probs, (B,) advantages and the response mask."""
    i = torch.arange(B, dtype=torch.float64)[:, None]
    t = torch.arange(T, dtype=torch.float64)[None, :]
    logp = -(0.3 + 0.9 * torch.sin(1.3 * i + 0.7 * t).abs())
    old = logp + 0.4 * torch.sin(2.1 * i * t + 0.5)
    adv = torch.tensor([math.sin(1.9 * k + 0.2) for k in range(B)], dtype=torch.float64)
    mask = (t < torch.tensor(LENGTHS, dtype=torch.float64)[:, None]).double()
    return logp, old, adv, mask


def functions(path: Path, names: set[str], namespace: dict) -> None:
    tree = ast.parse(path.read_text())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    for n in body:
        n.decorator_list = []
    if {n.name for n in body} != names:
        raise SystemExit(f"{path}: missing {names - {n.name for n in body}} (is this verl v0.5.0?)")
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--verl", type=Path, required=True)
    args = ap.parse_args()
    tf: dict = {"torch": torch}
    functions(args.verl / "verl/utils/torch_functional.py", {"masked_sum", "masked_mean"}, tf)
    verl_F = type("verl_F", (), {"masked_sum": staticmethod(tf["masked_sum"]), "masked_mean": staticmethod(tf["masked_mean"])})
    ns: dict = {"torch": torch, "verl_F": verl_F}
    functions(args.verl / "verl/trainer/ppo/core_algos.py", {"compute_policy_loss", "agg_loss"}, ns)
    logp, old, adv, mask = inputs()
    logp.requires_grad_(True)
    total, start = torch.zeros((), dtype=torch.float64), 0
    for n in MICRO:
        sl = slice(start, start + n)
        start += n
        pg_loss, _, _, _ = ns["compute_policy_loss"](
            old_log_prob=old[sl], log_prob=logp[sl], advantages=adv[sl, None] * mask[sl], response_mask=mask[sl],
            cliprange=0.2, cliprange_low=0.2, cliprange_high=0.28, clip_ratio_c=10.0, loss_agg_mode="token-mean")
        total = total + pg_loss * (mask[sl].shape[0] / B)  # dp_actor: policy_loss * (micro sequences / mini-batch)
    (grad,) = torch.autograd.grad(total, logp)
    print(json.dumps({"source": "verl v0.5.0 core_algos.compute_policy_loss / agg_loss; SALT dp_actor.py scaling",
                      "micro": MICRO, "loss": float(total),
                      "grad": [[round(float(x), 15) for x in row] for row in grad]}, indent=1))


if __name__ == "__main__":
    main()
