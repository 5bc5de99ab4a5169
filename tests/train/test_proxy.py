"""Proxy validation: per-sample autograd Grams, the correlation statistics and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from salt.train.proxy import _offdiag, pearson, proxy_statistics
from tests.train.test_trainer import _tensor_batch, policy  # noqa: F401  (fixture)


def test_per_sample_lm_head_gradients_match_the_lm_head_gram(policy):  # noqa: F811
    """Autograd one rollout at a time (the proxy's method, through the chunked head) reproduces the
    exact Gram streamed from the hidden states and the head weight on the same batch."""
    from salt.algo.gram import streaming_lm_head_gram
    from salt.train.forward import policy_forward

    model, _, _, tb = _tensor_batch(policy, n_prompts=3, n=3, seed=2)
    model.eval()
    T = 0.7
    rows = []
    for i in range(len(tb)):
        part = tb.index(slice(i, i + 1))
        loss = -(policy_forward(model, part, T, with_features=False).logp * part.mask).sum()
        (g,) = torch.autograd.grad(loss, [model.lm_head.weight])
        rows.append(g.reshape(-1).double())
    G = torch.stack(rows)  # (B, V*H)
    # d/dW log softmax(W h / T) = (softmax - e_y) h^T / T; methods.md 3.1 defines g_i without 1/T
    brute = (T * T) * (G @ G.T) / len(tb)
    with torch.no_grad():
        fwd = policy_forward(model, tb, T)
    W = model.lm_head.weight.detach().double()
    K = streaming_lm_head_gram(fwd.hidden.double(), W, tb.tokens, tb.mask, T, "exact")
    assert torch.allclose(K, brute, rtol=1e-4, atol=1e-6)  # float32 autograd vs float64 Gram


def test_statistics_identity_and_nulls():
    g = torch.Generator().manual_seed(0)
    B = 24
    shared = torch.randn(3, 50, generator=g, dtype=torch.float64)
    F = torch.randn(B, 3, generator=g, dtype=torch.float64) @ shared + 0.3 * torch.randn(B, 50, generator=g, dtype=torch.float64)
    K = F @ F.T / B
    res = proxy_statistics(K, F, null_samples=100, seed=1)
    assert res["pearson"] == pytest.approx(1.0, abs=1e-9)
    assert res["n_pairs"] == B * (B - 1) // 2 == len(res["pairs"]["lm_head"])
    assert abs(res["null_permutation"]["mean"]) < 0.2 and res["null_permutation"]["p_value"] < 0.05
    assert res["null_gaussian"]["mean"] < 0.5 and res["null_gaussian"]["p_value"] < 0.05
    # unrelated features: no correlation beyond the nulls
    F2 = torch.randn(B, 50, generator=g, dtype=torch.float64)
    res2 = proxy_statistics(K, F2, null_samples=100, seed=1)
    assert abs(res2["pearson"]) < 0.3 and res2["null_permutation"]["p_value"] > 0.01
    assert pearson(torch.ones(5), torch.arange(5.0)) == 0.0
    assert _offdiag(torch.arange(9.0).reshape(3, 3)).tolist() == [1.0, 2.0, 5.0]


def test_cli_on_the_tiny_model(policy, tmp_path):  # noqa: F811
    from salt.train.proxy import cli_main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = cli_main(["--model", str(policy), "--data", str(policy.parent / "rows.jsonl"), "--out", str(tmp_path / "p"),
                     "--n-prompts", "4", "--group-size", "4", "--max-new-tokens", "4", "--null-samples", "20",
                     "--tracking-uri", uri])
    assert code == 0
    res = json.loads((tmp_path / "p" / "proxy.json").read_text())
    assert -1.0 <= res["pearson"] <= 1.0 and res["n_rollouts"] == 16 and res["n_pairs"] == 120
    assert res["block_params"] > 0
    import mlflow

    run_id = json.loads((tmp_path / "p" / "run.json").read_text())["mlflow_run_id"]
    run = mlflow.tracking.MlflowClient(uri).get_run(run_id)
    assert run.data.metrics["proxy/pearson"] == pytest.approx(res["pearson"])
    assert cli_main(["--model", str(tmp_path / "nope"), "--data", "toy:test", "--out", str(tmp_path / "q")]) == 2
