"""The Gram-dump format (salt/gram_dump.py): names, round trip, checks, and the search aggregation runs."""

from __future__ import annotations

import numpy as np
import pytest

from salt import gram_dump


def _arrays(B=6, seed=0, zero=False):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, 3))
    adv = np.zeros(B) if zero else rng.normal(size=B)
    return {"gram": X @ X.T, "advantages": adv, "advantages_final": 0.5 * adv,
            "group_ids": np.repeat(np.arange(B // 2), 2)[rng.permutation(B)]}


def test_names():
    assert gram_dump.path_of("run", 7).name == "gram_step_0007.npz"
    assert gram_dump.step_of(gram_dump.path_of("run", 123)) == 123
    with pytest.raises(ValueError, match="not a Gram dump name"):
        gram_dump.step_of("gram_step_x.npz")


def test_round_trip_keeps_every_array_and_dtype(tmp_path):
    a = _arrays()
    rewards = np.arange(6, dtype=float)
    path = gram_dump.write(gram_dump.path_of(tmp_path, 1), **a, rewards=rewards)
    back = gram_dump.read(path)
    assert set(back) == {"gram", "advantages", "advantages_final", "group_ids", "rewards"}
    for key, value in {**a, "rewards": rewards}.items():
        assert np.array_equal(back[key], value), key
    assert back["gram"].dtype == np.float64 and back["group_ids"].dtype == np.int64
    assert [p.name for p in tmp_path.iterdir()] == ["gram_step_0001.npz"]  # no temporary file left
    assert "rewards" not in gram_dump.read(gram_dump.write(tmp_path / "gram_step_0002.npz", **a))


def test_bad_dumps_are_named(tmp_path):
    a = _arrays()
    np.savez(tmp_path / "gram_step_0001.npz", gram=a["gram"], advantages=a["advantages"])
    with pytest.raises(ValueError, match=r"gram_step_0001.npz: the Gram dump has no advantages_final, group_ids"):
        gram_dump.read(tmp_path / "gram_step_0001.npz")
    with pytest.raises(ValueError, match=r"'gram' must be square"):
        gram_dump.write(tmp_path / "x.npz", **{**a, "gram": a["gram"][:, :3]})
    with pytest.raises(ValueError, match=r"'advantages' must have shape \(6,\)"):
        gram_dump.write(tmp_path / "x.npz", **{**a, "advantages": a["advantages"][:5]})
    assert not (tmp_path / "x.npz").exists()


def test_latest_informative_skips_all_zero_batches(tmp_path):
    assert gram_dump.latest_informative(tmp_path) is None
    gram_dump.write(gram_dump.path_of(tmp_path, 2), **_arrays(seed=1))
    gram_dump.write(gram_dump.path_of(tmp_path, 10), **_arrays(seed=2))
    gram_dump.write(gram_dump.path_of(tmp_path, 11), **_arrays(seed=3, zero=True))  # A = 0: nothing to draw
    (tmp_path / "gram_step_notes.npz").write_text("not a dump")  # matches the glob, not the name
    assert gram_dump.latest_informative(tmp_path) == gram_dump.path_of(tmp_path, 10)
