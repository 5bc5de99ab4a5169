"""Golden numbers of the SALT authors' training rewards: run their reward functions on fixed cases.

    python tests/algo/golden/salt_rewards.py --salt /path/to/SALT/reward_score > tests/algo/golden/salt_rewards.json

``--salt`` is a directory holding ``math_reward.py`` and ``mbpp.py`` of Chang-pw/SALT @ 94ac08e
(``verl/verl/utils/reward_score/``; the repository's ``__init__`` dispatches ``math_train``/``aime*`` to
``math_reward.compute_score`` and ``mbpp`` to ``mbpp.compute_score(..., continuous=True)``). Both files
import only math-verify and the standard library, so they are imported as they are. Only the cases
below and the scores their functions return are stored here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

# (reference answer, completion): cases where the numeric fallback decides, and controls where it must not
MATH = [
    ("18", "Adding the three parts gives \\boxed{17}. Checking again, the total is 18."),
    ("1,000", "So the shop sells 1000 apples in total."),
    ("-5", "Moving terms over, x = -5 is the only root, and we are done"),
    ("7", "The answer is \\boxed{7}."),
    ("7", "There are 3 red and 4 blue, so \\boxed{8}."),
    ("2.5", "Half of five is 2.50 exactly, so we stop at 3"),
    ("42", "I could not find the answer."),
    ("\\frac{1}{2}", "The probability is \\boxed{\\frac{2}{4}}"),
    ("12", "First 12 then we add one more: 13"),
    ("3", "We need 3 steps; the final value is x_3"),
]
# MBPP rows: (program completion, tests, setup); partial passes matter
CODE = [
    ("```python\ndef add(a, b):\n    return a + b\n```",
     ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 5"], ""),
    ("```python\ndef sq(x):\n    return x * x if x > 0 else 0\n```",
     ["assert sq(2) == 4", "assert sq(-3) == 9", "assert sq(0) == 0", "assert sq(-1) == 1"], ""),
    ("```python\ndef first(s):\n    return s[0]\n```", ["assert first('ab') == 'a'", "assert first('') == ''"], ""),
    ("```python\ndef f(n):\n    return math.factorial(n)\n```", ["assert f(3) == 6", "assert f(4) == 24"], "import math"),
    ("```python\ndef g(x):\n    return x +\n```", ["assert g(1) == 2", "assert g(2) == 3"], ""),
]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--salt", type=Path, required=True)
    args = ap.parse_args()
    math_reward = load(args.salt / "math_reward.py", "salt_math_reward")
    mbpp = load(args.salt / "mbpp.py", "salt_mbpp")
    math_scores = [math_reward.compute_score(completion, gold)["score"] for gold, completion in MATH]
    code_scores = [mbpp.compute_score(completion, {"test_list": tests, "test_setup_code": setup}, continuous=True)[0]
                   for completion, tests, setup in CODE]
    print(json.dumps({"source": "Chang-pw/SALT @ 94ac08e verl/verl/utils/reward_score/{math_reward,mbpp}.py",
                      "math": [[g, c, s] for (g, c), s in zip(MATH, math_scores)],
                      "code": [[c, t, su, s] for (c, t, su), s in zip(CODE, code_scores)]}, indent=1))


if __name__ == "__main__":
    main()
