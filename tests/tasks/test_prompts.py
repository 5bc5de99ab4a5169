"""Prompt building: chat template when present, plain text otherwise, per-task instructions."""

from __future__ import annotations

import pytest

from salt.tasks.prompts import build_prompt


class ChatTokenizer:
    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"

    def __init__(self):
        self.calls = []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        self.calls.append((messages, tokenize, add_generation_prompt))
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class PlainTokenizer:
    chat_template = None


MATH = {"id": "m1", "task": "math", "prompt": "What is 1+1?", "answer": "2"}
MCQ = {"id": "q1", "task": "mcq", "prompt": "Pick one.", "choices": ["red", "green", "blue"], "answer": "B"}
CODE = {"id": "c1", "task": "code", "prompt": "Write f.", "tests": ["assert f() == 1"]}
TOY = {"id": "t1", "task": "toy", "prompt": "(3+4)*2-5=", "answer": "9"}


def test_chat_template_used_with_system_prompt_and_generation_prompt():
    tok = ChatTokenizer()
    text = build_prompt(MATH, tok, system_prompt="You are careful.")
    messages, tokenize, add_gen = tok.calls[-1]
    assert tokenize is False and add_gen is True
    assert messages[0] == {"role": "system", "content": "You are careful."}
    assert messages[1]["role"] == "user" and "What is 1+1?" in messages[1]["content"]
    assert "\\boxed{}" in messages[1]["content"]
    assert text.endswith("<assistant>")
    build_prompt(MATH, tok)
    assert [m["role"] for m in tok.calls[-1][0]] == ["user"]


def test_mcq_lists_choices_with_letters():
    text = build_prompt(MCQ, PlainTokenizer())
    assert "A) red\nB) green\nC) blue" in text
    assert "A, B, C" in text and "letter" in text


def test_code_asks_for_a_fenced_block():
    assert "```python" in build_prompt(CODE, None)


def test_plain_text_format():
    text = build_prompt(MATH, PlainTokenizer(), system_prompt="SYS")
    assert text.startswith("SYS\n\nWhat is 1+1?")
    assert text.endswith("Answer:")


def test_toy_prompt_is_verbatim_without_chat_template():
    assert build_prompt(TOY, PlainTokenizer()) == "(3+4)*2-5="
    assert build_prompt(TOY, None) == "(3+4)*2-5="
    tok = ChatTokenizer()
    build_prompt(TOY, tok)
    assert tok.calls[-1][0][-1]["content"] == "(3+4)*2-5="


def test_instruction_override():
    text = build_prompt(MATH, PlainTokenizer(), instruction="Just the number.")
    assert "Just the number." in text and "\\boxed" not in text


def test_bad_rows():
    with pytest.raises(ValueError, match="unknown task"):
        build_prompt({"id": "x", "task": "poetry", "prompt": "hi"}, None)
    with pytest.raises(ValueError, match="choices"):
        build_prompt({"id": "x", "task": "mcq", "prompt": "hi", "answer": "A"}, None)
    with pytest.raises(ValueError, match="prompt"):
        build_prompt({"id": "x", "task": "math", "prompt": " ", "answer": "1"}, None)
