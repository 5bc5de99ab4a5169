"""The toy arithmetic task: splits, determinism, answers, reward exactness."""

from __future__ import annotations

import pytest

from salt.tasks import toy


def test_splits_are_disjoint_and_hash_decided():
    train = toy.generate_problems(900, "train", seed=0)
    test = toy.generate_problems(900, "test", seed=0)
    train_other_seed = toy.generate_problems(900, "train", seed=7)
    train_exprs = {r["meta"]["expression"] for r in train + train_other_seed}
    test_exprs = {r["meta"]["expression"] for r in test}
    assert not train_exprs & test_exprs
    assert all(toy.split_of(e) == "test" for e in test_exprs)
    assert all(toy.split_of(e) == "train" for e in train_exprs)
    # unique within one call
    assert len({r["meta"]["expression"] for r in train}) == len(train)


def test_deterministic_for_a_seed_and_seed_matters():
    a = toy.generate_problems(60, "train", seed=3)
    b = toy.generate_problems(60, "train", seed=3)
    c = toy.generate_problems(60, "train", seed=4)
    assert a == b
    assert [r["prompt"] for r in a] != [r["prompt"] for r in c]


def test_rows_follow_schema_and_answers_are_correct():
    rows = toy.generate_problems(30, "test", seed=1, levels=(1, 2, 3))
    assert [r["meta"]["difficulty"] for r in rows[:6]] == [1, 2, 3, 1, 2, 3]
    for i, row in enumerate(rows):
        assert row["id"] == f"toy-test-{i:06d}"
        assert row["task"] == "toy"
        expr = row["meta"]["expression"]
        assert row["prompt"] == expr + "="
        # brute force: Python's own arithmetic on the same expression
        assert int(row["answer"]) == eval(expr)  # noqa: S307 - test data made of digits/operators
        assert toy.format_target(row) == row["answer"]


def test_levels_select_templates():
    rows = toy.generate_problems(40, "train", seed=0, levels=(3,))
    assert all(r["meta"]["difficulty"] == 3 for r in rows)
    assert all(r["prompt"].count("*") >= 1 and len(r["meta"]["expression"]) >= 7 for r in rows)
    rows1 = toy.generate_problems(40, "train", seed=0, levels=(1,))
    assert all(r["meta"]["expression"].count("+") + r["meta"]["expression"].count("-") == 1 for r in rows1)


def test_reward_is_exact_match_of_first_line():
    assert toy.toy_reward("24", "24") == 1.0
    assert toy.toy_reward("24", " 24 ") == 1.0
    assert toy.toy_reward("24", "24\nwhatever follows") == 1.0
    assert toy.toy_reward(-7, "-7") == 1.0
    assert toy.toy_reward("24", "240") == 0.0
    assert toy.toy_reward("24", "2") == 0.0
    assert toy.toy_reward("24", "24+1") == 0.0
    assert toy.toy_reward("24", "") == 0.0
    assert toy.toy_reward("24", "024") == 0.0
    assert toy.extract_answer("  \n24") is None


def test_max_problems_is_the_exact_limit():
    for split, levels in (("test", (1, 2, 3)), ("test", (3, 1)), ("train", (2,))):
        n = toy.max_problems(split, levels)
        assert len(toy.generate_problems(n, split, seed=0, levels=levels)) == n
        with pytest.raises(ValueError, match="distinct"):
            toy.generate_problems(n + 1, split, seed=0, levels=levels)


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match="split"):
        toy.generate_problems(3, "dev", seed=0)
    with pytest.raises(ValueError, match="level"):
        toy.generate_problems(3, "train", seed=0, levels=(4,))
    with pytest.raises(ValueError, match="distinct test problems"):
        toy.generate_problems(3 * 400, "test", seed=0, levels=(1,))
    with pytest.raises(ValueError, match="not a toy expression"):
        toy.evaluate_expression("__import__('os')")
