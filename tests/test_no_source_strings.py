"""No Python source lives in a string literal in salt/ (a ``-c`` snippet, a script written to a
file): such code is seen by no linter, import or coverage tool. Code that must run in another
interpreter is a module run by path or with ``-m`` (salt/tasks/sandbox_supervisor.py,
salt/tasks/sandbox_harness.py, salt/gpucheck/imports.py)."""

from __future__ import annotations

import ast
from pathlib import Path

SALT = Path(__file__).resolve().parents[1] / "salt"
CODE_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For,
              ast.AsyncFor, ast.While, ast.With, ast.Try, ast.If, ast.Return, ast.Raise, ast.Global)
ALLOWED = {
    # HumanEval's own protocol: its test code (data, run only inside the sandbox) ends by calling
    # check(<entry point>); the row's test is that data plus this call.
    ("tasks/datasets.py", "check("),
}


def _text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "x" for v in node.values)
    return None


def source_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal (docstrings and other bare string statements aside)
    that parses as Python with a statement no message or format string has (an import, a def, a
    loop, ...), or that spans lines and calls something at statement level."""
    tree = ast.parse(source)
    bare = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    found = []
    for node in ast.walk(tree):
        text = _text(node)
        if text is None or id(node) in bare:
            continue
        try:
            parsed = ast.parse(text)
        except (SyntaxError, ValueError):
            continue
        code = any(isinstance(n, CODE_NODES) for n in ast.walk(parsed))
        calls = any(isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) for s in parsed.body)
        if code or ("\n" in text and calls):
            found.append((node.lineno, text))
    return found


def test_the_detector_finds_the_old_patterns():
    old = [
        "_SUPERVISOR = r'''\nimport os, signal\n\ndef _main():\n    pass\n\n_main()\n'''\n",
        "cmd = [python, '-c', f'import {package}']\n",
        "code = 'import os, sys\\n'\ncode += \"open('probe.txt', 'w').write('x')\\nprint('ok', os.getuid())\"\n",
        "test = body + f'\\n\\ncheck({entry_point})\\n'\n",
    ]
    for src in old:
        assert source_strings(src), src
    fine = ["msg = f'algorithm.loss.{k} = {v!r} is invalid; allowed: {names}'\n", "x = 'KEY=VALUE'\n",
            "usage = 'Registry(name, names=...)'\n", "pattern = '\\n\\n'\n", 'def f():\n    """import os"""\n']
    for src in fine:
        assert not source_strings(src), src


def test_no_python_source_in_string_literals_in_salt():
    hits = []
    for path in sorted(SALT.rglob("*.py")):
        rel = path.relative_to(SALT).as_posix()
        for line, text in source_strings(path.read_text(encoding="utf-8")):
            if not any(rel == f and needle in text for f, needle in ALLOWED):
                hits.append(f"salt/{rel}:{line}: {text[:60]!r}")
    assert hits == [], "Python source in a string literal (make it a module run by path or -m):\n" + "\n".join(hits)
