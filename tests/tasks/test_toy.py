"""The toy arithmetic task: splits, determinism, answers, reward exactness."""

from __future__ import annotations

import pytest

from salt.tasks import toy


def test_splits_are_disjoint_and_hash_decided():
    train = toy.generate_problems(900, "train", seed=0)
    test = toy.generate_problems(900, "test", seed=0)
    train_other_seed = toy.generate_problems(900, "train", seed=7)
    rl = toy.generate_problems(600, "rl", seed=0) + toy.generate_problems(600, "rl", seed=3)
    train_exprs = {r["meta"]["expression"] for r in train + train_other_seed}
    test_exprs = {r["meta"]["expression"] for r in test}
    rl_exprs = {r["meta"]["expression"] for r in rl}
    assert not train_exprs & test_exprs and not rl_exprs & test_exprs and not rl_exprs & train_exprs
    assert all(toy.split_of(e) == "test" for e in test_exprs)
    assert all(toy.split_of(e) == "train" for e in train_exprs)
    assert all(toy.split_of(e) == "rl" for e in rl_exprs)
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


def test_level1_split_capacities_cover_the_default_study():
    # brute force: enumerate every level-1 expression and bucket it
    counts = {split: 0 for split in toy.SPLITS}
    for a in range(30):
        for b in range(30):
            for op in "+-":
                counts[toy.split_of(f"{a}{op}{b}")] += 1
    assert counts == {split: toy.level_capacity(1, split) for split in toy.SPLITS}
    # warm-up 1150 problems, RL prompts 256, evaluation 300 (config/config.yaml, sft defaults)
    assert counts["train"] >= 1150 and counts["rl"] >= 256 and counts["test"] >= 300


def test_solvers_are_the_documented_slips():
    assert toy.solver_answer("29-25", "correct") == 4
    assert toy.solver_answer("29-25", "plus_one") == 5
    assert toy.solver_answer("29-25", "swap") == 54
    assert toy.solver_answer("29-25", "sign") == -4
    assert toy.solver_answer("3+7", "swap") == -4
    assert toy.solver_answer("(3+4)*2-5", "swap") == 3  # (3-4)*2+5
    with pytest.raises(ValueError, match="unknown toy solver"):
        toy.solver_answer("1+1", "carry")


def test_demonstrations_follow_the_mixture():
    rows = toy.generate_problems(4, "train", seed=0, levels=(1,))
    demos = toy.demonstrations(rows)
    assert len(demos) == 5 * len(rows)
    for i, row in enumerate(rows):
        group = demos[5 * i: 5 * i + 5]
        assert [d["meta"]["solver"] for d in group] == ["correct", "correct", "plus_one", "swap", "sign"]
        assert all(d["answer"] == row["answer"] and d["prompt"] == row["prompt"] for d in group)
        expr = row["meta"]["expression"]
        assert [toy.format_target(d) for d in group] == [
            str(eval(expr)), str(eval(expr)), str(eval(expr) + 1),  # noqa: S307 - digits/operators only
            str(eval(expr.translate(str.maketrans("+-", "-+")))), str(-eval(expr))]  # noqa: S307
    assert "target" not in rows[0]  # inputs untouched
    only = toy.demonstrations(rows, {"correct": 1, "sign": 0})
    assert [toy.format_target(d) for d in only] == [r["answer"] for r in rows]


def test_bad_mixtures_are_rejected_naming_the_problem():
    with pytest.raises(ValueError, match="unknown solver 'carry'"):
        toy.check_mixture({"correct": 1, "carry": 1})
    with pytest.raises(ValueError, match="integer >= 0"):
        toy.check_mixture({"correct": -1})
    with pytest.raises(ValueError, match="count > 0"):
        toy.check_mixture({"correct": 0})
