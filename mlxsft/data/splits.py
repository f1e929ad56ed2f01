"""A recipe's data files and their tokenized splits.

`resolve_data_files` turns `data:` (a folder or explicit files) into the train/valid/test
paths, with an error that says why a path cannot be read; `load_split` tokenizes one of
them with the recipe's masking knobs. The trainer, the judge, the bench and the TUI all
read data through these.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..config import DataConfig, TrainConfig
from ..errors import DataError
from .formats import load_jsonl
from .masking import TokenizedDataset, tokenize_dataset


def resolve_data_files(data: DataConfig) -> dict[str, Path | None]:
    """Paths of the train/valid/test files; `train` may be a folder holding train.jsonl etc."""
    train = Path(data.train)
    if train.is_dir():
        folder = train
        files = {name: folder / f"{name}.jsonl" for name in ("train", "valid", "test")}
        if not files["train"].is_file():
            raise DataError(
                f"{_not_a_file(files['train'])}; a data folder needs a train.jsonl file.", path=str(files["train"])
            )
        for name in ("valid", "test"):  # absent is fine; present but unusable is not
            path = files[name]
            if path.exists() or path.is_symlink():
                if not path.is_file():
                    raise DataError(f"{_not_a_file(path)}; make it a JSONL file or remove it.", path=str(path))
            else:
                files[name] = None
    else:
        files = {"train": train, "valid": None, "test": None}
    for name in ("valid", "test"):
        given = getattr(data, name)
        if given:
            files[name] = Path(given)
    for name, path in files.items():
        if path is not None and not path.is_file():
            raise DataError(f"{_not_a_file(path)}; check data.{name} in the recipe.", path=str(path))
    return files


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be read as a data file, in words."""
    if path.is_dir():
        return "this is a folder, not a JSONL file"
    if path.is_symlink():
        try:
            path.stat()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return f"this is a symlink loop (it points to {os.readlink(path)}, which leads back to itself)"
            return f"this symlink points to {os.readlink(path)}, which does not exist"
    if path.exists():
        return "this is not a regular file"
    return "data file not found"


def load_split(path: Path, tokenizer, data: DataConfig, train: TrainConfig) -> TokenizedDataset:
    examples = load_jsonl(path)
    return tokenize_dataset(
        examples,
        tokenizer,
        mask=data.mask,
        max_seq_length=train.max_seq_length,
        multi_turn=data.multi_turn,
        on_bad_row=data.on_bad_row,
        train_reasoning=data.train_reasoning,
    )


def pad_token_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0
