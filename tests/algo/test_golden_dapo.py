"""Golden numbers: DAPO's overlong shaping and dynamic-sampling filter against verl's DAPO recipe.

``golden/dapo_filter.json`` was written by ``golden/dapo_filter.py``, which executes verl's own
statements (reward manager and recipe trainer @ e2e729f, ``filter_groups.metric=acc``) on the
groups stored there; see its docstring. Only inputs and verl's outputs are stored.
"""

import json
from pathlib import Path

import torch

from salt.algo.dapo import informative_groups, overlong_penalty
from salt.train.config import DynamicSamplingConfig

GOLDEN = json.loads((Path(__file__).parent / "golden" / "dapo_filter.json").read_text())
GIDS = torch.tensor([g for g, _, _ in GOLDEN["rollouts"]])
SCORES = torch.tensor([float(c) for _, c, _ in GOLDEN["rollouts"]])
LENGTHS = torch.tensor([n for _, _, n in GOLDEN["rollouts"]])


def shaped() -> torch.Tensor:
    return SCORES + overlong_penalty(LENGTHS, GOLDEN["max_len"], GOLDEN["buffer"], GOLDEN["factor"])


def test_overlong_shaping_equals_verl():
    torch.testing.assert_close(shaped().double(), torch.tensor(GOLDEN["rewards"], dtype=torch.float64), rtol=0, atol=1e-6)


def test_published_filter_on_accuracy_equals_verl():
    """Groups 0, 1 and 5 are all right or all wrong but have an over-long response: verl drops them."""
    keep = informative_groups(SCORES, shaped(), GIDS, "acc")
    assert torch.nonzero(keep).flatten().tolist() == GOLDEN["kept"]
    assert len(set(GIDS[keep].tolist())) == GOLDEN["prompts_kept"]


def test_our_filter_on_the_shaped_reward_keeps_the_overlong_groups():
    keep = informative_groups(SCORES, shaped(), GIDS, "reward")
    assert sorted(set(GIDS[keep].tolist())) == [0, 1, 2, 5]  # ours; verl keeps 2 and the single rollout 4


def test_default_metric_is_ours_and_paper_sets_acc():
    """A plain RunConfig keeps filtering on the shaped reward (the toy study's numbers); paper.yaml's
    DAPO arms set acc (tests/workflow/test_paper_config.py)."""
    assert DynamicSamplingConfig().metric == "reward"
