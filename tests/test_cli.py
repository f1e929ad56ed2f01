"""The CLI on bad input: one clear message naming file and line, non-zero exit, no traceback."""

import subprocess
import sys

import pytest
import yaml

from .conftest import QUICKSTART_DATA, write_jsonl

GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "mlxsft.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def recipe_file(tmp_path, model, data, **train):
    settings = {"iters": 2, "batch_size": 1, "max_seq_length": 64, "steps_per_eval": 0}
    settings.update(train)
    path = tmp_path / "recipe.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model": str(model), "data": {"train": str(data)}, "output": str(tmp_path / "run"), "train": settings}
        )
    )
    return path


def assert_clean_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("mlxsft: error: "), result.stderr
    for word in words:
        assert word in result.stderr, f"{word!r} not in: {result.stderr}"


BAD_DATA = {
    "malformed_json": (['{"messages": [}'], ":1:", "JSON"),
    "missing_keys": ([{"question": "a", "answer": "b"}], ":1:", "messages"),
    "no_assistant": ([{"messages": [{"role": "user", "content": "hi"}]}], ":1:", "assistant"),
    "unknown_role": (
        [GOOD_CHAT, {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}],
        ":2:",
        "robot",
    ),
    "empty_file": ([], "", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_one_clear_message(tiny_llama, tmp_path, case):
    rows, where, word = BAD_DATA[case]
    data = tmp_path / "train.jsonl"
    data.write_text("".join((r if isinstance(r, str) else __import__("json").dumps(r)) + "\n" for r in rows))
    result = run_cli("train", str(recipe_file(tmp_path, tiny_llama, data)))
    assert_clean_error(result, f"{data}{where}", word)


def test_non_utf8_file(tiny_llama, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    result = run_cli("train", str(recipe_file(tmp_path, tiny_llama, data)))
    assert_clean_error(result, f"{data}:2:", "UTF-8")


def test_recipe_errors(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD_CHAT] * 4)
    path = recipe_file(tmp_path, tiny_llama, data)
    path.write_text(path.read_text() + "colour: blue\n")
    assert_clean_error(run_cli("train", str(path)), "unknown key 'colour'", str(path))
    ok = recipe_file(tmp_path, tiny_llama, data)
    assert_clean_error(run_cli("train", str(ok), "--set", "train.iters=0"), "train.iters", "at least 1")
    assert_clean_error(run_cli("train", str(ok), "--train.batch_size", "many"), "train.batch_size")
    assert_clean_error(run_cli("train", str(tmp_path / "missing.yaml")), "recipe file not found")


def test_model_errors(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD_CHAT] * 4)
    result = run_cli("train", str(recipe_file(tmp_path, tmp_path / "no-model", data)))
    assert_clean_error(result, "model folder not found")
    empty = tmp_path / "empty-model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    assert_clean_error(run_cli("train", str(recipe_file(tmp_path, empty, data))), "no *.safetensors")


def test_batch_larger_than_data_and_flags(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD_CHAT] * 2)
    result = run_cli("train", str(recipe_file(tmp_path, tiny_llama, data)), "--train.batch_size", "8")
    assert_clean_error(result, "batch_size=8 is larger than the 2 trainable rows")


def test_train_then_resume_finished_run(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [GOOD_CHAT] * 4)
    path = recipe_file(tmp_path, tiny_llama, data)
    result = run_cli("train", str(path), "--set", "train.learning_rate=1e-3")
    assert result.returncode == 0, result.stderr
    assert "Run finished" in result.stdout and "step 2/2" in result.stdout
    assert_clean_error(run_cli("train", "--resume", str(tmp_path / "run")), "already finished")
    assert_clean_error(run_cli("train", str(path)), "already holds a run")


def test_recipe_command_prints_resolved_recipe():
    result = run_cli("recipe", "recipes/quickstart.yaml", "--set", "train.iters=7", cwd=QUICKSTART_DATA.parents[2])
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["train"]["iters"] == 7


def test_in_process_main_never_replaces_the_calling_process(monkeypatch, capsys):
    """Only the `mlxsft` program re-executes itself for OpenBLAS; `main(argv)` from Python (tests,
    scripts) must run in place, or a caller such as pytest would be replaced and end with exit 0."""
    import os

    from mlxsft.cli import main

    def no_exec(*_args):
        raise AssertionError("main(argv) tried to re-execute the calling process")

    monkeypatch.setattr(os, "execve", no_exec)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("MLXSFT_BLAS_REEXEC", raising=False)
    assert main(["recipe", "recipes/quickstart.yaml"]) == 0
    assert "model:" in capsys.readouterr().out
