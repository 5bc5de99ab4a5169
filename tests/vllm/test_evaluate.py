"""``salt evaluate --backend vllm`` on the toy benchmark against ``--backend hf``: identical greedy
answers (engine in float32), and at T = 1 the same pass@k within sampling error."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from salt.utils import read_jsonl

N_PROBLEMS = 120


@pytest.fixture(scope="module")
def toy_bench(tmp_path_factory) -> Path:
    from salt.cli import main

    out = tmp_path_factory.mktemp("toy_test")
    assert main(["prepare-data", "toy_test", "--out", str(out), "--seed", "0", "--set", f"n={N_PROBLEMS}",
                 "--set", "levels=[1]"]) == 0
    return out / "data.jsonl"


def run_eval(model: Path, data: Path, out: Path, backend: str, n: int, temperature: float) -> list[dict]:
    from salt.cli import main

    args = ["evaluate", "--model", str(model), "--benchmark", "toy_test", "--data", str(data), "--out", str(out),
            "--n", str(n), "--temperature", str(temperature), "--max-new-tokens", "6", "--ks", "1,4,8",
            "--batch-size", "64", "--backend", backend, "--vllm-dtype", "float32", "--seed", "0", "--no-tracking"]
    assert main(args) == 0
    return read_jsonl(out / "problems.jsonl")


def test_greedy_identical_and_sampled_pass_at_k_within_error(warm_model, toy_bench, tmp_path):
    hf = run_eval(warm_model, toy_bench, tmp_path / "hf_greedy", "hf", 1, 0.0)
    vl = run_eval(warm_model, toy_bench, tmp_path / "vllm_greedy", "vllm", 1, 0.0)
    assert [r["id"] for r in hf] == [r["id"] for r in vl] and len(hf) == N_PROBLEMS
    same = sum(a["completions"] == b["completions"] for a, b in zip(hf, vl))
    print(f"greedy: {same} of {len(hf)} completions identical; pass@1 hf "
          f"{sum(r['correct'][0] for r in hf) / len(hf):.3f} vllm {sum(r['correct'][0] for r in vl) / len(vl):.3f}")
    assert same == len(hf), [(a["completions"], b["completions"]) for a, b in zip(hf, vl) if a["completions"] != b["completions"]][:5]

    n = 8
    hs = run_eval(warm_model, toy_bench, tmp_path / "hf_t1", "hf", n, 1.0)
    vs = run_eval(warm_model, toy_bench, tmp_path / "vllm_t1", "vllm", n, 1.0)
    from salt.eval.metrics import pass_at_k

    # per problem, the unbiased pass@k of its n samples, paired by problem: for every k the mean
    # difference vLLM - HF is within 3 standard errors of the paired differences
    lines = []
    for k in (1, 4, 8):
        d = [pass_at_k(n, sum(a["correct"]), k) - pass_at_k(n, sum(b["correct"]), k) for a, b in zip(vs, hs)]
        mean = sum(d) / len(d)
        se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
        avg_h = sum(pass_at_k(n, sum(b["correct"]), k) for b in hs) / len(hs)
        lines.append(f"pass@{k} hf {avg_h:.3f} vllm {avg_h + mean:.3f} (paired diff {mean:+.4f}, SE {se:.4f})")
        assert abs(mean) <= 3 * se, (k, mean, se)
    print(f"T=1, n={n}: " + "; ".join(lines))
