"""The Gram package's contracts: one registry of methods (a new estimator is one registration), the
defaults declared once and read by the run config, ``info`` built once from what the method ran,
``auto`` decided once, an acyclic package of small modules, and the promised import path."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
from pathlib import Path

import pytest
import torch

from salt.algo import gram
from salt.algo.gram import (DEFAULTS, FEATURE_METHODS, GRAM_METHODS, GramOptions, GramResult, gram_from_features,
                            lm_head_gram, rollout_features, streaming_lm_head_gram)
from salt.algo.gram.base import exact_info
from salt.algo.gram.distributed import distributed_lm_head_gram
from tests.algo.test_gram_support import batch, rel

PACKAGE = Path(gram.__file__).parent
RUN_KEYS = {"chunk_size": "chunk_size", "sketch_dim": "sketch_dim", "tol": "gram_tol", "support_eps": "support_eps",
            "tail_dim": "tail_dim", "sparse_samples": "sparse_samples"}  # GramOptions field -> algorithm.salt key


def test_run_config_defaults_are_the_packages():
    from salt.train.config import SaltTrainConfig

    run = SaltTrainConfig()
    for field, key in RUN_KEYS.items():
        assert getattr(run, key) == getattr(DEFAULTS, field), key
    # the values training has always used (the pinned runs): unifying the two declarations kept these
    assert (DEFAULTS.chunk_size, DEFAULTS.sketch_dim, DEFAULTS.tail_dim) == (4096, 256, 256)


def test_cost_keyword_defaults_are_the_declared_ones():
    params = inspect.signature(gram.gram_cost).parameters
    names = {f.name for f in dataclasses.fields(GramOptions)} & set(params)
    assert names
    for name in names:
        assert params[name].default == getattr(DEFAULTS, name), name


ENTRY_POINTS = [lm_head_gram, streaming_lm_head_gram, rollout_features, distributed_lm_head_gram]


@pytest.mark.parametrize("fn", ENTRY_POINTS)
def test_entry_points_share_one_options_object(fn):
    """The options are declared once (GramOptions): no entry point repeats them as parameters; each
    takes ``options=`` and the options' names as keywords, an unknown name failing with the list."""
    params = inspect.signature(fn).parameters
    assert not {f.name for f in dataclasses.fields(GramOptions)} & set(params), fn.__name__
    assert params["options"].default is None and params["options"].kind is inspect.Parameter.KEYWORD_ONLY
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    h, W, b, z, y, mask = batch(2, 3, 10, 2, 1.0)
    args = (h, z, y, mask) if fn is lm_head_gram else (h, None, y, mask) if fn is rollout_features else (h, W, y, mask)
    extra = {"weight": W} if fn is rollout_features else {}
    with pytest.raises(TypeError, match=r"'tail_dims'.*tail_dim"):
        fn(*args, tail_dims=3, **extra)


def test_options_object_and_keywords_are_the_same_call():
    h, W, b, z, y, mask = batch(4, 6, 50, 3, 2.0, seed=5)
    opts = GramOptions(tail_dim=0, seed=3, support_eps=1e-3)
    for fn, args in ((lm_head_gram, (h, z, y, mask)), (streaming_lm_head_gram, (h, W, y, mask))):
        K1 = fn(*args, 1.0, "support", options=opts)
        K2 = fn(*args, 1.0, "support", tail_dim=0, seed=3, support_eps=1e-3)
        K3 = fn(*args, 1.0, "support", options=GramOptions(tail_dim=0, seed=9), seed=3, support_eps=1e-3)
        assert torch.equal(K1, K2) and torch.equal(K1, K3), fn.__name__


@pytest.mark.parametrize("kwargs,key", [
    (dict(chunk_size=0), "algorithm.salt.chunk_size"), (dict(sketch_dim=0), "algorithm.salt.sketch_dim"),
    (dict(tol=math.inf), "algorithm.salt.gram_tol"), (dict(support_eps=1.0), "algorithm.salt.support_eps"),
    (dict(tail_dim=-1), "algorithm.salt.tail_dim"), (dict(sparse_samples=-1), "algorithm.salt.sparse_samples"),
    (dict(sketch_hidden_dim=0), "sketch_hidden_dim"),
])
def test_bad_options_name_the_run_config_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        GramOptions(**kwargs)
    h, W, b, z, y, mask = batch(2, 3, 10, 2, 1.0)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):  # checked before any work, whatever the method
        lm_head_gram(h, z, y, mask, method="exact", **kwargs)


def test_every_method_fills_info_once_and_replaces_what_was_there():
    h, W, b, z, y, mask = batch(4, 9, 120, 5, 3.0, seed=3, zipf=0.5)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    for method in GRAM_METHODS:
        info = {"stale": 1, "method": "nothing", "support_size": -1}
        K = lm_head_gram(h, z, y, mask, method=method, sketch_dim=200, info=info)
        assert "stale" not in info and info["method"] in GRAM_METHODS and info["method"] != "auto", (method, info)
        assert info["err_kind"] in ("deterministic", "probabilistic", "none")
        if info["method"] in ("support", "sparse"):
            assert info["support_size"] >= 0
        else:
            assert "support_size" not in info  # nothing left over from the stale dict or another backend
        if info["err_kind"] != "none":
            assert rel(K, dense) <= info["err_bound"] + 1e-12, method


def test_feature_methods_are_gram_methods_and_gather_alike():
    """A feature method's Gram is F F^T of its rows: rows gathered across ranks and passed to
    gram_from_features give the Gram and the info that lm_head_gram reports for the whole batch."""
    h, W, b, z, y, mask = batch(6, 7, 90, 4, 2.0, seed=8)
    assert set(FEATURE_METHODS) == {"dense", "sketch"} and set(FEATURE_METHODS) <= set(GRAM_METHODS)
    for method in FEATURE_METHODS:
        kw = dict(sketch_dim=16, seed=3, chunk_size=5)
        i_whole, i_rows = {}, {"stale": True}
        K = lm_head_gram(h, z, y, mask, 0.9, method, info=i_whole, **kw)
        parts = [rollout_features(h[s], None, y[s], mask[s], 0.9, method, weight=W, bias=b, **kw)
                 for s in (slice(0, 4), slice(4, 6))]  # two "ranks"
        Kf = gram_from_features(torch.cat(parts), method=method, info=i_rows)
        assert rel(Kf, K) < 1e-12
        assert i_rows.keys() == i_whole.keys() and i_rows["method"] == method
        assert i_rows["err_kind"] == i_whole["err_kind"]
        assert (math.isnan(i_rows["err_bound"]) and math.isnan(i_whole["err_bound"])) or \
            i_rows["err_bound"] == i_whole["err_bound"]
    with pytest.raises(ValueError, match="choose one of dense, sketch"):
        gram_from_features(torch.ones(2, 3), method="exact")


def test_a_new_estimator_is_one_registration(monkeypatch):
    """Registered under a name, an estimator is reachable from every entry point and the run config."""
    from salt.train.config import from_dict

    seen = []

    def diagonal(src, opts: GramOptions) -> GramResult:  # only the squared norms of the exact Gram
        full = GRAM_METHODS.get("exact")(src, opts).K
        seen.append(opts.chunk_size)
        return GramResult(torch.diag(torch.diagonal(full)), {**exact_info("test_diagonal"), "err_kind": "none"})

    monkeypatch.setitem(GRAM_METHODS._items, "test_diagonal", diagonal)
    h, W, b, z, y, mask = batch(3, 5, 40, 3, 1.0, seed=2)
    info = {}
    K = lm_head_gram(h, z, y, mask, method="test_diagonal", chunk_size=3, info=info)
    Ks = streaming_lm_head_gram(h, W, y, mask, method="test_diagonal", bias=b, chunk_size=3)
    exact = lm_head_gram(h, z, y, mask, method="exact")
    assert torch.allclose(K, torch.diag(torch.diagonal(exact))) and rel(Ks, K) < 1e-12
    assert seen == [3, 3] and info["method"] == "test_diagonal"
    cfg = from_dict({"algorithm": {"salt": {"gram": "test_diagonal"}}})
    cfg.validate(check_paths=False, check_devices=False)
    assert cfg.algorithm.salt.gram == "test_diagonal"


def test_auto_decides_once_per_gram(monkeypatch):
    """The trainer passes ``auto`` down; the cost rule runs once per Gram, inside the package."""
    from salt.algo.gram import auto
    from salt.algo.losses import LossConfig
    from salt.train.gram import lm_gram
    from salt.train.update import UpdateSettings

    calls = []
    choose = auto.choose_method
    monkeypatch.setattr(auto, "choose_method", lambda *a, **k: calls.append(a) or choose(*a, **k))
    h, W, b, z, y, mask = batch(4, 6, 50, 3, 2.0, seed=5)
    settings = UpdateSettings(loss_cfg=LossConfig(), temperature=1.0, micro_batch_size=4, max_grad_norm=1.0,
                              salt_enabled=True, salt_diagnostics=True, gram="auto", scope="global",
                              gram_options=GramOptions(chunk_size=64, sketch_dim=16, tol=1e-3, support_eps=1e-6,
                                                       tail_dim=8, sparse_samples=32))
    info = {}
    K = lm_gram(h, (W, b), y, mask, settings, seed=1, gather=True, info=info)
    assert calls == [(int((mask != 0).sum()), 50, 3, 4)] and info["method"] == "exact"
    import salt.train.gram as train_gram

    assert not hasattr(train_gram, "choose_method") and not hasattr(train_gram, "gram_cost")  # no second decision
    assert torch.equal(K, streaming_lm_head_gram(h, W, y, mask, 1.0, "exact", bias=b, chunk_size=64))


def _package_imports(path: Path) -> set[str]:
    """The salt.algo.gram modules a module of the package imports (relative to the package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("salt.algo.gram"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("salt.algo.gram"))
    return out


def test_package_modules_are_small_and_import_no_cycle():
    modules = {f"salt.algo.gram.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert {"salt.algo.gram.exact", "salt.algo.gram.sketch", "salt.algo.gram.support", "salt.algo.gram.sparse",
            "salt.algo.gram.auto"} <= set(modules)
    graph = {}
    for name, path in modules.items():
        assert len(path.read_text().splitlines()) <= 500, path
        deps = _package_imports(path) - {"salt.algo.gram_metrics"}
        assert "salt.algo.gram" not in deps, f"{path.name} imports the package root (a cycle through __init__)"
        graph[name] = deps & set(modules)
    done: set[str] = set()

    def visit(node: str, stack: tuple) -> None:
        assert node not in stack, f"import cycle: {' -> '.join(stack + (node,))}"
        if node not in done:
            for dep in graph[node]:
                visit(dep, stack + (node,))
            done.add(node)

    for name in graph:
        visit(name, ())
    # every estimator module is imported by the package, so its registrations always happen
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "salt.algo.gram"
                for a in n.names}
    assert {"exact", "sketch", "support", "sparse", "auto"} <= imported


def test_the_promised_import_path_reexports_the_package():
    """shared/docs/methods.md section 8 promises ``from salt.algo.geometry import lm_head_gram,
    participation_ratio, effective_sample_size``: the same objects, nothing else."""
    from salt.algo import geometry, gram_metrics

    assert geometry.lm_head_gram is lm_head_gram
    assert geometry.participation_ratio is gram_metrics.participation_ratio
    assert geometry.effective_sample_size is gram_metrics.effective_sample_size
    assert sorted(geometry.__all__) == ["effective_sample_size", "lm_head_gram", "participation_ratio"]
