import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt.algo.advantages import ADVANTAGE_ESTIMATORS, compute_advantages, group_stats


def loop_advantages(rewards, group_ids, estimator, eps):
    """Slow reference: one Python loop per rollout over its group."""
    r = [float(x) for x in rewards]
    g = [int(x) for x in group_ids]
    out = []
    batch_std = 0.0
    if len(r) > 1:
        mu = sum(r) / len(r)
        batch_std = math.sqrt(sum((x - mu) ** 2 for x in r) / (len(r) - 1))
    for i in range(len(r)):
        members = [r[j] for j in range(len(r)) if g[j] == g[i]]
        n = len(members)
        if n == 1:
            out.append(0.0)
            continue
        mean = sum(members) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in members) / (n - 1))
        if estimator == "grpo":
            out.append((r[i] - mean) / (std + eps))
        elif estimator == "dr_grpo":
            out.append(r[i] - mean)
        elif estimator == "rloo":
            others = (sum(members) - r[i]) / (n - 1)
            out.append(r[i] - others)
        elif estimator == "batch":
            out.append((r[i] - mean) / (batch_std + eps))
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 5), st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.5])), min_size=1, max_size=24
    ),
    estimator=st.sampled_from(["grpo", "dr_grpo", "rloo", "batch"]),
)
def test_vectorised_matches_loop(data, estimator):
    ids = torch.tensor([d[0] * 7 + 3 for d in data])  # non-contiguous ids, unequal group sizes
    rewards = torch.tensor([d[1] for d in data], dtype=torch.float64)
    got = compute_advantages(rewards, ids, estimator, eps=1e-6)
    want = loop_advantages(rewards, ids, estimator, 1e-6)
    assert got.shape == rewards.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "batch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_continuous_rewards_match_loop(estimator, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 6, (40,), generator=g) * 11
    rewards = torch.randn(40, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        compute_advantages(rewards, ids, estimator, eps=1e-4), loop_advantages(rewards, ids, estimator, 1e-4)
    )


def test_size_one_groups_and_constant_groups_give_zero():
    rewards = torch.tensor([1.0, 0.3, 0.3, 0.3, 5.0])
    ids = torch.tensor([9, 2, 2, 2, 4])
    for name in ADVANTAGE_ESTIMATORS.names():
        adv = compute_advantages(rewards, ids, name)
        assert torch.equal(adv, torch.zeros(5)), name


def test_grpo_known_values():
    adv = compute_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), torch.tensor([0, 0, 0, 0]))
    # mean 0.5, unbiased std sqrt(1/3)
    expected = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(adv, torch.tensor([expected, -expected, expected, -expected]))
    rloo = compute_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1, 1, 1]), "rloo")
    torch.testing.assert_close(rloo, torch.tensor([1.0, -0.5, -0.5]))


def test_integer_rewards_promoted_and_stats():
    stats = group_stats(torch.tensor([1, 0, 1]), torch.tensor([0, 0, 1]))
    assert stats.mean.dtype == torch.float32
    torch.testing.assert_close(stats.count, torch.tensor([2.0, 2.0, 1.0]))
    torch.testing.assert_close(stats.std, torch.tensor([math.sqrt(0.5), math.sqrt(0.5), 0.0]))


def test_empty_batch():
    out = compute_advantages(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)


def test_bad_inputs_raise():
    with pytest.raises(KeyError, match="known: batch, dr_grpo, grpo, rloo"):
        compute_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), "ppo")
    with pytest.raises(ValueError, match="group_ids must be an integer tensor"):
        compute_advantages(torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="same length"):
        compute_advantages(torch.zeros(2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_advantages(torch.tensor([0.0, float("nan")]), torch.zeros(2, dtype=torch.long))

