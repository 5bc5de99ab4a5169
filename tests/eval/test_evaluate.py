"""salt evaluate: the pure summary against brute force, resumption, and the full path on a tiny model."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from salt.eval import evaluate as ev
from salt.eval.evaluate import cli_main, load_done, summarise
from salt.utils import read_jsonl, write_jsonl_atomic


def brute_pass_at_k(correct, k):
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def record(pid, correct, extracted=None, lengths=None, reasons=None):
    n = len(correct)
    return {"id": pid, "correct": correct, "extracted": extracted or [str(i) for i in range(n)],
            "lengths": lengths or [5] * n, "finish_reasons": reasons or ["stop"] * n}


@pytest.mark.parametrize("seed", range(5))
def test_summarise_matches_brute_force(seed):
    rng = random.Random(seed)
    n = 6
    results = [record(f"p{i}", [rng.random() < 0.4 for _ in range(n)]) for i in range(7)]
    s = summarise(results, ks=[1, 2, 4, 16])
    for k in (1, 2, 4):
        expected = sum(brute_pass_at_k(r["correct"], k) for r in results) / len(results)
        assert s[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
    assert "pass@16" not in s and s["ks_skipped"] == [16]
    assert s["avg@n"] == pytest.approx(sum(sum(r["correct"]) / n for r in results) / len(results))
    assert s["n"] == n and s["n_problems"] == 7


def test_summarise_majority_lengths_truncation():
    results = [
        record("a", [False, True, True], extracted=["1", "2", "2"], lengths=[1, 2, 3], reasons=["stop", "length", "stop"]),
        record("b", [True, False, False], extracted=["7", "8", "8"], lengths=[4, 4, 4], reasons=["length"] * 3),
        record("c", [False, False, False], extracted=[None, None, None], lengths=[0, 0, 0]),
    ]
    s = summarise(results, ks=[1])
    assert s["maj@n"] == pytest.approx(1 / 3)  # a: "2" wins (correct); b: "8" wins (wrong); c: no answer
    assert s["mean_response_length"] == pytest.approx(18 / 9)
    assert s["truncation_rate"] == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="no problem results"):
        summarise([], ks=[1])


def test_load_done_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "problems.jsonl"
    good = [record("a", [True]), record("b", [False])]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"id": "c", "corr')
    done = load_done(path)
    assert sorted(done) == ["a", "b"]
    assert path.read_text().endswith("\n") and len(path.read_text().splitlines()) == 2
    path.write_text('{"id": "a"\n' + json.dumps(record("b", [True])) + "\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_done(path)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """A 'training output dir': final/ (tiny random Qwen2 + toy tokenizer) and run.json."""
    from salt import tracking
    from salt.train.toy_model import build_toy_model, train_toy_tokenizer

    root = tmp_path_factory.mktemp("run")
    tok = train_toy_tokenizer()
    model = build_toy_model(tok, size="tiny", seed=0)
    model.save_pretrained(str(root / "final"))
    tok.save_pretrained(str(root / "final"))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    run = tracking.start_run({"uri": uri, "experiment": "eval-test"}, run_name="train", out_dir=root)
    tracking.end_run(run)
    return root, run.run_id, uri


def test_evaluate_end_to_end_and_resume(trained_dir, tmp_path, monkeypatch):
    from salt import tracking
    from salt.tasks.toy import generate_problems

    root, run_id, uri = trained_dir
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = tmp_path / "toy.jsonl"
    write_jsonl_atomic(data, generate_problems(6, "test", seed=0, levels=(1,)))
    out = tmp_path / "eval"
    argv = ["--model", str(root), "--benchmark", "toy", "--data", str(data), "--out", str(out),
            "--n", "3", "--ks", "1,2,8", "--max-new-tokens", "4", "--batch-size", "4", "--seed", "1"]
    assert cli_main(argv) == 0
    problems = read_jsonl(out / "problems.jsonl")
    assert len(problems) == 6 and all(len(p["correct"]) == 3 for p in problems)
    assert all(1 <= length <= 4 for p in problems for length in p["lengths"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["n_problems"] == 6 and metrics["ks_skipped"] == [8]
    for key in ("pass@1", "pass@2", "avg@n", "maj@n", "mean_response_length", "truncation_rate"):
        assert key in metrics
    assert metrics["pass@1"] == pytest.approx(metrics["avg@n"])
    assert metrics["mlflow_run_id"] == run_id  # attached to the training run through run.json
    client = tracking._client(uri)
    logged = client.get_run(run_id).data.metrics
    assert logged["eval/toy/pass_at_1"] == pytest.approx(metrics["pass@1"])
    assert logged["eval/toy/truncation_rate"] == pytest.approx(metrics["truncation_rate"])

    # resume: nothing left to do -> the model is never loaded; same metrics
    def no_model(*a, **k):
        raise AssertionError("the model was loaded although every problem was scored")

    monkeypatch.setattr(ev, "load_model", no_model)
    assert cli_main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["pass@1"] == metrics["pass@1"]
    monkeypatch.undo()

    # a crash after 4 problems (plus a torn line): the rerun scores only the last 2, identically
    lines = (out / "problems.jsonl").read_text().splitlines(keepends=True)
    (out / "problems.jsonl").write_text("".join(lines[:4]) + lines[4][:10])
    assert cli_main(argv) == 0
    resumed = read_jsonl(out / "problems.jsonl")
    assert [p["id"] for p in resumed] == [p["id"] for p in problems]
    assert resumed[4:] != [] and len(resumed) == 6


def test_evaluate_bad_arguments(tmp_path, trained_dir, capsys):
    root, _, _ = trained_dir
    data = tmp_path / "d.jsonl"
    write_jsonl_atomic(data, [{"id": "a", "task": "toy", "prompt": "1+1=", "answer": "2"}])
    assert cli_main(["--model", str(tmp_path / "nope"), "--benchmark", "x", "--data", str(data),
                     "--out", str(tmp_path / "o"), "--no-tracking"]) == 2
    assert "config.json" in capsys.readouterr().err
    assert cli_main(["--model", str(root), "--benchmark", "x", "--data", str(data),
                     "--out", str(tmp_path / "o"), "--n", "0"]) == 2


def test_vllm_route_hands_the_model_dir_to_the_backend(trained_dir, tmp_path, monkeypatch):
    """CPU side of --backend vllm: the engine gets the final/ dir and a weightless stand-in;
    a fake engine answers every toy problem correctly, so pass@1 must be 1."""
    import salt.rollout.vllm as vllm_mod
    from salt.rollout.base import RolloutOutput
    from salt.tasks.toy import generate_problems

    root, _, _ = trained_dir
    rows = generate_problems(3, "test", seed=2, levels=(1,))
    data = tmp_path / "toy.jsonl"
    write_jsonl_atomic(data, rows)
    seen = {}

    class FakeEngine:
        def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0, seed=None):
            answers = {r["prompt"]: r["answer"] for r in rows}
            texts = [answers[p] for p in prompts for _ in range(n)]
            return RolloutOutput(prompt_ids=[[1]] * len(prompts), completion_ids=[[5, 2]] * len(texts),
                                 logprobs=[[0.0, 0.0]] * len(texts), finish_reasons=["stop"] * len(texts),
                                 texts=texts, n=n)

        def close(self):
            seen["closed"] = True

    def from_config(cls, rollout_cfg, model, tokenizer, accelerator=None):
        seen.update(cfg=rollout_cfg, model=model)
        return FakeEngine()

    monkeypatch.setattr(vllm_mod.VLLMBackend, "from_config", classmethod(from_config))
    out = tmp_path / "eval"
    assert cli_main(["--model", str(root), "--benchmark", "toy", "--data", str(data), "--out", str(out),
                     "--n", "2", "--ks", "1,2", "--backend", "vllm", "--no-tracking"]) == 0
    assert seen["cfg"]["vllm"]["model"] == str(root / "final")
    assert seen["model"].name_or_path == str(root / "final") and seen["closed"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pass@1"] == 1.0 and metrics["maj@n"] == 1.0 and metrics["mean_response_length"] == 2.0
