import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt.algo.dapo import dynamic_sampling_keep, overlong_penalty


def loop_keep(rewards, ids):
    out = []
    for i in range(len(rewards)):
        members = {float(rewards[j]) for j in range(len(rewards)) if int(ids[j]) == int(ids[i])}
        out.append(len(members) > 1)
    return torch.tensor(out, dtype=torch.bool)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.sampled_from([0.0, 1.0, 0.5])), min_size=1, max_size=20))
def test_keep_matches_loop(data):
    ids = torch.tensor([d[0] * 5 + 2 for d in data])
    rewards = torch.tensor([d[1] for d in data])
    assert torch.equal(dynamic_sampling_keep(rewards, ids), loop_keep(rewards, ids))


def test_keep_known_case():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 3.0])
    ids = torch.tensor([4, 4, 9, 9, 1, 1, 6])
    assert dynamic_sampling_keep(rewards, ids).tolist() == [False, False, True, True, False, False, False]
    assert dynamic_sampling_keep(torch.zeros(0), torch.zeros(0, dtype=torch.long)).numel() == 0
    with pytest.raises(ValueError, match="integer tensor"):
        dynamic_sampling_keep(rewards, ids.float())


def test_overlong_penalty_formula():
    L, buf, f = 100, 20, 0.5
    lengths = torch.tensor([0, 50, 80, 85, 90, 100, 130])
    got = overlong_penalty(lengths, L, buf, f)
    want = [min(-(x - (L - buf)) / buf, 0.0) * f for x in [0, 50, 80, 85, 90, 100]] + [-f]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float32))
    assert got[3].item() == pytest.approx(-0.125)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"max_len": 0, "buffer": 1}, "max_len"),
        ({"max_len": 10, "buffer": 11}, "buffer"),
        ({"max_len": 10, "buffer": 0}, "buffer"),
        ({"max_len": 10, "buffer": 5, "factor": -1.0}, "factor"),
    ],
)
def test_overlong_penalty_validation(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        overlong_penalty(torch.tensor([1]), **kwargs)
