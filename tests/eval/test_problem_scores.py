"""Per-problem scores of `salt evaluate` (what the results table pairs methods on) against brute force."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from salt.eval.evaluate import load_problem_scores, problem_score, summarise


def brute_pass_at_k(correct, k):
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(4))
def test_problem_score_and_summarise_agree_with_brute_force(seed, tmp_path):
    rng = random.Random(seed)
    recs = [{"id": f"p{i}", "correct": [rng.random() < 0.35 for _ in range(8)], "extracted": ["1"] * 8,
             "lengths": [2] * 8, "finish_reasons": ["stop"] * 8} for i in range(9)]
    for r in recs:
        for k in (1, 2, 4, 8):
            assert problem_score(r["correct"], f"pass@{k}") == pytest.approx(brute_pass_at_k(r["correct"], k), abs=1e-12)
        assert problem_score(r["correct"], "avg@n") == pytest.approx(sum(r["correct"]) / 8)
    summary = summarise(recs, ks=[1, 2, 4, 8])
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    scores = load_problem_scores(path, ["pass@1", "pass@8", "avg@n"])
    for metric in ("pass@1", "pass@8", "avg@n"):  # the benchmark value is the mean of the per-problem scores
        assert sum(scores[metric].values()) / len(recs) == pytest.approx(summary[metric], abs=1e-12)
    assert set(scores["pass@1"]) == {r["id"] for r in recs}


def test_problem_score_errors(tmp_path):
    with pytest.raises(ValueError, match="not pass@<k> or avg@n"):
        problem_score([True], "maj@n")
    with pytest.raises(FileNotFoundError, match="rerun `salt evaluate`"):
        load_problem_scores(tmp_path / "problems.jsonl", ["pass@1"])
