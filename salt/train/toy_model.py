"""The embedded toy model: a character tokenizer trained in-process and a small random Qwen2.

Nothing is downloaded. The tokenizer is a word-level model over single characters, trained with
the ``tokenizers`` library on a corpus (by default: every character the toy task uses plus toy
problems), wrapped in a :class:`~transformers.PreTrainedTokenizerFast` so ``save_pretrained`` /
``AutoTokenizer.from_pretrained`` work. Special tokens: ``<pad>`` (id 0), ``<s>`` (BOS, id 1),
``</s>`` (EOS, id 2), ``<unk>`` (id 3). Encoding with ``add_special_tokens=True`` (the default)
prepends BOS, never appends EOS; decoding concatenates the characters. There is no chat template,
so :func:`salt.tasks.prompts.build_prompt` uses a toy row's prompt verbatim.
"""

from __future__ import annotations

import os
from typing import Iterable

import torch

from salt.tasks.toy import format_target, generate_problems

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
# Every character the toy task can produce, plus a little headroom (space, newline, letters for
# free text); a corpus may add more characters.
BASE_ALPHABET = "0123456789+-*/()=., \n" + "abcdefghijklmnopqrstuvwxyz"

MODEL_SIZES: dict[str, dict[str, int]] = {
    # hidden, layers, heads, kv heads, mlp width
    "tiny": {"hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 256},
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
              "num_key_value_heads": 2, "intermediate_size": 384},
}


def _default_corpus() -> list[str]:
    rows = generate_problems(300, "train", seed=0)
    return [BASE_ALPHABET] + [r["prompt"] + format_target(r) for r in rows]


def train_toy_tokenizer(out_dir: str | os.PathLike | None = None, corpus: Iterable[str] | None = None):
    """Train the character tokenizer; save it to ``out_dir`` when given.

    Args:
        out_dir: folder for ``save_pretrained`` (created), or None to keep it in memory.
        corpus: texts to learn the character vocabulary from; None uses the toy task's alphabet and
            300 toy training problems. The vocabulary order is deterministic (specials first, then
            characters by frequency, ties broken by character).
    Returns:
        A ``PreTrainedTokenizerFast`` (right padding by default; rollout backends pad left).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(_default_corpus() if corpus is None else corpus)
    if not texts:
        raise ValueError("train_toy_tokenizer: the corpus is empty; pass corpus=None for the default")
    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token", "unk_token")]
    tok = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    # one token per character, whitespace included
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(vocab_size=100_000, min_frequency=1, special_tokens=specials,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="right", **SPECIAL_TOKENS)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        hf_tok.save_pretrained(str(out_dir))
    return hf_tok


def toy_config(tokenizer, size: str = "tiny", max_position_embeddings: int = 128):
    """The ``Qwen2Config`` of a toy model sized for ``tokenizer`` (untied LM head)."""
    from transformers import Qwen2Config

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown toy model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
    dims = MODEL_SIZES[size]
    return Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        rms_norm_eps=1e-6,
        rope_theta=10_000.0,
        use_cache=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dims,
    )


def build_toy_model(tokenizer, size: str = "tiny", seed: int = 0, max_position_embeddings: int = 128):
    """A randomly initialised ``Qwen2ForCausalLM`` (float32), identical for the same seed.

    The global torch RNG is left untouched (initialisation runs under ``torch.random.fork_rng``).
    """
    from transformers import GenerationConfig, Qwen2ForCausalLM

    config = toy_config(tokenizer, size, max_position_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model.float()
