import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from salt.eval.metrics import avg_at_k, maj_at_k, majority_answer, pass_at_k


def brute_pass_at_k(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_enumeration(nck):
    n, c, k = nck
    assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edge_cases_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    # large n: no overflow, equals the binomial formula
    want = 1 - math.comb(1024 - 100, 256) / math.comb(1024, 256)
    assert pass_at_k(1024, 100, 256) == pytest.approx(want, rel=1e-10)


def test_numpy_integers_accepted():
    import numpy as np

    assert pass_at_k(np.int64(10), np.int64(3), np.int64(1)) == pytest.approx(0.3)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="k=5 must be in \\[1, n=4\\]"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c \\(correct samples\\)"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="must be an integer"):
        pass_at_k(4.0, 1, 1)


def test_avg_at_k():
    assert avg_at_k([True, False, True, True]) == 0.75
    assert avg_at_k([0.5, 1.0]) == 0.75
    with pytest.raises(ValueError, match="at least one"):
        avg_at_k([])


def test_maj_at_k_vote_and_ties():
    assert maj_at_k(["4", "5", "4", None], [True, False, True, False]) == 1.0
    assert maj_at_k(["5", "4", "5", "4 "], [False, True, False, True]) == 0.0  # tie -> first seen ("5")
    assert majority_answer(["5", "4", "5", "4"]) == 0
    assert maj_at_k([None, None, "7"], [False, False, True]) == 1.0  # None never wins
    assert maj_at_k([None, None], [True, True]) == 0.0
    assert majority_answer([None]) is None
    with pytest.raises(ValueError, match="2 answers but 1"):
        maj_at_k(["a", "b"], [True])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["1", "2", "3", None]), min_size=1, max_size=9))
def test_maj_winner_has_max_count(answers):
    idx = majority_answer(answers)
    present = [a for a in answers if a is not None]
    if not present:
        assert idx is None
        return
    best = max(present.count(a) for a in set(present))
    assert answers[idx] is not None and present.count(answers[idx]) == best
    assert idx == min(i for i, a in enumerate(answers) if a is not None and present.count(a) == best)
