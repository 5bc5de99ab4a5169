"""Golden numbers: a token-mean loss over micro-batches of different sizes against the published actor.

``golden/verl_micro_agg.json`` was written by ``golden/verl_micro_agg.py`` (verl v0.5.0's loss per
micro-batch, combined as SALT's dp_actor.py does: each micro-batch's own token-mean times its share of
the mini-batch's sequences). Our update scales each micro-batch's loss by ``loss_weight`` of its rows
over the mini-batch's (salt.train.update); with ``train.micro_batch_weight: sequences`` the sum must be
verl's, with ``tokens`` (ours) it is one token-mean over the mini-batch.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from salt.algo.losses import LossConfig, compute_policy_loss
from salt.train.config import TrainConfig
from salt.train.update import loss_weight

HERE = Path(__file__).parent / "golden"
GOLDEN = json.loads((HERE / "verl_micro_agg.json").read_text())
_spec = importlib.util.spec_from_file_location("verl_micro_agg_inputs", HERE / "verl_micro_agg.py")
inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inputs)


def summed_loss(micro_weight: str):
    """The loss our update backpropagates, micro-batch by micro-batch (as _Passes.backward scales it)."""
    logp, old, adv, mask = inputs.inputs()
    logp.requires_grad_(True)
    cfg = LossConfig.for_loss("dapo")
    total_w = loss_weight(mask, cfg.agg_mode, micro_weight)
    total, start = torch.zeros((), dtype=torch.float64), 0
    for n in GOLDEN["micro"]:
        sl = slice(start, start + n)
        start += n
        loss, _ = compute_policy_loss(cfg, logp[sl], old[sl], adv[sl], mask[sl].bool())
        total = total + loss * (loss_weight(mask[sl], cfg.agg_mode, micro_weight) / total_w)
    (grad,) = torch.autograd.grad(total, logp)
    return float(total.detach()), grad


def test_sequence_weighted_micro_batches_equal_the_published_actor():
    loss, grad = summed_loss("sequences")
    assert loss == pytest.approx(GOLDEN["loss"], rel=1e-7)  # verl adds 1e-8 to token counts
    torch.testing.assert_close(grad, torch.tensor(GOLDEN["grad"], dtype=torch.float64), rtol=1e-7, atol=1e-10)


def test_token_weighted_micro_batches_are_one_token_mean_and_differ():
    loss, grad = summed_loss("tokens")
    logp, old, adv, mask = inputs.inputs()
    whole, _ = compute_policy_loss(LossConfig.for_loss("dapo"), logp, old, adv, mask.bool())
    assert loss == pytest.approx(float(whole), rel=1e-12)
    assert abs(loss - GOLDEN["loss"]) > 1e-3


def test_default_is_ours():
    assert TrainConfig().micro_batch_weight == "tokens"
