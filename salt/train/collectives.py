"""Collectives of the data-parallel ranks: who we are, sums and maxima over ranks, gathers, and
each rank's contiguous share of a batch. One process (no process group) makes every call a no-op.

NCCL only reduces GPU tensors: CPU tensors are moved to the current CUDA device and back.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(world size, rank) of the default process group (1, 0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _all_reduce(t: torch.Tensor, op: Any) -> torch.Tensor:
    if world()[0] > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
        buf = t.to(dev)
        dist.all_reduce(buf, op=op)
        if buf is not t:
            t.copy_(buf.to(t.device))
    return t


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place; returns it."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def max_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``t`` over ranks in place; returns it."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if world()[0] > 1:
        dist.barrier()


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate per-rank tensors along dim 0 in rank order (row counts may differ)."""
    W, _ = world()
    if W == 1:
        return t
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(W)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    width = max(sizes_i)
    pad = t.new_zeros((width - t.shape[0],) + tuple(t.shape[1:]))
    buf = [t.new_zeros((width,) + tuple(t.shape[1:])) for _ in range(W)]
    dist.all_gather(buf, torch.cat([t, pad], dim=0).contiguous())
    return torch.cat([b[:s] for b, s in zip(buf, sizes_i)], dim=0)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order."""
    W, _ = world()
    if W == 1:
        return [obj]
    out: list[Any] = [None] * W
    dist.all_gather_object(out, obj)
    return out


def rank_slice(n: int, world_size: int, rank: int) -> slice:
    """Contiguous share of ``n`` rows for ``rank`` (sizes differ by at most one)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def reduce_gradients(params: list[torch.nn.Parameter], mean: bool) -> None:
    """Sum (``mean``: average) every parameter's gradient over ranks through one flat buffer."""
    W, _ = world()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])  # (sum of numel,)
    sum_over_ranks(flat)
    if mean:
        flat /= W
    off = 0
    for p in params:
        n = p.numel()
        p.grad = flat[off: off + n].view_as(p).clone()
        off += n


class RankCollectives:
    """The default process group as :class:`salt.algo.gram.distributed.Collectives` (the
    distributed Gram's sums, maxima, row gathers and all-to-all exchange of feature blocks)."""

    def __init__(self) -> None:
        self.world, self.rank = world()

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        return sum_over_ranks(t)

    def max_(self, t: torch.Tensor) -> torch.Tensor:
        return max_over_ranks(t)

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        return all_gather_rows(t.to(self._device(t))).to(t.device)

    def _device(self, t: torch.Tensor) -> torch.device:
        """Where a collective on ``t`` runs: NCCL only moves GPU tensors."""
        nccl = self.world > 1 and dist.get_backend() == "nccl"
        return torch.device("cuda", torch.cuda.current_device()) if nccl else t.device

    def exchange(self, send: list[torch.Tensor], recv_numel: list[int]) -> list[torch.Tensor]:
        """All-to-all of 1-D tensors: ``send[s]`` to rank s; returns what each rank sent here."""
        if len(send) != self.world or len(recv_numel) != self.world:
            raise ValueError(f"exchange needs one tensor and one size per rank ({self.world}), "
                             f"got {len(send)} and {len(recv_numel)}")
        if self.world == 1:
            return list(send)
        src = torch.cat([s.reshape(-1) for s in send])
        dev = self._device(src)
        out = torch.empty(sum(recv_numel), dtype=src.dtype, device=dev)
        dist.all_to_all_single(out, src.to(dev), output_split_sizes=list(recv_numel),
                               input_split_sizes=[s.numel() for s in send])
        return list(out.to(src.device).split(list(recv_numel)))
