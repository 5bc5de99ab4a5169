"""Golden numbers: each policy loss at its published defaults against verl's implementation.

Expected values were computed by running verl's ``compute_policy_loss_vanilla`` / ``_cispo`` /
``_gspo`` and ``agg_loss`` (volcengine/verl core_algos.py @ b178a3c) outside this project on the
inputs below (docs/fidelity.md, "How the golden numbers were made"): grpo = vanilla with clip
0.2/0.2, clip_ratio_c 3, seq-mean-token-mean; dapo = vanilla with 0.2/0.28, clip_ratio_c 10
(verl's DAPO recipe), token-mean; dr_grpo = vanilla, seq-mean-token-sum-norm; cispo = clip_ratio_low
10, clip_ratio_high 0.2 (verl's CISPO recipe), token-mean; gspo = 3e-4/4e-4, seq-mean-token-mean.
Only inputs and numbers are stored here.
"""

import pytest
import torch

from salt.algo.losses import LossConfig, compute_policy_loss

LOGP = [[-1.41, -0.802, -0.551, -1.694, -1.083, -0.857], [-1.321, -1.447, -1.424, -1.608, -1.041, -0.319],
        [-1.652, -0.956, -1.692, -0.748, -1.433, -1.282], [-2.028, -1.178, -0.452, -0.759, -0.301, -0.297]]
# OLD[1][2] gives ratio e^1.5 with A < 0 (dual clip 3 acts, 10 does not), OLD[3][1] ratio e^2.5 (both act)
OLD = [[-1.478, -0.428, -0.245, -0.76, 0.173, -1.484], [-0.913, -1.98, -2.924, -1.517, -1.298, 0.081],
       [-2.274, -1.815, -1.983, -1.056, -1.876, -0.683], [-1.794, -3.678, -0.858, -0.952, -0.819, -0.001]]
ADV = [1.5, -0.8, 0.6, -1.7]
MASK = [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]

# loss (minimised) and d loss / d logp (B, T), verl's numbers
VERL = {
    "grpo": (0.6347845809476492, [[-0.0668978317, -0.0429985569, -0.0460241636, -0.0245611654, -0.0177994321, 0.0], [0.0, 0.0852018377, 0.0, 0.0456508854, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, -0.013734018], [0.0, 0.0, 0.2126136942, 0.0, 0.0, 0.0]]),
    "dapo": (0.8622102702087219, [[-0.0845025244, -0.0543139667, -0.0581357857, -0.0310246301, -0.0224834933, 0.0], [0.0, 0.0717489161, 0.1887026977, 0.038442851, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, -0.0173482333], [0.0, 0.0, 0.1342823336, 0.0, 0.0, 0.0]]),
    "dr_grpo": (0.6094406462825446, [[-0.2675913271, -0.171994228, -0.1840966549, -0.0982446619, -0.0711977287, 0.0], [0.0, 0.2272049011, 0.0, 0.1217356948, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, -0.0549360722], [0.0, 0.0, 0.4252273899, 0.0, 0.0, 0.0]]),
    "cispo": (0.05820303090032393, [[-0.0845025244, -0.0543139667, -0.0581357857, -0.0310246301, -0.0224834933, -0.0947368421], [0.0279991107, 0.0505263158, 0.0505263158, 0.038442851, 0.0, 0.0], [-0.0378947368, -0.0378947368, -0.0378947368, -0.0378947368, -0.0378947368, -0.0173482333], [0.0708060572, 0.1073684211, 0.1073684211, 0.0, 0.0, 0.0]]),
    "gspo": (0.9180672245945228, [[-0.0434958945, -0.0434958945, -0.0434958945, -0.0434958945, -0.0434958945, -0.0434958945], [0.0733705774, 0.0733705774, 0.0733705774, 0.0733705774, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [0.3452067606, 0.3452067606, 0.3452067606, 0.0, 0.0, 0.0]]),
}
# verl's seq-mean-token-sum-norm divides the token sum by L only; Dr. GRPO's own code (and ours) by
# B x L, a constant factor B (documented in docs/fidelity.md): compare ours x B.
SCALE = {"dr_grpo": float(len(ADV))}


@pytest.mark.parametrize("name", sorted(VERL))
def test_loss_at_published_defaults_equals_verl(name):
    logp = torch.tensor(LOGP, dtype=torch.float64, requires_grad=True)
    old = torch.tensor(OLD, dtype=torch.float64)
    mask = torch.tensor(MASK, dtype=torch.bool)
    loss, _ = compute_policy_loss(LossConfig.for_loss(name), logp, old, torch.tensor(ADV, dtype=torch.float64), mask)
    (grad,) = torch.autograd.grad(loss, logp)
    want_loss, want_grad = VERL[name]
    scale = SCALE.get(name, 1.0)
    # Tolerances: float64 inputs, elementwise ops and sums of <= 24 terms (no BLAS), so our side is the same
    # on every CPU to ~1e-15; what they allow is verl's 1e-8 added to lengths (loss, rel 1e-7) and its
    # gradients stored to 10 decimals (atol 1e-9)
    assert float(loss.detach()) * scale == pytest.approx(want_loss, rel=1e-7, abs=1e-10)
    torch.testing.assert_close(grad * scale, torch.tensor(want_grad, dtype=torch.float64), rtol=1e-7, atol=1e-9)


def test_published_defaults_matter_on_these_inputs():
    """The golden inputs exercise the dual clip and the CISPO cap: other settings give other numbers."""
    logp = torch.tensor(LOGP, dtype=torch.float64)
    old = torch.tensor(OLD, dtype=torch.float64)
    mask, adv = torch.tensor(MASK, dtype=torch.bool), torch.tensor(ADV, dtype=torch.float64)
    for name, other in (("grpo", {"dual_clip_c": 0}), ("dapo", {"dual_clip_c": 3.0}), ("cispo", {"eps_high_is": 5.0}),
                        ("gspo", {"agg_mode": "token-mean"})):
        loss, _ = compute_policy_loss(LossConfig.for_loss(name, **other), logp, old, adv, mask)
        assert abs(float(loss) - VERL[name][0]) > 1e-3, (name, other)
