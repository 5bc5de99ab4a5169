"""Toy tokenizer and model: round trip, save/load, determinism, untied head."""

from __future__ import annotations

import pytest
import torch

from salt.tasks.toy import generate_problems
from salt.train.toy_model import build_toy_model, train_toy_tokenizer


@pytest.fixture(scope="module")
def tok():
    return train_toy_tokenizer(None)


def test_tokenizer_round_trip_and_specials(tok):
    rows = generate_problems(50, "test", seed=0)
    for row in rows:
        text = row["prompt"] + row["answer"]
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id
        assert len(ids) == len(text) + 1  # one token per character + BOS
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok(" a\nb", add_special_tokens=False).input_ids == [tok.convert_tokens_to_ids(c) for c in " a\nb"]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.decode([5, tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == tok.decode([5])
    assert tok.unk_token_id in tok("§", add_special_tokens=False).input_ids
    assert not getattr(tok, "chat_template", None)


def test_tokenizer_is_deterministic_and_save_load(tok, tmp_path):
    from transformers import AutoTokenizer

    again = train_toy_tokenizer(tmp_path / "tok")
    assert again.get_vocab() == tok.get_vocab()
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = "(7+6)*5-2=63"
    assert loaded(text).input_ids == tok(text).input_ids
    assert loaded.eos_token_id == tok.eos_token_id and loaded.pad_token_id == tok.pad_token_id


def test_model_deterministic_untied_and_rng_untouched(tok, tmp_path):
    state = torch.random.get_rng_state()
    a = build_toy_model(tok, "tiny", seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_toy_model(tok, "tiny", seed=5)
    c = build_toy_model(tok, "tiny", seed=6)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.config.tie_word_embeddings is False
    assert a.lm_head.weight.data_ptr() != a.model.embed_tokens.weight.data_ptr()
    assert a.config.vocab_size == len(tok)
    ids = torch.tensor([tok("3+4=").input_ids])
    logits = a(ids).logits  # (1, T, V)
    assert logits.shape == (1, ids.shape[1], len(tok)) and logits.dtype == torch.float32

    from transformers import AutoModelForCausalLM

    a.save_pretrained(tmp_path / "m")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    torch.testing.assert_close(loaded(ids).logits, logits, rtol=0, atol=1e-6)


def test_sizes_and_bad_size(tok):
    tiny = build_toy_model(tok, "tiny", seed=0)
    small = build_toy_model(tok, "small", seed=0)
    assert sum(p.numel() for p in small.parameters()) > sum(p.numel() for p in tiny.parameters())
    with pytest.raises(ValueError, match="size"):
        build_toy_model(tok, "huge", seed=0)
