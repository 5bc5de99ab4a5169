"""Golden numbers: the training rewards against the SALT authors' reward functions.

``../algo/golden/salt_rewards.json`` was written by ``../algo/golden/salt_rewards.py``, which imports
the authors' ``math_reward.py`` and ``mbpp.py`` (Chang-pw/SALT @ 94ac08e) and scores the cases stored
there. Our published settings (``reward.math_fallback: true``, ``reward.code_credit: fraction``) must
give the same scores; our defaults differ exactly where the fallback and the partial credit act.
"""

import json
from pathlib import Path

import pytest

from salt.tasks.rewards import score_batch
from salt.train.config import RewardConfig

GOLDEN = json.loads((Path(__file__).parents[1] / "algo" / "golden" / "salt_rewards.json").read_text())


def math_rows():
    return [{"id": f"m{i}", "task": "math", "prompt": "q", "answer": gold} for i, (gold, _, _) in enumerate(GOLDEN["math"])]


def code_rows():
    return [{"id": f"c{i}", "task": "code", "prompt": "q", "tests": tests, "setup": setup}
            for i, (_, tests, setup, _) in enumerate(GOLDEN["code"])]


def test_math_with_the_published_fallback_equals_salt():
    got = score_batch(math_rows(), [c for _, c, _ in GOLDEN["math"]], math_fallback=True)
    assert [r.reward for r in got] == [s for _, _, s in GOLDEN["math"]]


def test_math_without_the_fallback_differs_where_the_last_number_decides():
    got = [r.reward for r in score_batch(math_rows(), [c for _, c, _ in GOLDEN["math"]])]
    want = [s for _, _, s in GOLDEN["math"]]
    differ = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert differ and all(got[i] == 0.0 and want[i] == 1.0 for i in differ), (got, want)


def test_code_with_published_partial_credit_equals_salt():
    got = score_batch(code_rows(), [c for c, _, _, _ in GOLDEN["code"]], code_credit="fraction")
    assert [r.reward for r in got] == pytest.approx([s for _, _, _, s in GOLDEN["code"]], abs=1e-12)


def test_code_all_or_nothing_is_ours():
    got = [r.reward for r in score_batch(code_rows(), [c for c, _, _, _ in GOLDEN["code"]])]
    assert got == [float(s == 1.0) for _, _, _, s in GOLDEN["code"]]


def test_defaults_are_ours():
    assert (RewardConfig().math_fallback, RewardConfig().code_credit) == (False, "all")
