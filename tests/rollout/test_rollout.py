"""Rollout backends: HF generate (shapes, grouping, seeds, EOS, log-probs) and vLLM conversion logic."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch

from salt.rollout import HFBackend, RolloutOutput, make_backend
from salt.rollout.base import cut_at_eos
from salt.train.toy_model import build_toy_model, train_toy_tokenizer

PROMPTS = ["3+4=", "(1+2)*3-4=", "12-5="]


@pytest.fixture(scope="module")
def tok():
    return train_toy_tokenizer(None)


@pytest.fixture(scope="module")
def model(tok):
    return build_toy_model(tok, "tiny", seed=0)


def _recomputed_logprobs(model, prompt_ids, completion_ids, temperature):
    """Brute force: one unpadded forward per rollout, temperature-scaled log-softmax at the sampled tokens."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (T_c, V)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, torch.tensor(completion_ids)[:, None]).squeeze(-1)


def test_shapes_grouping_and_consistency(model, tok):
    out = HFBackend(model, tok).generate(PROMPTS, n=4, max_new_tokens=6, temperature=1.0, seed=0)
    assert isinstance(out, RolloutOutput)
    assert len(out.prompt_ids) == 3 and len(out.completion_ids) == 12
    assert out.group_ids == [0] * 4 + [1] * 4 + [2] * 4
    assert out.prompt_ids[1] == tok("(1+2)*3-4=").input_ids
    for ids, lps, reason, text in zip(out.completion_ids, out.logprobs, out.finish_reasons, out.texts):
        assert 1 <= len(ids) <= 6 and len(lps) == len(ids)
        assert all(lp <= 0.0 for lp in lps)
        assert text == tok.decode(ids, skip_special_tokens=True)
        if reason == "stop":
            assert ids[-1] == tok.eos_token_id and tok.eos_token_id not in ids[:-1]
        else:
            assert reason == "length" and len(ids) == 6 and tok.eos_token_id not in ids


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.9)])
def test_logprobs_match_recomputed_forward(model, tok, temperature, top_p):
    out = HFBackend(model, tok, batch_size=5).generate(
        PROMPTS, n=3, max_new_tokens=7, temperature=temperature, top_p=top_p, seed=11
    )
    for i, comp in enumerate(out.completion_ids):
        ref = _recomputed_logprobs(model, out.prompt_ids[i // 3], comp, temperature)
        torch.testing.assert_close(torch.tensor(out.logprobs[i]), ref, rtol=0, atol=1e-5)


def test_seed_reproducible_and_rng_untouched(model, tok):
    backend = HFBackend(model, tok)
    state = torch.random.get_rng_state()
    a = backend.generate(PROMPTS, n=3, max_new_tokens=6, temperature=1.0, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = backend.generate(PROMPTS, n=3, max_new_tokens=6, temperature=1.0, seed=3)
    c = backend.generate(PROMPTS, n=3, max_new_tokens=6, temperature=1.0, seed=4)
    assert a.completion_ids == b.completion_ids and a.logprobs == b.logprobs
    assert a.completion_ids != c.completion_ids


def test_greedy_is_argmax_and_identical_within_group(model, tok):
    out = HFBackend(model, tok).generate(PROMPTS, n=2, max_new_tokens=5, temperature=0.0)
    for j, p in enumerate(out.prompt_ids):
        assert out.completion_ids[2 * j] == out.completion_ids[2 * j + 1]
        ids = list(p)
        for t in out.completion_ids[2 * j]:  # brute-force greedy decoding
            with torch.no_grad():
                nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            assert nxt == t
            ids.append(nxt)
        ref = _recomputed_logprobs(model, p, out.completion_ids[2 * j], 1.0)
        torch.testing.assert_close(torch.tensor(out.logprobs[2 * j]), ref, rtol=0, atol=1e-5)


def test_eos_is_kept_and_generation_stops(tok):
    # a model whose logits always put (almost) all mass on EOS
    m = build_toy_model(tok, "tiny", seed=1)

    def force_eos(module, inputs, output):
        output = output.clone()
        output[..., tok.eos_token_id] = 1e4
        return output

    handle = m.lm_head.register_forward_hook(force_eos)
    try:
        out = HFBackend(m, tok).generate(PROMPTS, n=2, max_new_tokens=5, temperature=1.0, seed=0)
    finally:
        handle.remove()
    assert out.completion_ids == [[tok.eos_token_id]] * 6
    assert out.finish_reasons == ["stop"] * 6
    assert out.texts == [""] * 6
    assert all(abs(lp[0]) < 1e-6 for lp in out.logprobs)


def test_unwraps_wrapped_model_and_restores_train_mode(model, tok):
    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    wrapped = Wrapper(model)
    model.train()
    a = HFBackend(wrapped, tok).generate(PROMPTS, n=2, max_new_tokens=4, seed=5)
    assert model.training  # restored
    b = HFBackend(model, tok).generate(PROMPTS, n=2, max_new_tokens=4, seed=5)
    assert a.completion_ids == b.completion_ids
    model.eval()


def test_clean_generation_config_ignores_model_defaults(model, tok):
    saved = model.generation_config
    model.generation_config.top_k = 1
    model.generation_config.repetition_penalty = 5.0
    try:
        out = HFBackend(model, tok).generate(PROMPTS, n=3, max_new_tokens=6, temperature=1.0, seed=2)
    finally:
        model.generation_config.top_k = None
        model.generation_config.repetition_penalty = None
    assert model.generation_config is saved
    for i, comp in enumerate(out.completion_ids):
        ref = _recomputed_logprobs(model, out.prompt_ids[i // 3], comp, 1.0)
        torch.testing.assert_close(torch.tensor(out.logprobs[i]), ref, rtol=0, atol=1e-5)


def test_make_backend_and_errors(model, tok):
    assert isinstance(make_backend({"backend": "hf"}, model, tok), HFBackend)
    assert isinstance(make_backend(SimpleNamespace(backend="hf", batch_size=2), model, tok), HFBackend)
    with pytest.raises(ValueError, match="rollout.backend"):
        make_backend({"backend": "sglang"}, model, tok)
    backend = HFBackend(model, tok)
    with pytest.raises(ValueError, match="rollout.top_p"):
        backend.generate(PROMPTS, n=1, max_new_tokens=3, top_p=0.0)
    with pytest.raises(ValueError, match="rollout.group_size"):
        backend.generate(PROMPTS, n=0, max_new_tokens=3)
    with pytest.raises(ValueError, match="expected len"):
        RolloutOutput([[1]], [[2]], [[-1.0]], ["stop"], ["a"], n=2)
    with pytest.raises(ValueError, match="'stop' or 'length'"):
        RolloutOutput([[1]], [[2]], [[-1.0]], ["eos"], ["a"], n=1)


def test_cut_at_eos():
    assert cut_at_eos([5, 6, 2, 0, 0], {2}) == ([5, 6, 2], "stop")
    assert cut_at_eos([5, 6, 7], {2}) == ([5, 6, 7], "length")
    assert cut_at_eos([9, 5, 3], {3, 9}) == ([9], "stop")


# ------------------------------------------------------------------ vLLM: CPU-side conversion logic
# The engine itself needs a GPU; these tests feed our conversion code plain objects shaped like
# vLLM's RequestOutput / CompletionOutput / Logprob.


@dataclass
class _Logprob:
    logprob: float
    rank: int | None = 1
    decoded_token: str | None = None


@dataclass
class _Completion:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, _Logprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class _Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[_Completion] = field(default_factory=list)
    finished: bool = True


def _completion(index, ids, reason, lp_base=-0.5):
    lps = [{t: _Logprob(lp_base - k), t + 100: _Logprob(-9.0)} for k, t in enumerate(ids)]
    return _Completion(index, "", ids, sum(lp_base - k for k in range(len(ids))), lps, reason)


def test_vllm_convert_outputs_groups_orders_and_cuts():
    from salt.rollout.vllm import convert_outputs

    eos = 2
    reqs = [
        _Request("0", None, [1, 5, 6], [_completion(1, [7, 8, eos], "stop"), _completion(0, [9, 9, 9], "length")]),
        _Request("1", None, [1, 4], [_completion(0, [eos], "stop"), _completion(1, [5, 6], "stop")]),
    ]
    out = convert_outputs(reqs, n=2, prompt_ids=None, eos_ids={eos}, decode=lambda ids: "".join(map(str, ids)))
    assert out.prompt_ids == [[1, 5, 6], [1, 4]]
    assert out.completion_ids == [[9, 9, 9], [7, 8, 2], [2], [5, 6]]  # sorted by CompletionOutput.index
    assert out.finish_reasons == ["length", "stop", "stop", "stop"]  # stop string -> still "stop"
    assert out.logprobs == [[-0.5, -1.5, -2.5], [-0.5, -1.5, -2.5], [-0.5], [-0.5, -1.5]]
    assert out.texts == ["999", "782", "2", "56"]
    assert out.group_ids == [0, 0, 1, 1]


def test_vllm_convert_outputs_errors():
    from salt.rollout.vllm import convert_outputs

    dec = str
    bad_n = [_Request("0", None, [1], [_completion(0, [3], "stop")])]
    with pytest.raises(ValueError, match="expected n = 2"):
        convert_outputs(bad_n, 2, None, {2}, dec)
    aborted = [_Request("0", None, [1], [_completion(0, [3], "abort")])]
    with pytest.raises(RuntimeError, match="finish_reason"):
        convert_outputs(aborted, 1, None, {2}, dec)
    no_lp = [_Request("0", None, [1], [_Completion(0, "", [3], None, None, "length")])]
    with pytest.raises(ValueError, match="logprobs=0"):
        convert_outputs(no_lp, 1, None, {2}, dec)
    wrong_tok = [_Request("0", None, [1], [_Completion(0, "", [3], None, [{4: _Logprob(-1.0)}], "length")])]
    with pytest.raises(ValueError, match="sampled token 3"):
        convert_outputs(wrong_tok, 1, None, {2}, dec)
    with pytest.raises(ValueError, match="2 prompts"):
        convert_outputs(bad_n, 1, [[1], [2]], {2}, dec)


def test_vllm_sampling_and_engine_kwargs():
    from salt.rollout.vllm import CPU_MEMORY_SHARE, GPU_MEMORY_SHARE, engine_kwargs, sampling_params_kwargs, vllm_options

    kw = sampling_params_kwargs(8, 16, 1.0, 0.9, seed=10, prompt_index=3)
    assert kw == {"n": 8, "temperature": 1.0, "top_p": 0.9, "top_k": -1, "max_tokens": 16, "logprobs": 0,
                  "skip_special_tokens": True, "seed": 13}
    greedy = sampling_params_kwargs(1, 4, 0.0, 0.5, seed=None)
    assert greedy["temperature"] == 0.0 and greedy["top_p"] == 1.0 and "seed" not in greedy
    opts = vllm_options({"backend": "vllm", "vllm": {"gpu_memory_utilization": 0.3, "max_model_len": 512}})
    ek = engine_kwargs("/models/m", opts, seed=4)
    assert ek["model"] == "/models/m" and ek["gpu_memory_utilization"] == 0.3 and ek["max_model_len"] == 512
    assert ek["enable_sleep_mode"] is True and ek["seed"] == 4 and "worker_extension_cls" not in ek
    assert ek["logprobs_mode"] == "processed_logprobs" and ek["generation_config"] == "vllm"
    assert "max_model_len" not in engine_kwargs("/m", vllm_options({}), 0)
    # the memory share follows the device vLLM runs on (CPU: a share of the system memory) unless set
    assert engine_kwargs("/m", vllm_options({}), 0, "cuda")["gpu_memory_utilization"] == GPU_MEMORY_SHARE == 0.5
    assert engine_kwargs("/m", vllm_options({}), 0, "cpu")["gpu_memory_utilization"] == CPU_MEMORY_SHARE == 0.1
    assert engine_kwargs("/m", opts, 0, "cpu")["gpu_memory_utilization"] == 0.3
    # sleep mode only where the platform has it
    assert engine_kwargs("/m", opts, 0, "cpu", sleep_mode=False)["enable_sleep_mode"] is False
    with pytest.raises(ValueError, match="unknown config key 'rollout.vllm.gpu_mem'; valid keys under 'rollout.vllm'"):
        vllm_options({"vllm": {"gpu_mem": 0.5}})
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        vllm_options({"vllm": {"gpu_memory_utilization": 1.5}})
    with pytest.raises(ValueError, match="sleep_level"):
        vllm_options({"vllm": {"sleep_level": 3}})


def test_vllm_weights_to_sync_and_batching(model):
    from salt.rollout.vllm import batch_weights, weights_to_sync

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    pairs = dict(weights_to_sync(Wrapper(model)))
    ref = model.state_dict()
    assert set(pairs) == {k for k in ref if not k.endswith("inv_freq")}
    assert "lm_head.weight" in pairs and "model.embed_tokens.weight" in pairs
    for name, tensor in pairs.items():
        assert torch.equal(tensor, ref[name])
    half = dict(weights_to_sync(model, dtype=torch.bfloat16))
    assert all(t.dtype == torch.bfloat16 for t in half.values())

    class FakeAccelerator:  # records that the gathering path is used
        def __init__(self):
            self.called = False

        def get_state_dict(self, m):
            self.called = True
            return {"module.x.weight": torch.ones(2), "module.step": torch.tensor(3)}

    acc = FakeAccelerator()
    gathered = list(weights_to_sync(object(), acc))
    assert acc.called
    assert [n for n, _ in gathered] == ["x.weight"]  # prefix stripped, integer buffer skipped
    assert torch.equal(gathered[0][1], torch.ones(2))

    tensors = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 1])]  # float32: 4 bytes each
    batches = list(batch_weights(tensors, max_bytes=80))
    assert [[n for n, _ in b] for b in batches] == [["w0", "w1"], ["w2"], ["w3", "w4"]]
    assert [n for b in batches for n, _ in b] == [n for n, _ in tensors]
    # a chunk never splits a transformer block (vLLM finalises a fused qkv / gate_up from one call)
    named = [("model.embed_tokens.weight", 10), ("model.layers.0.self_attn.q_proj.weight", 10),
             ("model.layers.0.self_attn.k_proj.weight", 10), ("model.layers.0.mlp.up_proj.weight", 5),
             ("model.layers.1.self_attn.q_proj.weight", 10), ("model.layers.10.self_attn.q_proj.weight", 30),
             ("model.norm.weight", 1), ("lm_head.weight", 10)]
    batches = list(batch_weights([(n, torch.zeros(k)) for n, k in named], max_bytes=80))
    assert [[n.split(".weight")[0] for n, _ in b] for b in batches] == [
        ["model.embed_tokens"], ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                 "model.layers.0.mlp.up_proj"],
        ["model.layers.1.self_attn.q_proj"], ["model.layers.10.self_attn.q_proj"], ["model.norm", "lm_head"]]


def test_vllm_backend_fails_clearly_without_vllm(model, tok):
    import importlib.util

    from salt.rollout.vllm import INSTALL_HINT, check_available
    from salt.train.config import from_dict

    assert "pip install .[vllm]" in INSTALL_HINT and "make setup-vllm" in INSTALL_HINT
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the real engine is tested in tests/vllm/")
    with pytest.raises(ImportError, match=r"make setup-vllm"):
        check_available()
    with pytest.raises(ImportError, match=r"pip install \.\[vllm\]"):
        make_backend({"backend": "vllm"}, model, tok)
    cfg = from_dict({"model": {"path": "/nonexistent"}, "rollout": {"backend": "vllm"}})
    with pytest.raises(ValueError, match=r"rollout.backend = vllm needs vLLM .*make setup-vllm.*rollout.backend: hf"):
        cfg.validate(check_paths=False, check_devices=True)
    cfg.validate(check_paths=False, check_devices=False)  # planning hosts do not check


def test_tiny_top_p_samples_the_argmax(model, tok):
    backend = HFBackend(model, tok)
    greedy = backend.generate(PROMPTS, n=1, max_new_tokens=6, temperature=0.0)
    nucleus = backend.generate(PROMPTS, n=3, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=9)
    for j in range(len(PROMPTS)):
        assert nucleus.completion_ids[3 * j : 3 * j + 3] == [greedy.completion_ids[j]] * 3
    # recorded log-probs are the untruncated temperature-scaled ones (not 0 = log 1 of the nucleus)
    assert any(lp < -1e-3 for lps in nucleus.logprobs for lp in lps)
