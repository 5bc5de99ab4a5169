"""score_batch dispatch: toy, math, mcq and code rows, in order, with what was extracted."""

from __future__ import annotations

import time

import pytest

import salt.tasks.verify as verify
from salt.tasks.rewards import RewardResult, extract_code, score_batch
from salt.tasks.toy import generate_problems

MATH = {"id": "m1", "task": "math", "prompt": "half?", "answer": "\\frac{1}{2}"}
MCQ = {"id": "q1", "task": "mcq", "prompt": "pick", "choices": ["a", "b", "c", "d"], "answer": "C"}
CODE = {"id": "c1", "task": "code", "prompt": "write add", "tests": ["assert add(2, 3) == 5"], "entry_point": "add"}
HE = {"id": "h1", "task": "code", "prompt": "complete", "tests": ["def check(c):\n    assert c(2) == 4\ncheck(double)"],
      "entry_point": "double", "meta": {"code_prefix": "def double(x):\n    \"\"\"Twice x.\"\"\"\n"}}


def test_toy_rows_use_the_toy_verifier_without_a_pool(monkeypatch):
    def no_pool(*a, **k):
        raise AssertionError("a math pool was requested for a toy-only batch")

    monkeypatch.setattr(verify, "get_pool", no_pool)
    rows = generate_problems(50, "train", seed=3)
    completions = [r["answer"] if i % 2 == 0 else str(int(r["answer"]) + 1) for i, r in enumerate(rows)]
    t0 = time.perf_counter()
    results = score_batch(rows, completions)
    assert time.perf_counter() - t0 < 0.5
    assert [r.reward for r in results] == [1.0 if i % 2 == 0 else 0.0 for i in range(50)]
    assert results[0].extracted == rows[0]["answer"]
    assert all(isinstance(r, RewardResult) for r in results)


def test_mixed_batch_keeps_order():
    toy = generate_problems(2, "test", seed=0)
    rows = [MATH, toy[0], MCQ, CODE, MATH, MCQ, CODE, toy[1]]
    completions = [
        "so \\boxed{0.5}",
        toy[0]["answer"],
        "Answer: C",
        "Here:\n```python\ndef add(a, b):\n    return a + b\n```",
        "\\boxed{2}",
        "I think (A)",
        "```python\ndef add(a, b):\n    return a - b\n```",
        "nope",
    ]
    results = score_batch(rows, completions, workers=2, timeout_s=5, code_timeout_s=10)
    assert [r.reward for r in results] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert results[0].extracted == "0.5"
    assert results[2].extracted == "C" and results[2].info["rule"] == "marker"
    assert results[3].info["status"] == "passed"
    assert results[6].info["status"] == "failed"


def test_code_body_completion_gets_the_prefix():
    results = score_batch([HE, HE, CODE], ["```python\n    return 2 * x\n```",
                                           "```python\ndef double(x):\n    return x + x\n```",
                                           "no code at all"])
    assert [r.reward for r in results] == [1.0, 1.0, 0.0]
    assert results[2].info["status"] == "no_code"


def test_extract_code_rules():
    text = "```python\nprint('example')\n```\nthen\n```python\ndef add(a, b):\n    return a + b\n```\n```python\nadd(1, 2)\n```"
    assert extract_code(text, "add").startswith("def add")
    assert extract_code(text) == "add(1, 2)"
    assert extract_code("```\nx = 1\n```") == "x = 1"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # truncated
    assert extract_code("no fences") is None


def test_bad_input():
    with pytest.raises(ValueError, match="2 rows but 1 completions"):
        score_batch([MATH, MATH], ["x"])
    with pytest.raises(ValueError, match="unknown task"):
        score_batch([{"id": "z", "task": "poem", "prompt": "p"}], ["x"])
