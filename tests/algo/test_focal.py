import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt.algo.focal import focal_weights


def loop_weights(rewards, ids, gamma, thr):
    out = []
    for i in range(len(rewards)):
        members = [float(rewards[j]) for j in range(len(rewards)) if int(ids[j]) == int(ids[i])]
        mu = sum(r >= thr for r in members) / len(members)
        out.append((1 - mu) ** gamma)
    return torch.tensor(out, dtype=torch.float64)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 0.5, 1.0, 1.5])), min_size=1, max_size=20),
    gamma=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    thr=st.sampled_from([1.0, 0.5]),
)
def test_matches_loop(data, gamma, thr):
    ids = torch.tensor([d[0] * 3 + 1 for d in data])
    rewards = torch.tensor([d[1] for d in data], dtype=torch.float64)
    torch.testing.assert_close(focal_weights(rewards, ids, gamma, thr), loop_weights(rewards, ids, gamma, thr))


def test_known_values_and_gamma_zero():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    ids = torch.tensor([0, 0, 0, 0, 7, 7])
    w = focal_weights(rewards, ids, gamma=2.0)
    torch.testing.assert_close(w, torch.tensor([0.5625] * 4 + [0.0, 0.0]))
    assert torch.equal(focal_weights(rewards, ids, gamma=0.0), torch.ones(6))
    assert focal_weights(torch.tensor([1, 0]), torch.tensor([0, 0]), 1.0).dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        focal_weights(torch.zeros(2), torch.zeros(2, dtype=torch.long), -1.0)
    with pytest.raises(ValueError, match="integer tensor"):
        focal_weights(torch.zeros(2), torch.zeros(2), 1.0)
