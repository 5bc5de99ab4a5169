"""The token view every Gram estimator reads: input checks, the valid tokens, their logits.

:func:`logits_source` (given (B, T, V) logits) and :func:`streaming_source` (given the hidden
states and the LM-head weight: the logits are formed block by block, never stored whole) check
the inputs and return a :class:`_LogitSource`; its :class:`_Tokens` holds the valid (mask != 0)
tokens compressed to N rows. :func:`_normalise` turns an estimator's unnormalised Gram into
K = (K + K^T) / (2 B). Nothing here chooses a backend.
"""

from __future__ import annotations

import math

import torch

# Streamed passes over the N x V softmax (the count sketch, the candidate pass) take blocks of
# about this many bytes (at least 16 tokens): the sketch's bucket sums are ceil(V / m) pairs of
# slice additions per block, so blocks must not be too small.
_STREAM_BLOCK_BYTES = 16 << 20


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _stream_rows(tok: "_Tokens", chunk: int) -> int:
    """Tokens per block of a streamed pass: at most ``chunk``, about _STREAM_BLOCK_BYTES of softmax."""
    return max(1, min(chunk, max(tok.N, 1), max(16, _STREAM_BLOCK_BYTES // (tok.V * _element_size(tok.dtype)))))

def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (bf16/fp16 inputs are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_inputs(hidden, logits, tokens, mask, temperature) -> None:
    if hidden.dim() != 3 or logits.dim() != 3:
        raise ValueError(
            f"hidden must be (B, T, H) and logits (B, T, V); got hidden {tuple(hidden.shape)} "
            f"and logits {tuple(logits.shape)}"
        )
    B, T, _ = hidden.shape
    if logits.shape[:2] != (B, T):
        raise ValueError(
            f"hidden {tuple(hidden.shape)} and logits {tuple(logits.shape)} disagree on (B, T)"
        )
    if tuple(tokens.shape) != (B, T) or tuple(mask.shape) != (B, T):
        raise ValueError(
            f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must both be (B, T) = {(B, T)}"
        )
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be an integer tensor (torch.long), got {tokens.dtype}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    V = logits.shape[-1]
    valid = mask != 0
    if valid.any():
        y = tokens[valid]
        if int(y.min()) < 0 or int(y.max()) >= V:
            raise ValueError(
                f"tokens of valid (mask != 0) positions must lie in [0, V={V}), "
                f"got range [{int(y.min())}, {int(y.max())}]"
            )


class _Tokens:
    """The valid tokens of a batch, compressed to N rows (row-major order over (B, T)).

    hw (N, H) mask-weighted hidden states w_t h_t (folding the mask weight into h gives
    d_t = w_t (p_t - e_y) on the other side for free), y (N,), r (N,) rollout index of each
    token (sorted), flat (N,) position in the flattened (B*T). The logits are not copied:
    :meth:`d_block` writes one block of valid rows at a time into a caller-owned buffer.
    """

    def __init__(self, hidden, logits, tokens, mask, dtype):
        B, T, H = hidden.shape
        flat_mask = mask.reshape(B * T)  # (B*T,)
        self.flat = torch.nonzero(flat_mask != 0, as_tuple=False).squeeze(1)  # (N,)
        self.B, self.T, self.H, self.V = B, T, H, logits.shape[-1]
        self.N = int(self.flat.numel())
        self.r = torch.div(self.flat, T, rounding_mode="floor")  # (N,)
        self.z_flat = logits.detach().reshape(B * T, self.V)  # (B*T, V), a view when contiguous
        w = flat_mask.index_select(0, self.flat).to(dtype)  # (N,)
        h = hidden.detach().reshape(B * T, H).index_select(0, self.flat).to(dtype)  # (N, H)
        self.hw = h * w.unsqueeze(1)  # (N, H)
        self.y = tokens.reshape(B * T).index_select(0, self.flat).long()  # (N,)
        self.dtype = dtype
        self.counts = torch.bincount(self.r, minlength=B).tolist()  # valid tokens per rollout


    def rollout_onehot(self) -> torch.Tensor:
        """(B, N) float64 one-hot rollout membership of the tokens (per-rollout sums are matmuls)."""
        onehot = torch.zeros(self.B, self.N, dtype=torch.float64, device=self.hw.device)
        onehot[self.r, torch.arange(self.N, device=self.hw.device)] = 1.0
        return onehot

    def bounds(self) -> list[int]:
        """[0, n_0, n_0 + n_1, ...]: rollout i owns the valid tokens bounds[i]..bounds[i + 1] - 1."""
        return [0] + list(torch.tensor(self.counts).cumsum(0).tolist())

    def runs(self):
        """[(r0, r1, a0)]: the valid positions as runs of consecutive rows r0..r1-1 of the flat
        logits (valid tokens a0..), or None if there are more than max(16, N / 16) runs."""
        if not hasattr(self, "_runs"):
            if self.N == 0:
                self._runs = []
            else:
                brk = (torch.nonzero(self.flat[1:] - self.flat[:-1] != 1).squeeze(1) + 1).tolist()
                starts = [0] + brk
                ends = brk + [self.N]
                fl = self.flat.tolist() if len(starts) <= max(16, self.N // 16) else None
                self._runs = None if fl is None else [(fl[a], fl[b - 1] + 1, a) for a, b in zip(starts, ends)]
        return self._runs

    def softmax_block(self, out: torch.Tensor, a0: int, a1: int, inv_t: float) -> torch.Tensor:
        """Write softmax(z_t * inv_t) of valid tokens a0..a1-1 into ``out`` (a1 - a0, V)."""
        r0, r1 = int(self.flat[a0]), int(self.flat[a1 - 1]) + 1
        if r1 - r0 == a1 - a0 and inv_t == 1.0 and self.z_flat.dtype == out.dtype:
            return torch.softmax(self.z_flat[r0:r1], dim=1, out=out)  # contiguous rows: no copy
        if r1 - r0 == a1 - a0 and self.z_flat.dtype == out.dtype:
            torch.mul(self.z_flat[r0:r1], inv_t, out=out)  # one pass: scale into the buffer
            return torch.softmax(out, dim=1, out=out)
        if r1 - r0 == a1 - a0:
            out.copy_(self.z_flat[r0:r1])  # upcasts bf16/fp16 logits one block at a time
        elif self.z_flat.dtype == out.dtype:
            torch.index_select(self.z_flat, 0, self.flat[a0:a1], out=out)
        else:
            out.copy_(self.z_flat.index_select(0, self.flat[a0:a1]))
        if inv_t != 1.0:
            out.mul_(inv_t)
        return torch.softmax(out, dim=1, out=out)


def _denominator(B: int, normalizer: float | None) -> float:
    """What the Gram is divided by: ``normalizer`` (the global number of rollouts), else B."""
    denom = float(B if normalizer is None else normalizer)
    if not denom > 0:
        raise ValueError(f"normalizer must be > 0 (the global number of rollouts), got {normalizer}")
    return denom


def _normalise(K: torch.Tensor, B: int, normalizer: float | None, out_dtype) -> torch.Tensor:
    """(K + K^T) / (2 denominator) in ``out_dtype``: the symmetrised, normalised Gram."""
    K = (K + K.T) / (2.0 * _denominator(B, normalizer))
    return K.to(out_dtype)


class _LogitSource:
    """Scaled logits z / T of the valid tokens: given (B, T, V) logits or hidden @ weight^T."""

    def __init__(self, tok: "_Tokens", inv_t: float, weight=None, bias=None, h=None):
        self.tok, self.inv_t, self.weight, self.bias, self.h = tok, inv_t, weight, bias, h
        self.memo: dict = {}  # (eps, chunk) -> the last _candidates result (auto: sparse, then support)

    def block(self, out: torch.Tensor, a0: int, a1: int) -> torch.Tensor:
        """softmax(z_t / T) of valid tokens a0..a1-1 written into ``out`` (a1 - a0, V)."""
        if self.weight is None:
            return self.tok.softmax_block(out, a0, a1, self.inv_t)
        torch.matmul(self.h[a0:a1], self.weight.T, out=out)  # (n, V) logits of this chunk only
        if self.bias is not None:
            out += self.bias
        if self.inv_t != 1.0:
            out.mul_(self.inv_t)
        return torch.softmax(out, dim=1, out=out)

    def d_block(self, out: torch.Tensor, a0: int, a1: int) -> torch.Tensor:
        """Write p_t - e_{y_t} for valid tokens a0..a1-1 into ``out``; the mask weight w_t is
        carried by ``tok.hw``. The e_y part is one indexed write per token."""
        self.block(out, a0, a1)
        out[torch.arange(a1 - a0, device=out.device), self.tok.y[a0:a1]] -= 1.0
        return out

    def cols(self, ids: torch.Tensor) -> torch.Tensor:
        """(N, len(ids)) scaled logits of every valid token at vocabulary ids ``ids``."""
        tok = self.tok
        if self.weight is None:
            runs = tok.runs()
            if runs is None:
                z = tok.z_flat.index_select(1, ids).index_select(0, tok.flat)
            else:  # only the valid rows are read, run by run of consecutive positions
                z = torch.empty(tok.N, ids.numel(), dtype=tok.z_flat.dtype, device=ids.device)
                for r0, r1, a0 in runs:
                    torch.index_select(tok.z_flat[r0:r1], 1, ids, out=z[a0 : a0 + r1 - r0])
            z = z.to(tok.dtype)
        else:
            z = self.h @ self.weight.index_select(0, ids).T
            if self.bias is not None:
                z += self.bias.index_select(0, ids)
        return z.mul_(self.inv_t) if self.inv_t != 1.0 else z

    def at(self, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(n,) scaled logits z_{rows[k], ids[k]}."""
        tok = self.tok
        if self.weight is None:
            z = tok.z_flat[tok.flat[rows], ids].to(tok.dtype)
        else:
            z = (self.h[rows] * self.weight[ids]).sum(1)
            if self.bias is not None:
                z += self.bias[ids]
        return z * self.inv_t


def logits_source(hidden, logits, tokens, mask, temperature) -> _LogitSource:
    """The checked :class:`_LogitSource` of given logits (B, T, V)."""
    _check_inputs(hidden, logits, tokens, mask, temperature)
    tok = _Tokens(hidden, logits, tokens, mask, _compute_dtype(hidden, logits))
    return _LogitSource(tok, 1.0 / float(temperature))


def streaming_source(hidden, weight, bias, tokens, mask, temperature) -> _LogitSource:
    """The checked :class:`_LogitSource` of logits z = h W^T (+ bias), formed block by block."""
    if weight.dim() != 2 or hidden.dim() != 3 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, H) with H = hidden.shape[-1]; got weight {tuple(weight.shape)}, "
                         f"hidden {tuple(hidden.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be (V,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    B, T, H = hidden.shape
    shape_only = torch.empty((), dtype=hidden.dtype, device=hidden.device).expand(B, T, weight.shape[0])  # no data
    _check_inputs(hidden, shape_only, tokens, mask, temperature)
    dtype = _compute_dtype(hidden, weight)
    tok = _Tokens(hidden, shape_only, tokens, mask, dtype)
    if bool((mask[mask != 0] == 1).all()):  # 0/1 mask: w_t h_t = h_t, one (N, H) copy serves both
        h = tok.hw
    else:
        h = hidden.detach().reshape(B * T, H).index_select(0, tok.flat).to(dtype)  # (N, H) unweighted
    b = None if bias is None else bias.detach().to(dtype)
    return _LogitSource(tok, 1.0 / float(temperature), weight.detach().to(dtype), b, h)
