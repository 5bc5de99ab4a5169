"""Math answer equivalence (a table), extraction, and bounded time on adversarial input."""

from __future__ import annotations

import threading
import time

import pytest

from salt.tasks.verify import (
    MathVerifierPool,
    extract_boxed,
    extract_math_answer,
    math_equal,
    math_equal_many,
)

EQUIVALENT = [
    ("0.5", "\\boxed{\\frac{1}{2}}"),
    ("\\frac{1}{2}", "The answer is \\boxed{0.5}."),
    ("\\frac{1}{2}", "\\boxed{1/2}"),
    ("\\frac12", "\\boxed{\\dfrac{1}{2}}"),
    ("33", "\\boxed{033}"),
    ("033", "so the final answer is \\boxed{33}"),
    ("8", "\\boxed{2^{3}}"),
    ("2^{3}", "8"),
    ("\\sqrt{2}/2", "\\boxed{\\frac{\\sqrt{2}}{2}}"),
    ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}"),
    ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}"),
    ("(0,1]", "\\boxed{(0, 1]}"),
    ("-2, 2", "\\boxed{2, -2}"),
    ("1024", "We get $2^{10} = 1024$, so \\boxed{1024}"),
    ("\\frac{3}{4}", "first \\boxed{1} then, correcting myself, \\boxed{\\frac{3}{4}}"),
    ("24", "24"),
    ("\\pi", "\\boxed{\\pi}"),
]

DIFFERENT = [
    ("33", "\\boxed{34}"),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
    ("8", "\\boxed{2^{4}}"),
    ("\\{1,2\\}", "\\boxed{\\{1, 3\\}}"),
    ("(0,1]", "\\boxed{[0, 1]}"),
    ("3", ""),
    ("3", "no answer here at all"),
    ("\\frac{3}{4}", "\\boxed{\\frac{3}{4}} no wait, \\boxed{1}"),
]


@pytest.mark.parametrize("gold, pred", EQUIVALENT)
def test_equivalent_forms(gold, pred):
    assert math_equal(gold, pred) is True


@pytest.mark.parametrize("gold, pred", DIFFERENT)
def test_different_answers(gold, pred):
    assert math_equal(gold, pred) is False


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}} and then \\boxed{x^{2}}", "x^{2}"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5$", "5"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("no box", None),
        ("\\boxed{unclosed", None),
        ("\\boxed{}", None),
        ("", None),
    ],
)
def test_extract_math_answer(text, expected):
    assert extract_math_answer(text) == expected


def test_extract_boxed_skips_a_malformed_last_box():
    assert extract_boxed("\\boxed{12} then \\boxed{broken") == "12"


def test_adversarial_inputs_return_false_in_bounded_time():
    nested = "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}"
    cases = [
        ("8", "\\boxed{9^{9^{9^{9}}}}"),
        ("8", "\\boxed{9^9^9^9}"),
        ("1", "x" * 5_000_000),
        ("1", "\\boxed{" * 200_000),
        ("1", nested),
        ("1", "\\boxed{" + "9" * 1_000_000 + "}"),
        ("1", ("\\frac{" * 30) + "1" + "}{2}" * 30),
    ]
    with MathVerifierPool(workers=2) as pool:
        pool.compare_many([("1", "\\boxed{1}")] * 2, timeout_s=5)  # warm both workers
        t0 = time.monotonic()
        results = pool.compare_many(cases, timeout_s=1.0)
        elapsed = time.monotonic() - t0
        assert [r.equal for r in results] == [False] * len(cases)
        assert elapsed < 8.0
        assert results[0].status == "timeout"
        assert pool.n_killed >= 1
        # the pool still works after killing workers, and the replacements are alive
        again = pool.compare_many([("33", "\\boxed{033}"), ("2", "\\boxed{3}")], timeout_s=5)
        assert [r.equal for r in again] == [True, False]
        pids = pool.worker_pids()
    assert len(pids) == 2


def test_batch_results_keep_order_and_record_extraction():
    pairs = [(str(i), f"\\boxed{{{i if i % 3 else i + 1}}}") for i in range(12)]
    results = math_equal_many(pairs, workers=2, timeout_s=5)
    assert [r.equal for r in results] == [bool(i % 3) for i in range(12)]
    assert results[1].extracted == "1" and results[0].extracted == "1"


def test_math_equal_is_safe_from_threads():
    out = {}

    def work(i):
        out[i] = math_equal(str(i), f"\\boxed{{{i}}}") and not math_equal(str(i), f"\\boxed{{{i + 1}}}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert out == {i: True for i in range(6)}


def test_bad_gold_is_an_error():
    with pytest.raises(ValueError, match="gold"):
        math_equal("", "\\boxed{1}")
    with MathVerifierPool(1) as pool, pytest.raises(ValueError, match="timeout_s"):
        pool.compare_many([("1", "1")], timeout_s=0)
