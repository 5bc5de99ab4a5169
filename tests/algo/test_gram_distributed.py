"""The distributed LM-head Gram (:mod:`salt.algo.gram.distributed`): 2 gloo processes, each holding
its own rollouts (different counts and lengths per rank), against the single-process estimators and
the brute-force dense Gram of the same mini-batch; what crosses the ranks is counted."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from salt.algo.gram import choose_method, lm_head_gram, streaming_lm_head_gram
from salt.algo.gram.distributed import _FEATURE_COLS, LocalCollectives, distributed_lm_head_gram
from tests.algo.test_gram_support import batch, rel

# name: (B, T, V, H, scale, zipf, rank-0 rows, rank-1 length, dtype, temperature, mask weights)
CASES = {
    "peaked": (5, 12, 600, 6, 3.0, 1.0, 3, 9, torch.float64, 1.0, False),
    "zipf-t07-weights": (4, 10, 300, 5, 8.0, 1.0, 2, 10, torch.float64, 0.7, True),
    "flat": (4, 8, 200, 4, 0.0, 0.0, 2, 8, torch.float64, 1.0, False),
    "float32": (5, 12, 600, 6, 3.0, 1.0, 3, 9, torch.float32, 1.0, False),
    # more than 2,048 tokens: the single-process bound has no pair refinement either, so both
    # stop at the same support size and the Grams agree to rounding
    "long": (6, 440, 2000, 8, 20.0, 0.0, 3, 440, torch.float64, 1.0, False),
}
# (method, tol, tail_dim)
RUNS = [("support", 1e-3, 0), ("support", 3e-2, 16), ("exact", 1e-3, 0), ("auto", 1e-3, 0)]
LONG_RUNS = [("support", 1e-3, 0), ("support", 2e-2, 16), ("auto", 1e-3, 0)]  # auto: support here, as at scale


def _case(name: str):
    B, T, V, H, scale, zipf, k, T1, dtype, temp, weights = CASES[name]
    h, W, b, z, y, mask = batch(B, T, V, H, scale, seed=len(name), zipf=zipf, dtype=dtype)
    mask[k:, T1:] = 0.0  # rank 1 holds only its first T1 positions
    if weights:
        mask = mask * (0.5 + torch.rand(B, T, generator=torch.Generator().manual_seed(5), dtype=dtype))
        mask[-1] = 0.0  # an empty rollout on rank 1
    return dict(h=h, W=W, b=b, z=z, y=y, mask=mask, k=k, T1=T1, temp=temp)


def _runs(name: str):
    return LONG_RUNS if name == "long" else RUNS


class _Counting:
    """A Collectives wrapper that records (operation, numbers) of every call on this rank."""

    def __init__(self, inner):
        self.inner, self.world, self.rank, self.log = inner, inner.world, inner.rank, []

    def sum_(self, t):
        self.log.append(("sum", t.numel()))
        return self.inner.sum_(t)

    def max_(self, t):
        self.log.append(("max", t.numel()))
        return self.inner.max_(t)

    def gather_rows(self, t):
        self.log.append(("gather", t.numel()))
        return self.inner.gather_rows(t)

    def exchange(self, send, recv_numel):
        self.log.append(("exchange", sum(recv_numel)))
        return self.inner.exchange(send, recv_numel)


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    from salt.train.collectives import RankCollectives

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name in CASES:
            c = _case(name)
            rows = slice(0, c["k"]) if rank == 0 else slice(c["k"], None)
            T = c["h"].shape[1] if rank == 0 else c["T1"]
            h, y, m = c["h"][rows, :T], c["y"][rows, :T], c["mask"][rows, :T]
            for method, tol, tail in _runs(name):
                comm, info = _Counting(RankCollectives()), {}
                K = distributed_lm_head_gram(h, c["W"], y, m, c["temp"], method, comm=comm, bias=c["b"], tol=tol,
                                             tail_dim=tail, support_eps=1e-3, seed=11, info=info, sparse_samples=64)
                results[(name, method, tol, tail)] = (K, info, comm.log)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("gram_dist")
    mp.spawn(_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_process_and_brute_force(two_ranks, name):
    c = _case(name)
    B, H = c["h"].shape[0], c["h"].shape[2]
    V = c["W"].shape[0]
    N = int((c["mask"] != 0).sum())
    f64 = c["h"].dtype == torch.float64
    dense = lm_head_gram(c["h"].double(), c["z"].double(), c["y"], c["mask"].double(), c["temp"], method="dense")
    for method, tol, tail in _runs(name):
        key = (name, method, tol, tail)
        (K, info, log0), (K1, _, log1) = two_ranks[0][key], two_ranks[1][key]
        assert torch.equal(K, K1), (key, "the ranks' Grams differ")
        assert K.shape == (B, B) and K.dtype == c["h"].dtype
        err = rel(K, dense)
        # the deterministic bound covers the estimator, not the float32 rounding of its inputs
        assert err <= info["err_bound"] * (1 + 1e-9) + (1e-13 if f64 else 2e-6), (key, err, info)
        if method == "auto":
            assert info["method"] == choose_method(N, V, H, B, tail_dim=tail, chunk_size=512, streaming=True)
            assert info["method"] == ("support" if name == "long" else "exact"), key
        if info["method"] == "exact":
            assert info["err_bound"] == 0.0 and info["support_size"] == V and err < (1e-12 if f64 else 1e-5), key
            continue
        assert info["err_bound"] <= tol * (1 + 1e-9) or info["support_size"] == V or tail > 0, (key, info)
        ref_info = {}
        ref = streaming_lm_head_gram(c["h"], c["W"], c["y"], c["mask"], c["temp"], "support", bias=c["b"], tol=tol,
                                     tail_dim=tail, support_eps=1e-3, seed=11, info=ref_info)
        # the distributed bound omits the single-process pair refinement: never a smaller support
        assert info["support_size"] >= ref_info["support_size"], (key, info, ref_info)
        if name == "long" or info["support_size"] == ref_info["support_size"]:
            assert info["support_size"] == ref_info["support_size"] and info["tail_rows"] == ref_info["tail_rows"]
            assert rel(K, ref) < (1e-12 if f64 else 1e-5), (key, rel(K, ref))
            assert info["err_bound"] == pytest.approx(ref_info["err_bound"], rel=1e-6, abs=1e-15), key
        # what crossed the ranks: per-rollout feature blocks (B x ids x H in all), the vocabulary's
        # levels, (B, B) Gram sums, an (H, H) hidden Gram and a few numbers; nothing per token
        ids = info["support_size"] + info["tail_rows"]
        assert sum(n for op, n in log0 + log1 if op == "exchange") == B * H * ids, key
        largest = max(V, H * H, B * B, B * _FEATURE_COLS * H)
        assert all(n <= largest for _, n in log0 + log1), key
        assert [op for op, _ in log0] == [op for op, _ in log1], "the ranks ran different collectives"


def test_one_process_form_equals_the_support_estimator():
    """World size 1 (LocalCollectives): the same loop gives the single-process support Gram bit for bit
    when the pair refinement is not used, and exact = every id."""
    h, W, b, z, y, mask = batch(6, 440, 900, 6, 12.0, seed=2, zipf=1.0)
    assert int(mask.sum()) > 2048
    for tol, tail in ((1e-3, 0), (5e-2, 16)):
        i1, i2 = {}, {}
        K1 = streaming_lm_head_gram(h, W, y, mask, 1.0, "support", bias=b, tol=tol, tail_dim=tail, info=i1, seed=4)
        K2 = distributed_lm_head_gram(h, W, y, mask, 1.0, "support", comm=LocalCollectives(), bias=b, tol=tol,
                                      tail_dim=tail, info=i2, seed=4)
        assert i1["support_size"] == i2["support_size"] < 900 and rel(K2, K1) < 1e-13
        assert i2["err_bound"] == pytest.approx(i1["err_bound"], rel=1e-9)
    dense = lm_head_gram(h, z, y, mask, method="dense")
    K = distributed_lm_head_gram(h, W, y, mask, 1.0, "exact", bias=b, info=(info := {}))
    assert rel(K, dense) < 1e-12 and info == {**info, "method": "exact", "err_bound": 0.0, "support_size": 900}


def test_refuses_what_has_no_distributed_form():
    h, W, b, z, y, mask = batch(2, 4, 50, 3, 1.0)
    for method in ("sparse", "dense", "sketch", "nope"):
        with pytest.raises(ValueError, match="no distributed form"):
            distributed_lm_head_gram(h, W, y, mask, 1.0, method)
    with pytest.raises(ValueError, match="gram_tol"):
        distributed_lm_head_gram(h, W, y, mask, 1.0, "support", tol=-1.0)
    with pytest.raises(ValueError, match="exchange"):
        LocalCollectives().exchange([torch.zeros(3)], [2])
    assert math.isfinite(float(distributed_lm_head_gram(h, W, y, torch.zeros_like(mask), 1.0).abs().sum()))
