"""Golden numbers: VIP's success predictor and allocation against the published code.

Expected values were computed by running the published code (HieuNT91/VIP history:
src/vip/allocation/bernoulli_allocation.py @ 0c17c79 ``allocate_rollout`` with lower 4, upper 32,
min_keep 4; success_rate_prediction/gaussian_process.py ``GPR`` with prior_value -1, reuse_mean on,
an RBF kernel of length scale 0.27 over Euclidean distances, jitter 1e-4) outside this project on
the inputs below. Only inputs and numbers are stored here.
"""

import numpy as np
import pytest
import torch

from salt.algo.allocation import (
    allocate_rollouts,
    continuous_allocation,
    published_allocation,
    SuccessPredictor,
)

P16 = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.005, 0.45]
HARD = [0.001, 0.003, 0.01, 0.015, 0.02, 0.3, 0.5, 0.7]
# (p, budget, rule, published integer allocation, published continuous solution)
ALLOCATIONS = [
    (P16, 128, "rloo", [7, 7, 7, 7, 8, 9, 11, 11, 11, 10, 8, 5, 4, 4, 8, 11], [7.634997, 7.288113, 7.201786, 7.663443, 8.799205, 9.683403, 10.175571, 10.232489, 9.834621, 8.970508, 7.631611, 5.809774, 4.714677, 4.0, 8.099856, 10.259944]),
    (P16, 128, "grpo", [7, 7, 7, 7, 8, 9, 11, 11, 11, 10, 8, 5, 4, 4, 8, 11], [7.518379, 7.08282, 7.000323, 7.592826, 8.939703, 9.941552, 10.48522, 10.538984, 10.086059, 9.111584, 7.588724, 5.425658, 4.0, 4.0, 8.113627, 10.574541]),
    (HARD, 64, "rloo", [23, 4, 4, 4, 4, 8, 9, 8], [23.340298, 4.0, 4.0, 4.0, 4.055859, 8.11935, 8.643183, 7.841309]),
    (HARD, 64, "grpo", [9, 7, 5, 5, 4, 11, 12, 11], [9.708645, 7.610653, 5.591102, 5.061806, 4.767123, 10.545712, 11.872519, 8.842438]),
    ([0.12, 0.33, 0.51, 0.77, 0.04, 0.91], 48, "rloo", [7, 10, 11, 8, 7, 5], [7.775576, 9.589003, 9.89862, 7.949901, 7.109189, 5.677711]),
    ([0.0, 1.0, 0.5, 0.25, 0.0, 0.75, 0.6, 0.1], 64, "rloo", [16, 4, 7, 5, 16, 5, 7, 4], [16.133962, 4.0, 6.350605, 5.534488, 16.133962, 5.369557, 6.065126, 4.4123]),
]


@pytest.mark.parametrize("p, budget, rule, n, cont", ALLOCATIONS)
def test_published_allocation_equals_published_code(p, budget, rule, n, cont):
    # SLSQP's iterates move by ~1e-5 with the BLAS thread count (measured: OMP_NUM_THREADS=1 vs default)
    np.testing.assert_allclose(continuous_allocation(p, budget, 4, 32, rule), cont, rtol=0, atol=1e-4)
    got = published_allocation(p, budget, lower=4, upper=32, rule=rule)
    assert got.tolist() == n and int(got.sum()) == budget


def test_published_allocation_differs_from_our_exact_variant():
    pub = published_allocation(HARD, 64, 4, 32, "rloo")
    ours = allocate_rollouts(torch.tensor(HARD), 64, 4, 32, "rloo")
    assert int(pub[:5].sum()) == 39 and int(ours[:5].sum()) < 39  # published favours p < 0.02 prompts


def test_uniform_when_predictions_are_equal():
    assert published_allocation([0.3] * 5, 22, 4, 32).tolist() == [5, 5, 4, 4, 4]


E = [[0.6045, -0.757, 0.1238, -0.1682, -0.1341], [-0.0539, -0.5054, -0.058, -0.2165, 0.8315],
     [0.1676, -0.2618, -0.2088, -0.496, -0.7834], [-0.3304, 0.4074, -0.2017, 0.8097, -0.1689],
     [0.0141, 0.8961, 0.316, -0.2929, -0.106], [0.6244, -0.729, 0.1026, -0.2242, -0.1341],
     [-0.6276, -0.2065, 0.6248, 0.4109, 0.0648], [0.1845, -0.7785, 0.2811, -0.2642, -0.4593]]
P_PRIOR = [0.2689414213699951] * 8
P_AFTER_1 = [1.0000000000000008e-06, 0.75, 0.999999, 0.2689414369525659, 0.2689426526970024, 1.518939340428374e-06,
             0.26894243991033673, 0.09042631670010688]
P_AFTER_2 = [9.999516664563995e-07, 0.5, 0.9999989999999593, 0.25, 0.26894208190902463, 1.5188682964286082e-06,
             1.0000000000000008e-06, 0.09042253945591917]


def test_success_predictor_equals_published_gp():
    """Fit on prompts 0-2 (accuracies 0, 0.75, 1), then on 1, 3, 6 (0.5, 0.25, 0); predict all 8."""
    emb = torch.tensor(E, dtype=torch.float64)
    sp = SuccessPredictor()  # published defaults: prior -1, clip 1e-6, observed prompts pinned
    # Tolerances: float64 throughout. The prior is sigmoid(-1), no linear algebra: rtol 1e-12. After a fit
    # the GP solves a <= 6 x 6 kernel system with jitter 1e-4 (condition number <= ~1e5), so LAPACK's
    # round-off on any CPU is <= ~1e-11 relative: rtol 1e-9; atol 1e-15 for the clipped 1e-6 values.
    torch.testing.assert_close(sp.predict(emb), torch.tensor(P_PRIOR, dtype=torch.float64), rtol=1e-12, atol=0)
    sp.update(emb[[0, 1, 2]], [0.0, 0.75, 1.0])
    torch.testing.assert_close(sp.predict(emb), torch.tensor(P_AFTER_1, dtype=torch.float64), rtol=1e-9, atol=1e-15)
    sp.update(emb[[1, 3, 6]], [0.5, 0.25, 0.0])
    torch.testing.assert_close(sp.predict(emb), torch.tensor(P_AFTER_2, dtype=torch.float64), rtol=1e-9, atol=1e-15)
