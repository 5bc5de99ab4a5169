"""The chunked LM head (salt.train.head) against the unchunked computation it replaces, and the
global scope's no-grad pass against the one-pass Gram.

The reference is the pre-chunking ``policy_forward``: full logits of the response positions,
``log_softmax(logits.float() / T)``, ``gather`` and ``-(exp(lp) * lp).sum(-1)``, differentiated by
autograd. Values and gradients must agree within 1e-6 relative (float32, norm-wise per tensor),
with a temperature, padded rows (mask 0) and tied input/output embeddings.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from salt.train.head import ChunkedHead, chunked_head, head_logprobs, output_head
from tests.train.test_trainer import _tensor_batch, policy, run_config  # noqa: F401  (fixture)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _reference(h, W, b, y, T, upcast=True):
    """Unchunked log p_y and entropy (n,) from (n, H) hidden states, as the trainer computed them
    (logits upcast to float32; ``upcast=False``: in the inputs' dtype)."""
    z = torch.nn.functional.linear(h, W, b)
    lp = torch.log_softmax((z.float() if upcast else z) / T, dim=-1)
    return lp.gather(-1, y[:, None]).squeeze(-1), -(lp.exp() * lp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("vocab_block", [7, 64, 8192])  # 43, 5 and 1 vocabulary blocks of V = 301
def test_chunked_head_values_and_gradients_equal_the_unchunked_head(chunk, bias, vocab_block):
    g = torch.Generator().manual_seed(chunk + 7 * bias)
    n, H, V, T = 37, 24, 301, 0.7
    h = torch.randn(n, H, generator=g, requires_grad=True)
    W = (torch.randn(V, H, generator=g) / 3).requires_grad_()
    b = (torch.randn(V, generator=g) / 2).requires_grad_() if bias else None
    y = torch.randint(0, V, (n,), generator=g)
    c_lp, c_ent = torch.randn(n, generator=g), torch.randn(n, generator=g)
    inputs = [t for t in (h, W, b) if t is not None]

    lp_ref, ent_ref = _reference(h, W, b, y, T)
    grads_ref = torch.autograd.grad((c_lp * lp_ref + c_ent * ent_ref).sum(), inputs, retain_graph=True)
    lp, ent = head_logprobs(h, W, b, y, T, chunk, vocab_block)
    grads = torch.autograd.grad((c_lp * lp + c_ent * ent).sum(), inputs)
    assert _rel(lp, lp_ref) < 1e-6 and _rel(ent, ent_ref) < 1e-6
    for got, want in zip(grads, grads_ref):
        assert _rel(got, want) < 1e-6
    # log-probs alone (the entropy not in the loss): the entropy's gradient term drops out
    grads_ref = torch.autograd.grad((c_lp * lp_ref).sum(), inputs)
    lp, _ = head_logprobs(h, W, b, y, T, chunk, vocab_block)
    for got, want in zip(torch.autograd.grad((c_lp * lp).sum(), inputs), grads_ref):
        assert _rel(got, want) < 1e-6


@pytest.mark.parametrize("vocab_block", [3, 8192])
def test_chunked_head_in_float64_matches_float64_autograd_to_rounding(vocab_block):
    """The chain rule itself (no float32 rounding to hide behind): float64 in, float64 out."""
    g = torch.Generator().manual_seed(3)
    n, H, V, T = 9, 4, 11, 1.3
    h = torch.randn(n, H, generator=g, dtype=torch.float64, requires_grad=True)
    W = torch.randn(V, H, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(V, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, V, (n,), generator=g)
    lp_ref, ent_ref = _reference(h, W, b, y, T, upcast=False)
    want = torch.autograd.grad(lp_ref.sum() + 0.3 * ent_ref.sum(), (h, W, b))
    lp, ent = ChunkedHead.apply(h, W, b, y, T, 4, vocab_block)
    assert lp.dtype == torch.float64 and _rel(lp, lp_ref) < 1e-13 and _rel(ent, ent_ref) < 1e-13
    for a, w in zip(torch.autograd.grad(lp.sum() + 0.3 * ent.sum(), (h, W, b)), want):
        assert _rel(a, w) < 1e-12


@pytest.mark.parametrize("scale", [5.0, 20.0])
@pytest.mark.parametrize("vocab_block", [7, 8192])
def test_chunked_head_on_peaked_logits_is_as_close_to_float64_as_the_unchunked_head(scale, vocab_block):
    """Large logits (entropies near 0): the online log-sum-exp over vocabulary blocks and the one-pass
    backward (sum_v G_v from the forward's entropy) lose no more to float32 rounding than autograd
    through the unchunked ``log_softmax`` (both measured against float64)."""
    g = torch.Generator().manual_seed(int(scale))
    n, H, V, T = 37, 24, 301, 0.7
    h64 = torch.randn(n, H, generator=g, dtype=torch.float64)
    W64 = torch.randn(V, H, generator=g, dtype=torch.float64) * scale / 3
    y = torch.randint(0, V, (n,), generator=g)

    def run(fn, dtype):
        h, W = h64.to(dtype).requires_grad_(), W64.to(dtype).requires_grad_()
        lp, ent = fn(h, W)
        return (lp, ent) + torch.autograd.grad((lp + 0.5 * ent).sum(), (h, W))

    exact = run(lambda h, W: _reference(h, W, None, y, T, upcast=False), torch.float64)
    ref = run(lambda h, W: _reference(h, W, None, y, T), torch.float32)
    ours = run(lambda h, W: head_logprobs(h, W, None, y, T, 5, vocab_block), torch.float32)
    for o, r, e in zip(ours, ref, exact):
        assert _rel(o, e) <= 1.5 * _rel(r, e) + 1e-7


def test_head_rejects_bad_chunk_and_shapes():
    h, W, y = torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="train.head_chunk_size"):
        head_logprobs(h, W, None, y, 1.0, 0)
    with pytest.raises(ValueError, match=r"weight \(V, H\)"):
        head_logprobs(h, W.T, None, y, 1.0, 2)
    with pytest.raises(TypeError, match="get_output_embeddings"):
        output_head(torch.nn.Linear(2, 2))


def _tied_model(vocab: int = 97, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True, use_cache=False)
    model = Qwen2ForCausalLM(cfg).float()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model


def _padded_batch(vocab: int, seed: int = 1):
    """A left-padded TensorBatch of 5 rollouts with responses of different lengths (mask 0 after each)."""
    from salt.train.batch import TensorBatch

    g = torch.Generator().manual_seed(seed)
    N, Lp, T = 5, 6, 9
    attn = torch.ones(N, Lp + T, dtype=torch.long)
    attn[1, :2] = 0  # left padding of a prompt
    mask = torch.zeros(N, T)
    for i, n in enumerate([9, 4, 7, 1, 6]):
        mask[i, :n] = 1.0
    attn[:, Lp:] = (mask != 0).long()
    ids = torch.randint(1, vocab, (N, Lp + T), generator=g)
    tokens = ids[:, Lp:].clone()
    return TensorBatch(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(1) - 1).clamp_min(0),
                       tokens=tokens, mask=mask, advantages=torch.randn(N, generator=g),
                       group_ids=torch.tensor([0, 0, 1, 1, 1]))


@pytest.mark.parametrize("chunk", [1, 7, 512])
def test_policy_forward_with_tied_embeddings_matches_the_unchunked_forward(chunk):
    """Values within 1e-6 of the unchunked float32 forward; gradients within 1e-6 of it over all
    parameters together, and each parameter's gradient as close to the float64 gradient as the unchunked
    float32 one is. (Parameter by parameter the unchunked float32 gradient is itself up to 1.4e-6 from
    float64 on this model, e.g. a k_proj bias, so two float32 orders of summation can differ by more
    than 1e-6 there, by how much depending on the CPU's kernels.)"""
    import copy

    from salt.train.forward import policy_forward

    V, Temp = 97, 0.8
    model = _tied_model(V)
    tb = _padded_batch(V)
    T = tb.tokens.shape[1]
    valid = tb.mask != 0
    c_lp = torch.randn(tb.mask.shape, generator=torch.Generator().manual_seed(5))

    out = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                output_hidden_states=True, logits_to_keep=T + 1, use_cache=False)
    lp_all = torch.log_softmax(out.logits[:, :-1].float() / Temp, dim=-1)
    lp_ref = lp_all.gather(-1, tb.tokens[..., None]).squeeze(-1)
    ent_ref = -(lp_all.exp() * lp_all).sum(-1)
    loss_ref = ((c_lp * lp_ref + 0.1 * ent_ref) * tb.mask).sum()
    params = [p for p in model.parameters()]
    grads_ref = torch.autograd.grad(loss_ref, params)
    m64 = copy.deepcopy(model).double()
    lp64 = torch.log_softmax(m64(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                                 logits_to_keep=T + 1, use_cache=False).logits[:, :-1] / Temp, dim=-1)
    loss64 = ((c_lp.double() * lp64.gather(-1, tb.tokens[..., None]).squeeze(-1) - 0.1 * (lp64.exp() * lp64).sum(-1))
              * tb.mask.double()).sum()
    grads64 = [q.float() for q in torch.autograd.grad(loss64, list(m64.parameters()))]

    fwd = policy_forward(model, tb, Temp, with_features=True, entropy_grad=True, head_chunk=chunk)
    assert _rel(fwd.logp[valid], lp_ref[valid]) < 1e-6 and _rel(fwd.entropy[valid], ent_ref[valid]) < 1e-6
    assert bool((fwd.logp[~valid] == 0).all()) and bool((fwd.entropy[~valid] == 0).all())
    assert torch.equal(fwd.hidden, out.hidden_states[-1][:, -(T + 1):-1].detach())
    grads = torch.autograd.grad(((c_lp * fwd.logp + 0.1 * fwd.entropy) * tb.mask).sum(), params)
    flat = lambda gs: torch.cat([q.flatten() for q in gs])  # noqa: E731
    assert _rel(flat(grads), flat(grads_ref)) < 1e-6
    for p, got, want, exact in zip(params, grads, grads_ref, grads64):
        assert _rel(got, exact) <= 1.5 * _rel(want, exact) + 1e-7, [n for n, q in model.named_parameters() if q is p]
    # entropy_grad off: the entropy carries no gradient (as before: it is only logged)
    fwd = policy_forward(model, tb, Temp, with_features=False, entropy_grad=False, head_chunk=chunk)
    assert not fwd.entropy.requires_grad and fwd.hidden is None
    assert output_head(model).forward.__func__ is torch.nn.Linear.forward  # the patch is undone


def test_no_tokens_by_vocabulary_tensor_larger_than_a_chunk_is_saved_for_backward():
    """Every tensor autograd keeps for the backward of one forward is far below tokens x V."""
    from salt.train.forward import policy_forward

    V, chunk = 97, 4
    model = _tied_model(V)
    tb = _padded_batch(V)
    n = int((tb.mask != 0).sum())
    saved: list[tuple] = []

    def pack(t):
        if V in t.shape and t.numel() > chunk * V:
            saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fwd = policy_forward(model, tb, 1.0, with_features=False, entropy_grad=True, head_chunk=chunk)
    # the only vocabulary-wide tensor saved is the (V, H) head weight, never (tokens, V) logits
    assert saved and all(shape == (V, 32) for shape in saved), saved
    assert n > chunk  # several chunks: a (tokens x V) tensor would have been caught
    fwd.logp.sum().backward()


def test_chunked_head_restores_the_head_after_an_error():
    model = _tied_model()
    head = output_head(model)
    with pytest.raises(RuntimeError, match="boom"):
        with chunked_head(model, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2), 1.0, 4, False, False):
            raise RuntimeError("boom")
    assert "forward" not in vars(head)


def test_global_scope_no_grad_pass_equals_the_one_pass_gram_and_update(policy):  # noqa: F811
    """Scope global with several micro-batches (no-grad decoder pass for the Gram's hidden states,
    then forward + backward per micro-batch) gives the coefficients and the update of one micro-batch
    covering the mini-batch (one forward whose hidden states feed the Gram), and its Gram is the exact
    Gram of the model's full logits."""
    from transformers import AutoModelForCausalLM

    from salt.algo.gram import lm_head_gram
    from salt.train.config import from_dict
    from salt.train.update import UpdateSettings, make_optimizer, update_minibatch

    _, _, _, tb = _tensor_batch(policy, n_prompts=3, n=4, seed=4)
    results = {}
    for micro in (len(tb), 5, 2):
        cfg = from_dict(run_config(Path(policy), algorithm={"salt": {"enabled": True, "gram": "exact"}},
                                   train={"optimizer": "sgd", "lr": 1.0, "max_grad_norm": 0.0,
                                          "micro_batch_size": micro, "head_chunk_size": 3}))
        model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
        T = tb.tokens.shape[1]
        with torch.no_grad():
            out = model(input_ids=tb.input_ids, attention_mask=tb.attention_mask, position_ids=tb.position_ids,
                        output_hidden_states=True, logits_to_keep=T + 1, use_cache=False)
        opt, sched = make_optimizer(model, cfg, 1)
        coefs, gram = [], {}
        update_minibatch(model, opt, sched, tb, UpdateSettings.from_config(cfg), seed=1, coef_out=coefs, gram_out=gram)
        K_full = lm_head_gram(out.hidden_states[-1][:, -(T + 1):-1].double(), out.logits[:, :-1].double(), tb.tokens,
                              tb.mask, cfg.rollout.temperature, "exact")
        assert torch.allclose(gram["gram"], K_full, rtol=1e-5, atol=1e-7 * float(K_full.abs().max()))
        results[micro] = (torch.cat(coefs), torch.cat([p.detach().flatten() for p in model.parameters()]))
    coef0, params0 = results[len(tb)]
    for micro in (5, 2):
        coef, params = results[micro]
        assert torch.allclose(coef, coef0, rtol=1e-5, atol=1e-6)
        assert _rel(params, params0) < 1e-6


@pytest.mark.parametrize("vocab_block", [32, 8192])
def test_chunked_head_under_bf16_autocast_matches_autocast_autograd(vocab_block):
    """Mixed precision: the logits are formed in bf16 as autocast's nn.Linear forms them, in the
    forward and again in the backward (autocast is off there), and the gradients come back in the
    parameters' float32."""
    g = torch.Generator().manual_seed(11)
    n, H, V, T = 20, 16, 130, 0.9
    h = torch.randn(n, H, generator=g, requires_grad=True)
    W = (torch.randn(V, H, generator=g) / 2).requires_grad_()
    y = torch.randint(0, V, (n,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp_ref, ent_ref = _reference(h, W, None, y, T)
        lp, ent = head_logprobs(h, W, None, y, T, 6, vocab_block)
    assert _rel(lp, lp_ref) < 1e-6 and _rel(ent, ent_ref) < 1e-6  # same bf16 logits, same float32 softmax
    want = torch.autograd.grad((lp_ref + 0.2 * ent_ref).sum(), (h, W))
    got = torch.autograd.grad((lp + 0.2 * ent).sum(), (h, W))
    for a, w in zip(got, want):
        assert a.dtype == torch.float32 and _rel(a, w) < 5e-3  # bf16 matmuls (ours sums the chunks in fp32)
