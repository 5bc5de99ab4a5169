"""How far a numeric setting moves the pinned runs of ``tests/train/test_pinned_run.py``.

Each setting runs the six pinned cases (tiny policy built under the same setting, like on another
machine) in a fresh subprocess with the given environment variables (and optionally
``torch.set_flush_denormal(True)`` / ``torch.backends.mkldnn.enabled = False`` set before anything
runs), then prints, per metric, the largest absolute and relative difference from the golden file
and from the baseline run of this machine, and whether the test's tolerances accept it.

    python benchmarks/pinned_drift.py                       # the settings below, one table each
    python benchmarks/pinned_drift.py --setting ATEN_CPU_CAPABILITY=default
    python benchmarks/pinned_drift.py --json out.json       # also keep every run's numbers

A setting is ``VAR=VALUE[,VAR=VALUE...]``; the pseudo variables ``flush_denormal=1`` and
``mkldnn=0`` switch the torch flags of the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = [
    "",  # baseline: this machine as is
    "OMP_NUM_THREADS=1,MKL_NUM_THREADS=1",
    "ATEN_CPU_CAPABILITY=default",
    "ATEN_CPU_CAPABILITY=avx2",
    "ONEDNN_MAX_CPU_ISA=AVX2,DNNL_MAX_CPU_ISA=AVX2",
    "MKL_ENABLE_INSTRUCTIONS=AVX2",
    "MKL_CBWR=COMPATIBLE",
    "mkldnn=0",
    "flush_denormal=1",
]

_CHILD = """
import json, sys, os
import torch
if os.environ.get("_DRIFT_FLUSH") == "1":
    torch.set_flush_denormal(True)
if os.environ.get("_DRIFT_MKLDNN") == "0":
    torch.backends.mkldnn.enabled = False
from pathlib import Path
from tests.train.test_pinned_run import CASES, run_case
from tests.train.test_trainer import build_policy
tmp = Path(sys.argv[1])
policy = build_policy(tmp / "policy")
out = {case: run_case(policy, case, tmp / case) for case in sorted(CASES)}
Path(sys.argv[2]).write_text(json.dumps(out))
"""


def parse_setting(text: str) -> dict[str, str]:
    env = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise SystemExit(f"setting {part!r}: expected VAR=VALUE")
        env[{"flush_denormal": "_DRIFT_FLUSH", "mkldnn": "_DRIFT_MKLDNN"}.get(key, key)] = value
    return env


def run_setting(setting: str) -> dict:
    """The pinned cases' numbers under ``setting`` (fresh interpreter, fresh tiny policy)."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "out.json"
        env = {**os.environ, **parse_setting(setting), "PYTHONPATH": str(ROOT),
               "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
        subprocess.run([sys.executable, "-c", _CHILD, tmp, str(result)], env=env, cwd=ROOT, check=True)
        return json.loads(result.read_text())


def diffs(got: dict, want: dict) -> dict[str, tuple[float, float]]:
    """metric -> (max |got - want|, max relative difference) over cases and steps; 'weights/*' too."""
    from tests.train.test_pinned_run import numeric_pairs

    out: dict[str, tuple[float, float]] = {}
    pairs = [p for case in want for p in numeric_pairs(got[case], want[case])]
    for name, g, w in pairs:
        d = abs(g - w)
        rel = d / max(abs(w), 1e-300) if d else 0.0
        a, r = out.get(name, (0.0, 0.0))
        out[name] = (max(a, d), max(r, rel))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", action="append", help="VAR=VALUE[,VAR=VALUE]; repeatable; default: a fixed list")
    ap.add_argument("--json", type=Path, help="write every run's numbers here")
    args = ap.parse_args()
    from tests.train.test_pinned_run import GOLDEN, mismatches

    golden = json.loads(GOLDEN.read_text())
    settings = args.setting or SETTINGS
    runs = {s: run_setting(s) for s in ([""] + [s for s in settings if s])}
    base = runs[""]
    for setting, got in runs.items():
        vs_golden, vs_base = diffs(got, golden), diffs(got, base)
        bad = [m for case in golden for m in mismatches(got[case], golden[case])]
        moved = sorted(k for k, (a, _) in vs_base.items() if a > 0)
        print(f"\n## setting: {setting or '(this machine as is)'}")
        print(f"metrics moved vs this machine's baseline: {len(moved)}; tolerance violations vs golden: {len(bad)}")
        for b in bad[:10]:
            print("  VIOLATION", b)
        print("| metric | max abs vs golden | max rel vs golden | max abs vs baseline | max rel vs baseline |")
        print("|---|---|---|---|---|")
        for k in sorted(vs_golden):
            (ag, rg), (ab, rb) = vs_golden[k], vs_base[k]
            if ag or ab:
                print(f"| {k} | {ag:.3g} | {rg:.3g} | {ab:.3g} | {rb:.3g} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
