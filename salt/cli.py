"""The ``salt`` command line: one table of sub-commands, each imported only when used.

Each entry maps a sub-command to ``"module:function"``; the function takes the remaining
argument list and returns an exit code (or None for success). Heavy imports (torch,
transformers, mlflow) therefore cost nothing for ``salt --help``.
"""

from __future__ import annotations

import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("salt.tasks.datasets:cli_main", "normalise a dataset to JSONL + manifest"),
    "sft": ("salt.train.sft:cli_main", "warm-up SFT of a (toy) model"),
    "train": ("salt.train.trainer:cli_main", "one RL training run from a run config"),
    "evaluate": ("salt.eval.evaluate:cli_main", "sample, score and report pass@k on a benchmark"),
    "validate-proxy": ("salt.train.proxy:cli_main", "LM-head vs last-block Gram correlation"),
    "aggregate": ("salt.figures.aggregate:cli_main", "collect runs into tables"),
    "figures": ("salt.figures.figures:cli_main", "draw the study's figures"),
    "replicate": ("salt.figures.replication:cli_main", "do the claims' verdicts agree on disjoint seed sets? (+ README block)"),
    "check-config": ("salt.workflow_checks:cli_main", "check workflow config files (YAML, keys, paths) before snakemake"),
    "gpu-check": ("salt.gpucheck.runner:cli_main", "verify the GPU paths on one GPU in 10 minutes (--dry-run: plan)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: salt <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'salt <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from salt import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"salt: unknown command '{name}'. Known commands: {', '.join(COMMANDS)}.", file=sys.stderr)
        return 2
    from salt.utils import InputError, report_input_error, resolve_ref

    func = resolve_ref(COMMANDS[name][0])

    try:
        code = func(rest)
    except InputError as exc:  # a bad config, data file or flag: one line (SALT_DEBUG=1: the traceback)
        return report_input_error(f"salt {name}", exc)
    except OSError as exc:  # a file that is missing or unreadable
        if exc.filename is None:
            raise
        return report_input_error(f"salt {name}", exc)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
