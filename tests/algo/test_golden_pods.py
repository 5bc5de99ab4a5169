"""Golden numbers: PODS max-variance down-sampling against the published trainer.

Expected values were computed by running the selection and advantage code of the published
trainer (YixuanEvenXu/pods trainer/maxvargrpo_trainer.py @ 187f43b: start from the top-m set,
scan i = 0 .. m-1 over {top i} U {bottom m - i}, keep a candidate only if its variance is strictly
larger; advantages (r - mean) / (std + 1e-4) on the kept set) outside this project. Only inputs
and numbers are stored here. For odd m, {top i} and {top m - i} can tie: the published scan keeps
the one with the fewer top rewards (our ``most_top`` variant keeps the other).
"""

import pytest
import torch

from salt.algo.advantages import compute_advantages
from salt.algo.selection import max_variance_subset

# (rewards, m, kept rewards in the published order (descending), published advantages of those)
PUBLISHED = [
    ([1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0], 3, [1.0, 0.0, 0.0], [1.1545, -0.57725, -0.57725]),
    ([1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0], 5, [1.0, 1.0, 0.0, 0.0, 0.0], [1.095245, 1.095245, -0.730163, -0.730163, -0.730163]),
    ([1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0], 4, [1.0, 1.0, 0.0, 0.0], [0.865875, 0.865875, -0.865875, -0.865875]),
    ([1, 1, 1, 1, 1, 0, 1, 1], 3, [1.0, 1.0, 0.0], [0.57725, 0.57725, -1.154501]),
    ([0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 0.2, 0.9], 3, [1.0, 0.0, 0.0], [1.1545, -0.57725, -0.57725]),
    ([0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 0.2, 0.9], 5, [1.0, 1.0, 0.9, 0.0, 0.0], [0.790757, 0.790757, 0.602481, -1.091998, -1.091998]),
    ([1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0], 7, [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.068845, 1.068845, 1.068845, -0.801634, -0.801634, -0.801634, -0.801634]),
]


@pytest.mark.parametrize("rewards, m, kept, adv", PUBLISHED)
def test_pods_selection_and_advantages_equal_published(rewards, m, kept, adv):
    # Tolerances: the selection is exact (kept rewards are the inputs' float32 values); the advantages are a
    # few float32 ops on <= 16 rewards (our side moves by ~1 ulp = 1e-7 between CPUs), against published
    # numbers stored to 6 decimals (5e-7): atol 2e-6
    r = torch.tensor(rewards, dtype=torch.float32)
    idx = max_variance_subset(r, m)  # default ties: fewest_top, as published
    got = r[idx]
    order = torch.sort(got, descending=True, stable=True).indices
    torch.testing.assert_close(got[order], torch.tensor(kept), rtol=0, atol=1e-6)
    a = compute_advantages(got, torch.zeros(m, dtype=torch.long), "grpo", eps=1e-4)
    torch.testing.assert_close(a[order], torch.tensor(adv), rtol=0, atol=2e-6)


def test_most_top_variant_differs_only_on_odd_m_ties():
    r = torch.tensor(PUBLISHED[0][0], dtype=torch.float32)
    assert sorted(r[max_variance_subset(r, 3, ties="most_top")].tolist()) == [0.0, 1.0, 1.0]  # ours: 2 of 3 correct
    assert sorted(r[max_variance_subset(r, 3)].tolist()) == [0.0, 0.0, 1.0]  # published: 1 of 3
    for m in (2, 4, 6):  # even m: the maximiser is unique, both rules agree
        assert max_variance_subset(r, m).tolist() == max_variance_subset(r, m, ties="most_top").tolist()
