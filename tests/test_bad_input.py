# ruff: noqa: E501 - the corpus is a table: one case, one line, however long
"""Adversarial corpus: bad input and faults across every command, one table row per case.

Every case starts from the same scene in a fresh folder (a tiny model, good data, a
recipe, a trained run, an mlx export, a PEFT export, a model store), breaks one thing,
runs one `mlxsft` command in-process, and checks four things:
- the exit code;
- no traceback (the command returns instead of raising, and prints none);
- the message names the location (file:line, the flag, or the folder) and the words given;
- every file that was there before is unchanged, and a failed command left nothing new,
  except the paths a case names in `changes` (or must remove, in `gone`).

Adding a case is one line in CASES. Placeholders in the command and the expected words:
{w} the scene folder, {model} the model, {data} the data folder, {recipe} the recipe,
{run} the trained run, {exp} the mlx export, {peft} the PEFT export, {store} the store.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import pytest

GOOD = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello friend"}]}
RECIPE = """\
model: {model}
data: {w}/data
output: {w}/new-run
lora:
  rank: 4
  layers: all
train:
  iters: 2
  batch_size: 1
  max_seq_length: 64
  steps_per_eval: 0
  steps_per_report: 1
"""  # the line numbers matter: cases assert them


# ---------------------------------------------------------------- scene changes (prep)


def fill(text: str, ctx: dict[str, str]) -> str:
    for key, value in ctx.items():
        text = text.replace("{" + key + "}", value)
    return text


def write(rel: str, text: str | bytes):
    def apply(w: Path, ctx):
        path = w / fill(rel, ctx)
        if path.is_symlink() or path.is_file():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else fill(text, ctx).encode())

    return apply


def rows(rel: str, *items):
    return write(rel, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in items))


def edit(rel: str, old: str, new: str):
    def apply(w: Path, ctx):
        path, old_text = w / rel, fill(old, ctx)
        text = path.read_text()
        assert old_text in text, f"{old_text!r} not in {rel}"
        path.write_text(text.replace(old_text, fill(new, ctx)))

    return apply


def append(rel: str, text: str):
    def apply(w: Path, ctx):
        with open(w / rel, "a") as f:
            f.write(fill(text, ctx))

    return apply


def rm(rel: str):
    def apply(w: Path, ctx):
        for path in w.glob(rel):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    return apply


def mkdir(rel: str, with_file: bool = True):
    def apply(w: Path, ctx):
        path = w / fill(rel, ctx)
        if path.is_file() or path.is_symlink():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        if with_file:
            (path / "keep.txt").write_text("mine\n")

    return apply


def link(rel: str, target: str):
    def apply(w: Path, ctx):
        path = w / rel
        if path.is_file() or path.is_symlink():
            path.unlink()
        path.symlink_to(fill(target, ctx))

    return apply


def meta(**fields):
    """Set fields of the run's run.json (e.g. status="stopped", so it may be resumed)."""

    def apply(w: Path, ctx):
        path = w / "run" / "run.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | fields))

    return apply


def stale(rel: str):
    """A staging folder of a writer that was killed (its pid is dead)."""

    def apply(w: Path, ctx):
        dead = subprocess.Popen(["true"])
        dead.wait()
        path = w / fill(rel, ctx).replace("PID", str(dead.pid))
        path.mkdir(parents=True)
        (path / "adapters.safetensors").write_bytes(b"\0" * 4096)

    return apply


def copy_model(name: str, config: str | None = None):
    """A copy of the tiny model in the store, optionally with another config.json."""

    def apply(w: Path, ctx):
        dest = w / "store" / name
        shutil.copytree(ctx["model"], dest)
        if config is not None:
            (dest / "config.json").write_text(config)

    return apply


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    id: str
    argv: str
    code: int
    says: tuple[str, ...]
    prep: tuple = ()
    changes: tuple[str, ...] = ()  # globs under {w} that may change or appear
    gone: tuple[str, ...] = ()  # globs under {w} that must have been removed
    fault: str | None = None  # an injected write failure, see `inject`
    env: dict = field(default_factory=dict)


def C(id, argv, code, says, *prep, **kw) -> Case:
    return Case(id, argv, code, tuple(says), tuple(prep), **kw)


T = "{data}/train.jsonl"
NEW_RUN = ("new-run", "new-run/*")
RESUMED = ("run/run.json", "run/events.jsonl")
CASES = [
    # ---- data (train)
    C(
        "data-malformed-json",
        "train {recipe}",
        2,
        [T + ":2:", "JSON"],
        rows("data/train.jsonl", GOOD, '{"messages": [}'),
    ),
    C("data-row-is-a-list", "train {recipe}", 2, [T + ":1:"], rows("data/train.jsonl", "[1, 2]", GOOD)),
    C(
        "data-missing-keys",
        "train {recipe}",
        2,
        [T + ":1:", "messages"],
        rows("data/train.jsonl", {"q": "a", "a": "b"}),
    ),
    C(
        "data-unknown-role",
        "train {recipe}",
        2,
        [T + ":2:", "robot"],
        rows(
            "data/train.jsonl",
            GOOD,
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
        ),
    ),
    C(
        "data-no-assistant",
        "train {recipe}",
        2,
        [T + ":1:", "assistant"],
        rows("data/train.jsonl", {"messages": [{"role": "user", "content": "hi"}]}),
    ),
    C("data-empty-file", "train {recipe}", 2, [T, "empty"], write("data/train.jsonl", "")),
    C(
        "data-not-utf8",
        "train {recipe}",
        2,
        [T + ":2:", "UTF-8"],
        write("data/train.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n'),
    ),
    C("data-train-is-a-folder", "train {recipe}", 2, [T, "is a folder"], mkdir("data/train.jsonl")),
    C(
        "data-train-symlink-loop",
        "train {recipe}",
        2,
        [T, "symlink loop"],
        link("data/train.jsonl", "{data}/train.jsonl"),
    ),
    C(
        "data-train-dangling-link",
        "train {recipe}",
        2,
        [T, "does not exist"],
        link("data/train.jsonl", "{w}/gone.jsonl"),
    ),
    C("data-folder-missing", "train {recipe}", 2, ["{w}/data", "not found", "data.train"], rm("data")),
    C("data-valid-is-a-folder", "train {recipe}", 2, ["{data}/valid.jsonl", "is a folder"], mkdir("data/valid.jsonl")),
    C(
        "data-valid-given-missing",
        "train {recipe} --set data.valid={w}/nope.jsonl",
        2,
        ["{w}/nope.jsonl", "data.valid"],
    ),
    C("data-valid-malformed", "train {recipe}", 2, ["{data}/valid.jsonl:1:"], write("data/valid.jsonl", "{oops\n")),
    C("data-batch-larger-than-rows", "train {recipe} --train.batch_size 99", 2, [T, "train.batch_size"]),
    C(
        "data-valid-missing-warns",
        "train {recipe}",
        0,
        ["Warning", "no validation data", "valid.jsonl"],
        rm("data/valid.jsonl"),
        changes=NEW_RUN,
    ),
    # ---- recipe
    C(
        "recipe-duplicate-key",
        "train {recipe}",
        2,
        ["{recipe}:13:", "'model' is given twice", "line 1"],
        append("recipe.yaml", "model: other\n"),
    ),
    C(
        "recipe-duplicate-nested-key",
        "train {recipe}",
        2,
        ["{recipe}:9:", "'train.iters' is given twice"],
        edit("recipe.yaml", "  batch_size: 1\n", "  iters: 5\n"),
    ),
    C(
        "recipe-iters-and-epochs",
        "train {recipe}",
        2,
        ["{recipe}:13:", "train.epochs", "train.iters"],
        append("recipe.yaml", "  epochs: 2\n"),
    ),
    C(
        "recipe-unknown-key",
        "train {recipe}",
        2,
        ["{recipe}:13:", "unknown key 'colour'"],
        append("recipe.yaml", "colour: blue\n"),
    ),
    C(
        "recipe-unknown-nested-key",
        "train {recipe}",
        2,
        ["{recipe}:13:", "train.lr"],
        append("recipe.yaml", "  lr: 0.1\n"),
    ),
    C(
        "recipe-wrong-type",
        "train {recipe}",
        2,
        ["{recipe}:8:", "train.iters", "integer"],
        edit("recipe.yaml", "iters: 2", "iters: many"),
    ),
    C(
        "recipe-bad-choice",
        "train {recipe}",
        2,
        ["{recipe}:13:", "method", "lora"],
        append("recipe.yaml", "method: qlora\n"),
    ),
    C(
        "recipe-invalid-yaml",
        "train {recipe}",
        2,
        ["{recipe}:", "invalid YAML"],
        append("recipe.yaml", "  bad: [unclosed\n"),
    ),
    C("recipe-not-a-mapping", "train {recipe}", 2, ["{recipe}", "mapping"], write("recipe.yaml", "- model\n- data\n")),
    C("recipe-not-utf8", "train {recipe}", 2, ["{recipe}", "UTF-8"], write("recipe.yaml", b"model: caf\xe9\n")),
    C("recipe-file-missing", "train {w}/nope.yaml", 2, ["{w}/nope.yaml", "not found"]),
    C(
        "recipe-layers-above-blocks",
        "train {recipe}",
        2,
        ["lora.layers", "only 2 transformer blocks"],
        edit("recipe.yaml", "layers: all", "layers: 9"),
    ),
    C(
        "recipe-layers-zero",
        "train {recipe}",
        2,
        ["{recipe}:6:", "lora.layers"],
        edit("recipe.yaml", "layers: all", "layers: 0"),
    ),
    C(
        "recipe-quantize-7-bits",
        "train {recipe}",
        2,
        ["{recipe}:14:", "quantize.bits"],
        append("recipe.yaml", "quantize:\n  bits: 7\n"),
    ),
    C(
        "recipe-full-and-quantized",
        "train {recipe}",
        2,
        ["{recipe}:15:", "method: full"],
        append("recipe.yaml", "method: full\nquantize:\n  bits: 4\n"),
    ),
    C(
        "recipe-no-model",
        "train {recipe}",
        2,
        ["{recipe}", "'model' is required"],
        edit("recipe.yaml", "model: {model}\n", ""),
    ),
    C(
        "recipe-model-missing",
        "train {recipe}",
        2,
        ["{w}/no-model", "not found"],
        edit("recipe.yaml", "model: {model}", "model: {w}/no-model"),
    ),
    C(
        "recipe-model-config-broken",
        "train {recipe}",
        2,
        ["{store}/broken/config.json:1:", "not valid JSON"],
        copy_model("broken", "{"),
        edit("recipe.yaml", "model: {model}", "model: {store}/broken"),
    ),
    C(
        "recipe-dropout-one",
        "train {recipe}",
        2,
        ["{recipe}:7:", "lora.dropout"],
        edit("recipe.yaml", "all\n", "all\n  dropout: 1.0\n"),
    ),
    C(
        "recipe-output-under-a-file",
        "train {recipe} --set output={data}/train.jsonl/run",
        2,
        ["{data}/train.jsonl", "is a file"],
    ),
    C("recipe-output-is-a-file", "train {recipe} --set output={recipe}", 2, ["{recipe}", "is a file"]),
    C("recipe-output-holds-a-run", "train {recipe} --set output={run}", 2, ["{run}", "already holds a run"]),
    C("recipe-command-bad-key", "recipe {recipe} --set train.colour=red", 2, ["--set train.colour=red", "unknown key"]),
    # ---- flags
    C("flag-train-help", "train --help", 0, ["--train.memory_limit_gb", "90%"]),
    C(
        "flag-value-blames-flag",
        "train {recipe} --train.iters many",
        2,
        ["--train.iters many", "'train.iters' must be an integer"],
    ),
    C(
        "flag-set-value-blames-set",
        "train {recipe} --set train.iters=many",
        2,
        ["--set train.iters=many", "train.iters"],
    ),
    C("flag-set-without-equals", "train {recipe} --set train.iters", 2, ["--set 'train.iters'", "section.key=value"]),
    C("flag-set-invalid-yaml", "train {recipe} --set train.iters=[", 2, ["--set train.iters=[", "not valid YAML"]),
    C("flag-ranks-zero", "train {recipe} --ranks 0", 2, ["--ranks"]),
    C("flag-recipe-and-resume", "train {recipe} --resume {run}", 2, ["--resume"]),
    C(
        "flag-resume-with-override",
        "train --resume {run} --train.iters 9",
        2,
        ["keeps its recipe"],
        meta(status="stopped"),
    ),
    C("flag-unknown-command", "trian {recipe}", 2, ["invalid choice", "trian"]),
    C("flag-export-format", "export {run} --format onnx --out {w}/o", 2, ["--format", "onnx"]),
    C(
        "flag-export-shard-size",
        "export {run} --format hf --out {w}/o --max-shard-size lots",
        2,
        ["--max-shard-size", "lots"],
    ),
    C("flag-export-dtype-on-peft", "export {run} --format peft --out {w}/o --dtype float16", 2, ["--dtype", "peft"]),
    C(
        "flag-export-checkpoint-word",
        "export {run} --format mlx --out {w}/o --checkpoint soon",
        2,
        ["--checkpoint", "soon"],
    ),
    C("flag-quantize-bits", "models quantize {model} --bits 7", 2, ["--bits must be one of", "got 7"]),
    C("flag-quantize-group-size", "models quantize {model} --group-size 48", 2, ["--group-size", "48"]),
    C("flag-pull-quantize-bits", "models pull tiny-org/Tiny --quantize 7", 2, ["--quantize must be one of"]),
    C("flag-fit-layers", "models fit {model} --layers some", 2, ["--layers", "some"]),
    C("flag-fit-rank", "models fit {model} --rank 0", 2, ["--rank"]),
    C("flag-fit-layers-above-blocks", "models fit {model} --layers 9", 2, ["lora.layers", "only 2 transformer blocks"]),
    # ---- run folders (resume, eval, select)
    C(
        "run-resume-empty-checkpoints",
        "train --resume {run}",
        3,
        ["nothing to resume", "{run}/checkpoints", "Nothing was changed"],
        meta(status="stopped"),
        rm("run/checkpoints/*"),
    ),
    C(
        "run-resume-no-checkpoints-folder",
        "train --resume {run}",
        3,
        ["nothing to resume", "is missing"],
        meta(status="stopped"),
        rm("run/checkpoints"),
    ),
    C(
        "run-resume-only-staging",
        "train --resume {run}",
        3,
        ["nothing to resume"],
        meta(status="stopped"),
        rm("run/checkpoints/*"),
        stale("run/checkpoints/.staging-x"),
    ),
    C("run-resume-finished", "train --resume {run}", 2, ["{run}", "already finished"]),
    C("run-resume-not-a-run", "train --resume {data}", 2, ["{data}", "not a run directory"]),
    C(
        "run-resume-broken-run-json",
        "train --resume {run}",
        2,
        ["{run}/run.json:2:", "not valid JSON"],
        write("run/run.json", "{\n"),
    ),
    C(
        "run-resume-broken-recipe",
        "train --resume {run}",
        2,
        ["{run}/recipe.yaml:", "invalid YAML"],
        append("run/recipe.yaml", "train: [\n"),
    ),
    C(
        "run-resume-torn-checkpoint",
        "train --resume {run}",
        3,
        ["step-0000002", "cannot read this checkpoint"],
        meta(status="stopped"),
        rm("run/checkpoints/step-0000002/optimizer.safetensors"),
    ),
    C(
        "run-resume-clears-staging",
        "train --resume {run}",
        0,
        ["removed 1 unfinished checkpoint"],
        meta(status="stopped"),
        stale("run/checkpoints/.staging-abc"),
        changes=RESUMED,
        gone=("run/checkpoints/.staging-abc",),
    ),
    C(
        "run-checkpoint-disk-full",
        "train --resume {run}",
        3,
        ["{run}/checkpoints", "disk is full", "step-0000001) is untouched"],
        meta(status="stopped"),
        rm("run/checkpoints/step-0000002"),
        fault="mlx-write",
        changes=RESUMED,
    ),
    C(
        "run-new-checkpoint-disk-full",
        "train {recipe}",
        3,
        ["checkpoint step 2", "disk is full", "No checkpoint was written"],
        fault="mlx-write",
        changes=NEW_RUN,
    ),
    C("run-eval-missing", "eval {w}/nope", 2, ["{w}/nope"]),
    C("run-select-not-evaluated", "select {run}", 2, ["{run}", "mlxsft eval"]),
    # ---- exports (export, fuse, verify, import-adapter)
    C("export-run-missing", "export {w}/nope --format mlx --out {w}/o", 2, ["{w}/nope", "run directory not found"]),
    C(
        "export-out-under-a-file",
        "export {run} --format mlx --out {data}/train.jsonl/o --no-verify",
        2,
        ["{data}/train.jsonl", "is a file"],
    ),
    C("export-out-exists", "export {run} --format mlx --out {exp} --no-verify", 2, ["{exp}", "--force"]),
    C(
        "export-force-foreign-folder",
        "export {run} --format mlx --out {data} --force --no-verify",
        2,
        ["{data}", "does not look like"],
    ),
    C(
        "export-checkpoint-missing",
        "export {run} --format peft --out {w}/o --checkpoint 99",
        2,
        ["{run}", "no checkpoint at step 99"],
    ),
    C(
        "export-adapter-config-broken",
        "export {run} --format mlx --out {w}/o --no-verify",
        2,
        ["{run}/adapter_config.json:1:", "not valid JSON"],
        write("run/adapter_config.json", "{"),
    ),
    C(
        "export-root-adapters-lost",
        "export {run} --format mlx --out {w}/o --no-verify",
        0,
        ["adapters.safetensors is missing", "step 2"],
        rm("run/adapters.safetensors"),
        changes=("o", "o/*"),
    ),
    C(
        "export-run-never-saved",
        "export {run} --format mlx --out {w}/o",
        2,
        ["{run}", "no checkpoint yet"],
        rm("run/adapters.safetensors"),
        rm("run/checkpoints/*"),
    ),
    C(
        "export-disk-full",
        "export {run} --format mlx --out {w}/o --no-verify",
        2,
        ["{w}/o", "disk is full", "Nothing was left"],
        fault="os-write",
    ),
    C(
        "export-force-disk-full",
        "export {run} --format mlx --out {exp} --force --no-verify",
        2,
        ["{exp}", "disk is full", "earlier export at {exp} is untouched"],
        fault="os-write",
    ),
    C(
        "export-hf-disk-full",
        "export {run} --format hf --out {w}/o --no-verify",
        2,
        ["{w}/o", "disk is full"],
        fault="mlx-write",
    ),
    C(
        "export-clears-killed-staging",
        "export {run} --format mlx --out {w}/o --no-verify",
        0,
        ["Removing", "interrupted export"],
        stale("{w}/.o.staging-PID-x.tmp"),
        changes=("o", "o/*"),
        gone=(".o.staging-*",),
    ),
    C(
        "export-force-replaces",
        "export {run} --format mlx --out {exp} --force --no-verify",
        0,
        ["Wrote {exp}"],
        changes=("exp/*",),
    ),
    C("fuse-checkpoint-missing", "fuse {run} --out {w}/fused --checkpoint 7", 2, ["{run}", "no checkpoint at step 7"]),
    C("verify-missing-export", "verify {w}/nope --against {run}", 2, ["{w}/nope"]),
    C(
        "import-config-malformed",
        "import-adapter {peft} --out {w}/imp",
        2,
        ["{peft}/adapter_config.json:1:", "not valid JSON"],
        write("peft/adapter_config.json", '{"r": 4,'),
    ),
    C(
        "import-config-not-object",
        "import-adapter {peft} --out {w}/imp",
        2,
        ["{peft}/adapter_config.json", "JSON object"],
        write("peft/adapter_config.json", "[1, 2]"),
    ),
    C(
        "import-no-config",
        "import-adapter {peft} --out {w}/imp",
        2,
        ["{peft}", "no adapter_config.json"],
        rm("peft/adapter_config.json"),
    ),
    C(
        "import-no-weights",
        "import-adapter {peft} --out {w}/imp",
        2,
        ["{peft}", "no adapter_model.safetensors"],
        rm("peft/adapter_model.safetensors"),
    ),
    C("import-out-exists", "import-adapter {peft} --out {run}", 2, ["{run}", "--force"]),
    C("import-base-missing", "import-adapter {peft} --out {w}/imp --base {w}/nope", 2, ["{w}/nope", "not found"]),
    C(
        "import-base-config-broken",
        "import-adapter {peft} --out {w}/imp --base {store}/broken",
        2,
        ["{store}/broken/config.json:2:", "not valid JSON"],
        copy_model("broken", "{\n"),
    ),
    # ---- the model store
    C(
        "store-quantize-name-taken",
        "models quantize {model} --name taken",
        2,
        ["already holds 'taken'", "--name"],
        copy_model("taken"),
    ),
    C(
        "store-quantize-name-taken-junk",
        "models quantize {model} --name junk",
        2,
        ["already holds 'junk'", "--name"],
        mkdir("store/junk"),
    ),
    C("store-quantize-missing", "models quantize nope", 2, ["nope", "not found"]),
    C(
        "store-quantize-disk-full",
        "models quantize {model} --name q4",
        2,
        ["q4", "disk is full", "Nothing was left"],
        fault="mlx-write",
    ),
    C(
        "store-quantize-clears-partial",
        "models quantize {model} --name q4",
        0,
        ["Removing", "interrupted quantize"],
        stale("store/.partial-q4"),
        changes=("store/q4", "store/q4/*"),
        gone=("store/.partial-q4",),
    ),
    C(
        "store-info-broken-config",
        "models info {store}/broken",
        2,
        ["{store}/broken/config.json", "JSON"],
        copy_model("broken", "{"),
    ),
    C("store-info-a-file", "models info {recipe}", 2, ["{recipe}", "found a file"]),
    C("store-pull-not-an-id", "models pull not-an-id!", 2, ["not-an-id!", "not a hub id"]),
    C("store-pull-offline", "models pull tiny-org/Not-Here", 2, ["tiny-org/Not-Here", "HF_HUB_OFFLINE"]),
    C("store-data-check-missing", "data check {w}/nope.jsonl", 2, ["{w}/nope.jsonl"]),
]


# ---------------------------------------------------------------- the scene


@pytest.fixture(scope="module")
def base(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """Built once: good data, a run trained for 2 steps (checkpoints 1 and 2), its mlx and PEFT exports."""
    from mlxsft.config import load_recipe
    from mlxsft.export import export_mlx_adapter, export_peft
    from mlxsft.train.run import run_training

    root = tmp_path_factory.mktemp("bad-input-base")
    data = root / "data"
    rows("data/train.jsonl", *[GOOD] * 4)(root, {})
    rows("data/valid.jsonl", GOOD, GOOD)(root, {})
    recipe = root / "recipe.yaml"
    recipe.write_text(fill(RECIPE, {"model": str(tiny_llama), "w": str(root)}) + "  steps_per_save: 1\n")
    run = root / "run"
    run_training(load_recipe(recipe, [f"output={run}"]), run)
    export_mlx_adapter(run, root / "exp", verify=False)
    export_peft(run, root / "peft", verify=False)
    return {"model": tiny_llama, "data": data, "run": run, "exp": root / "exp", "peft": root / "peft"}


def build_scene(w: Path, base: dict[str, Path]) -> dict[str, str]:
    ctx = {
        "w": str(w),
        "model": str(base["model"]),
        "data": str(w / "data"),
        "recipe": str(w / "recipe.yaml"),
        "run": str(w / "run"),
        "exp": str(w / "exp"),
        "peft": str(w / "peft"),
        "store": str(w / "store"),
    }
    shutil.copytree(base["data"], w / "data")
    (w / "recipe.yaml").write_text(fill(RECIPE, ctx))
    for name in ("run", "exp", "peft"):
        shutil.copytree(base[name], w / name)
    (w / "store").mkdir()
    return ctx


def snapshot(*roots: Path) -> dict[str, str]:
    """sha1 of every file (and the target of every symlink) under the roots."""
    out = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            if path.is_symlink():
                out[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            elif path.is_dir() and path != root:
                out[str(path)] = "dir"
    return out


def inject(fault: str | None, monkeypatch) -> None:
    """A write that fails as on a full disk: the writer raises and the disk reports 0 bytes free."""
    if fault is None:
        return
    import mlxsft.safeio

    monkeypatch.setattr(mlxsft.safeio, "free_bytes", lambda path: 0)
    if fault == "mlx-write":  # mlx's safetensors writer: a RuntimeError without an errno

        def full(*_a, **_k):
            raise RuntimeError("[write] Unable to write 4096 bytes to file.")

        monkeypatch.setattr(mx, "save_safetensors", full)
    elif fault == "os-write":  # Python's own writes: OSError ENOSPC

        def full(*_a, **_k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(shutil, "copyfile", full)


def matches(path: str, w: Path, globs: tuple[str, ...]) -> bool:
    """Is `path` (absolute) one of `globs` (relative to w; `*` also crosses `/`)?"""
    if not Path(path).is_relative_to(w):
        return False
    rel = str(Path(path).relative_to(w))
    return any(fnmatch.fnmatchcase(rel, g) for g in globs)


def run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    from mlxsft.cli import main

    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: usage errors and --help
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_corpus_is_large_and_unique():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    commands = {c.argv.split()[0] for c in CASES}
    assert {
        "train",
        "recipe",
        "export",
        "fuse",
        "verify",
        "import-adapter",
        "models",
        "eval",
        "select",
        "data",
    } <= commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, base, tmp_path, monkeypatch, capsys):
    w = tmp_path / "w"
    w.mkdir()
    ctx = build_scene(w, base)
    for prep in case.prep:
        prep(w, ctx)
    monkeypatch.chdir(w)
    monkeypatch.setenv("MLXSFT_NO_OPENBLAS", "1")  # never re-exec the test process
    monkeypatch.setenv("MLXSFT_MODELS", ctx["store"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = snapshot(w, base["model"])
    inject(case.fault, monkeypatch)

    code, out, err = run_in_process(shlex.split(fill(case.argv, ctx)), capsys)
    monkeypatch.undo()

    said = out + err
    assert code == case.code, said
    assert "Traceback" not in said, said
    if case.code != 0:
        assert "error:" in err, said
    for word in case.says:
        assert fill(word, ctx) in said, f"{fill(word, ctx)!r} not in: {said}"
    after = snapshot(w, base["model"])
    gone = case.gone + tuple(g + "/*" for g in case.gone)
    changed = [p for p, h in before.items() if after.get(p) != h and not matches(p, w, case.changes + gone)]
    assert not changed, f"files changed or lost: {changed}"
    new = [p for p in after if p not in before and not matches(p, w, case.changes)]
    assert not new, f"left behind: {new}"
    for pattern in case.gone:
        assert not list(w.glob(pattern)), f"{pattern} was not removed"


# ---------------------------------------------------------------- beyond the table: real faults


def test_force_swap_never_leaves_the_path_empty(tmp_path, monkeypatch):
    """`--force` swaps folders in one step: the path is never missing, neither to a reader
    polling it nor after any rename the swap makes."""
    import threading

    from mlxsft.safeio import swap_into_place

    target = tmp_path / "out"
    target.mkdir()
    (target / "v").write_text("start")
    stop, missing = threading.Event(), []
    real_replace = os.replace

    def replace_and_look(src, dst):  # a two-rename swap is caught here, deterministically
        real_replace(src, dst)
        if not (target / "v").exists():
            missing.append(("after os.replace", src, dst))

    def watch():
        while not stop.is_set():
            if not (target / "v").exists():
                missing.append("seen by a reader")

    monkeypatch.setattr(os, "replace", replace_and_look)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for i in range(100):
            new = tmp_path / f".new-{i}"
            new.mkdir()
            (new / "v").write_text(str(i))
            swap_into_place(new, target)
    finally:
        stop.set()
        watcher.join()
    assert missing == []
    assert (target / "v").read_text() == "99"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old folders are gone


@pytest.fixture
def full_disk(tmp_path):
    """A 4 MB tmpfs (root only): `fill(leave)` then fills it, leaving `leave` bytes free."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root; the injected write errors in CASES cover this path")

    def fill(leave: int) -> None:
        filler = disk / ".filler"
        with open(filler, "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        os.truncate(filler, max(filler.stat().st_size - leave, 0))

    try:
        yield disk, fill
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_real_full_disk_keeps_the_previous_checkpoint_and_export(base, full_disk, monkeypatch, capsys):
    """On a full tmpfs: a resumed run's next checkpoint, an export, a forced re-export and a
    quantized copy each fail with one clear error, and nothing that was there is touched."""
    disk, fill = full_disk
    run, exp, store = disk / "run", disk / "exp", disk / "store"
    shutil.copytree(base["run"], run)
    shutil.copytree(base["exp"], exp)
    shutil.rmtree(run / "checkpoints" / "step-0000002")
    meta(status="stopped")(disk, {})
    store.mkdir()
    monkeypatch.setenv("MLXSFT_NO_OPENBLAS", "1")
    fill(leave=24 * 1024)  # room for run.json and events, not for a checkpoint (~100 KB)
    before = snapshot(run / "checkpoints", exp, store)

    for argv, code, says in [
        (["train", "--resume", str(run)], 3, ["disk is full", "step-0000001) is untouched"]),
        (["export", str(run), "--format", "mlx", "--out", str(disk / "o"), "--no-verify"], 2, ["disk is full"]),
        (["export", str(run), "--format", "hf", "--out", str(disk / "o"), "--no-verify"], 2, ["disk is full"]),
        (
            ["export", str(run), "--format", "mlx", "--out", str(exp), "--force", "--no-verify"],
            2,
            ["disk is full", f"earlier export at {exp} is untouched"],
        ),
        (["models", "quantize", str(base["model"]), "--store", str(store)], 2, ["disk is full"]),
    ]:
        got, out, err = run_in_process(argv, capsys)
        assert got == code, out + err
        assert "Traceback" not in out + err and "mlxsft: error: " in err, out + err
        for word in says:
            assert word in err, err
        assert snapshot(run / "checkpoints", exp, store) == before
        leftovers = [p.name for p in disk.iterdir() if p.name not in ("run", "exp", "store", ".filler")]
        assert leftovers == [], leftovers
