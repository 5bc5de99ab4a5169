"""Golden numbers: VIP's success predictor over 4 steps of 512 prompts against the published GP.

``golden/vip_history.json`` was written by ``golden/vip_history.py`` (the published ``GPR`` of
HieuNT91/VIP, one fit per step with its mean carried over the whole pool; see its docstring). The
inputs are closed-form expressions defined in that script and imported from it here.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from salt.algo.allocation import SuccessPredictor
from salt.train.config import VipConfig

HERE = Path(__file__).parent / "golden"
GOLDEN = json.loads((HERE / "vip_history.json").read_text())
_spec = importlib.util.spec_from_file_location("vip_history_inputs", HERE / "vip_history.py")
inputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inputs)


def run(history: int) -> np.ndarray:
    """Our predictor as the trainer builds it from algorithm.vip.history (0 = unbounded)."""
    emb = torch.tensor(inputs.embeddings())
    sp = SuccessPredictor(max_history=history or None)
    out = []
    for t in range(inputs.STEPS):
        idx = inputs.step_prompts(t)
        sp.update(emb[idx], torch.tensor(inputs.accuracies(t, idx, inputs.embeddings())))
        out.append(sp.predict(emb[GOLDEN["probe"]]).numpy())
    return np.array(out)


def test_default_history_is_the_published_unbounded_one():
    assert VipConfig().history == 0


def test_predictor_with_the_published_history_equals_published_gp():
    np.testing.assert_allclose(run(VipConfig().history), np.array(GOLDEN["predictions"]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("history", [256, 600])
def test_a_bounded_history_moves_the_predictions(history):
    """A window below the number of distinct prompts seen (512 after step 1) changes the predictions."""
    diff = np.abs(run(history) - np.array(GOLDEN["predictions"]))
    assert diff[1:].max() > 0.05
