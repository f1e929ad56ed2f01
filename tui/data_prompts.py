"""Prompts from a run's own data: the fixed sample prompts and the data's system prompt.

Read with the core's data loaders (`resolve_data_files`, `load_jsonl`), validation set
first, so the Live run samples and the Chat screen ask what the fine-tune was trained
to answer, under the system prompt it was trained with.
"""

from __future__ import annotations

from pathlib import Path

from mlxsft.rundir import RunDir


def _examples(run_dir: Path) -> list:
    from mlxsft.data.formats import load_jsonl
    from mlxsft.data.splits import resolve_data_files
    from mlxsft.errors import MlxsftError

    try:
        files = resolve_data_files(RunDir(run_dir).load_recipe().data)
        return load_jsonl(files["valid"] or files["train"])
    except (MlxsftError, OSError):
        return []


def sample_prompts(run_dir: Path, n: int = 3) -> list[str]:
    """Fixed prompts for samples: the first user turns (or prompts) of the validation set."""
    prompts = []
    for ex in _examples(run_dir):
        if ex.kind == "chat":
            users = [m["content"] for m in ex.messages if m["role"] == "user"]
            if users:
                prompts.append(users[0])
        elif ex.kind == "completion":
            prompts.append(ex.prompt)
        if len(prompts) == n:
            break
    return prompts


def system_prompt(run_dir: Path) -> str | None:
    """The system message of the data's first chat row that has one (None when the data has none)."""
    for ex in _examples(run_dir):
        if ex.kind == "chat":
            for message in ex.messages:
                if message["role"] == "system" and message.get("content"):
                    return message["content"]
    return None
