"""Prompt text for a normalised row: chat template when the tokenizer has one, plain text otherwise.

The user turn is the row's problem followed by the task's instruction:

* ``math``: reason, then put the final answer in ``\\boxed{}`` (what :mod:`salt.tasks.verify` reads);
* ``mcq``:  the choices listed as ``A) ...`` lines, answer with the letter (what :mod:`salt.tasks.mcq`
  reads);
* ``code``: answer with one fenced ```` ```python ```` block (what :mod:`salt.tasks.rewards` extracts);
* ``toy``:  the toy format owns its instruction, so ``row["prompt"]`` is used verbatim (no chat
  template: the exact string; chat template: the string as the user turn).

Without a chat template the plain-text format is::

    {system prompt}\\n\\n          (only when one is given)
    {problem}\\n\\n{instruction}\\n\\nAnswer:
"""

from __future__ import annotations

from typing import Any, Mapping

MATH_INSTRUCTION = "Solve the problem step by step. Put your final answer within \\boxed{}."
MCQ_INSTRUCTION = (
    "Think step by step, then answer with the letter of the correct choice only, "
    "in the form 'Answer: X' where X is one of {letters}."
)
CODE_INSTRUCTION = (
    "Write a complete, self-contained Python solution. Reply with a single fenced ```python code "
    "block containing the code (imports included)."
)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

TASKS = ("toy", "math", "mcq", "code")


def default_instruction(row: Mapping[str, Any]) -> str:
    """The task's default instruction (empty for ``toy``, whose prompt carries its own)."""
    task = _task(row)
    if task == "math":
        return MATH_INSTRUCTION
    if task == "mcq":
        n = len(_choices(row))
        return MCQ_INSTRUCTION.format(letters=", ".join(LETTERS[:n]))
    if task == "code":
        return CODE_INSTRUCTION
    return ""


def format_choices(choices: list[str]) -> str:
    """``["x", "y"]`` -> ``"A) x\\nB) y"``."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"at most {len(LETTERS)} choices are supported, got {len(choices)}")
    return "\n".join(f"{LETTERS[i]}) {str(c).strip()}" for i, c in enumerate(choices))


def user_message(row: Mapping[str, Any], instruction: str | None = None) -> str:
    """The user turn: problem text (+ listed choices for mcq) + instruction."""
    task = _task(row)
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"row {row.get('id')!r}: 'prompt' must be a non-empty string")
    if task == "toy" and instruction is None:
        return prompt
    body = prompt.strip()
    if task == "mcq":
        body = f"{body}\n\n{format_choices(_choices(row))}"
    instr = default_instruction(row) if instruction is None else instruction
    return f"{body}\n\n{instr}" if instr else body


def build_prompt(
    row: Mapping[str, Any],
    tokenizer: Any = None,
    system_prompt: str | None = None,
    instruction: str | None = None,
) -> str:
    """Prompt string for ``row`` (schema in ARCHITECTURE.md), ready for ``tokenizer(...)``.

    Args:
        row: a normalised row with ``task`` and ``prompt`` (``choices`` for mcq).
        tokenizer: a Hugging Face tokenizer or None. When ``tokenizer.chat_template`` is set, the
            messages are rendered with ``apply_chat_template(..., add_generation_prompt=True)``.
        system_prompt: optional system message (omitted when None or empty).
        instruction: overrides the task's default instruction (``""`` drops it).
    """
    chat_template = getattr(tokenizer, "chat_template", None) if tokenizer is not None else None
    if not chat_template:
        if _task(row) == "toy" and instruction is None and not system_prompt:
            return row["prompt"]
        user = user_message(row, instruction)
        head = f"{system_prompt.strip()}\n\n" if system_prompt else ""
        if _task(row) == "toy" and instruction is None:
            return head + user
        return f"{head}{user}\n\nAnswer:"
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": user_message(row, instruction)})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):
        raise TypeError(
            f"tokenizer.apply_chat_template returned {type(text).__name__}, expected str "
            "(tokenize=False); check the tokenizer's chat template"
        )
    return text


def _task(row: Mapping[str, Any]) -> str:
    task = row.get("task")
    if task not in TASKS:
        raise ValueError(f"row {row.get('id')!r}: unknown task {task!r}; expected one of {TASKS}")
    return task


def _choices(row: Mapping[str, Any]) -> list[str]:
    choices = row.get("choices")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2:
        raise ValueError(f"row {row.get('id')!r}: an mcq row needs a 'choices' list with >= 2 entries")
    return list(choices)
