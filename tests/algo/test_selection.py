import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt.algo.selection import max_variance_subset, select_per_group, select_subset


def unbiased_var(values):
    m = len(values)
    if m < 2:
        return 0.0
    mu = sum(values) / m
    return sum((v - mu) ** 2 for v in values) / (m - 1)


@settings(max_examples=150, deadline=None)
@given(
    rewards=st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.25, -1.0, 2.0]) | st.floats(-3, 3), min_size=1, max_size=9),
    data=st.data(),
)
def test_max_variance_is_optimal_over_all_subsets(rewards, data):
    n = len(rewards)
    m = data.draw(st.integers(1, n))
    idx = max_variance_subset(torch.tensor(rewards, dtype=torch.float64), m)
    assert idx.dtype == torch.long and idx.shape == (m,)
    assert len(set(idx.tolist())) == m and all(0 <= i < n for i in idx.tolist())
    got = unbiased_var([rewards[i] for i in idx.tolist()])
    best = max(unbiased_var([rewards[i] for i in c]) for c in itertools.combinations(range(n), m))
    assert got == pytest.approx(best, rel=1e-8, abs=1e-15)


def test_tiny_reward_scale_is_not_mistaken_for_a_tie():
    rewards = torch.tensor([1e-7, 0.0, -1e-7], dtype=torch.float64)
    assert max_variance_subset(rewards, 2).tolist() == [0, 2]


def test_ties_keep_top_m():
    # {0, 1} (the top-2) and {0, 2} have the same variance: the top-m set wins
    assert max_variance_subset(torch.tensor([1.0, 0.0, 0.0]), 2).tolist() == [0, 1]
    # all equal: every subset has variance 0 -> the top-m set, lowest indices first (stable sort)
    assert max_variance_subset(torch.ones(6), 3).tolist() == [0, 1, 2]
    assert max_variance_subset(torch.tensor([0.2, 0.9, 0.5]), 1).tolist() == [1]


def test_known_binary_case():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    idx = max_variance_subset(rewards, 4)
    assert sorted(rewards[idx].tolist()) == [0.0, 0.0, 1.0, 1.0]
    assert max_variance_subset(rewards, 8).tolist() == list(range(8))


def test_max_reward_and_random():
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.0])
    assert select_subset("max_reward", rewards, 2).tolist() == [1, 3]
    a = select_subset("random", rewards, 3, torch.Generator().manual_seed(4))
    b = select_subset("random", rewards, 3, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and len(set(a.tolist())) == 3 and a.max() < 5
    draws = {tuple(select_subset("random", rewards, 2, torch.Generator().manual_seed(s)).tolist()) for s in range(30)}
    assert len(draws) > 3
    assert select_subset("max_variance", rewards, 2).tolist() == max_variance_subset(rewards, 2).tolist()


def test_errors():
    r = torch.zeros(4)
    with pytest.raises(ValueError, match="selection.m must be an integer in \\[1, n=4\\]"):
        max_variance_subset(r, 5)
    with pytest.raises(ValueError, match="selection.m"):
        select_subset("max_reward", r, 0)
    with pytest.raises(KeyError, match="known: max_reward, max_variance, random"):
        select_subset("best", r, 2)
    with pytest.raises(ValueError, match="needs a torch.Generator"):
        select_subset("random", r, 2)


def test_select_per_group():
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.3, 0.0, 1.0])
    ids = torch.tensor([5, 5, 5, 5, 2, 2, 8])
    kept = select_per_group("max_variance", rewards, ids, 2, ties="most_top")
    assert kept.tolist() == [0, 1, 4, 5, 6]  # group 5: top-1 + bottom-1; groups 2 and 8 kept whole
    # the published tie rule keeps bottom-2 of group 5 ({1, 3}: same rewards, fewer top rewards)
    assert select_per_group("max_variance", rewards, ids, 2).tolist() == [1, 3, 4, 5, 6]
