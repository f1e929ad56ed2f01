"""The offline demo: build a tiny local model into models/ and fine-tune it on bundled data.

No hub download is possible on many machines (CI, planes), so the demo makes its
own base model (random weights, tokenizer trained on the demo data) and runs the
quickstart recipe with it. It prints where the run went.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .config import load_recipe
from .devmodel import TinyModelSpec, build_tiny_model
from .errors import MlxsftError
from .events import StdoutSink
from .train.run import run_training

DEMO_MODEL = Path("models/tiny-chat")
QUICKSTART = Path("recipes/quickstart.yaml")


def corpus_from_jsonl(path: Path) -> list[str]:
    """Message texts of a chat JSONL file (to train the demo tokenizer on)."""
    texts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


def ensure_demo_model(recipe_path: Path = QUICKSTART, model_dir: Path = DEMO_MODEL) -> Path:
    """Build the tiny demo model once (a 4-layer, 128-wide Llama with a ChatML template)."""
    if (model_dir / "config.json").is_file():
        return model_dir
    raw = recipe_path.parent / "data" / "quickstart" / "train.jsonl"
    spec = TinyModelSpec(
        hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=256, vocab_size=768
    )
    build_tiny_model(model_dir, spec, corpus=corpus_from_jsonl(raw))
    return model_dir


def bundled_recipes() -> Path:
    """The recipes shipped with mlxsft: the installed `mlxsft.recipes`, else a clone's recipes/."""
    import importlib.util

    spec = importlib.util.find_spec("mlxsft.recipes")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(__file__).resolve().parents[1] / "recipes"


def ensure_demo_recipe(root: Path = Path(".")) -> list[Path]:
    """Write the quickstart recipe and its data under `root` when missing (outside a clone); return what was written."""
    import shutil

    source = bundled_recipes()
    if (root / QUICKSTART).is_file():
        return []
    if not (source / "quickstart.yaml").is_file():
        raise MlxsftError(
            "this installation ships no demo recipe; run `mlxsft demo` from a clone of the "
            "repository (it uses recipes/quickstart.yaml).",
            path=str(source),
        )
    written = []
    for rel in (Path("quickstart.yaml"), Path("data") / "quickstart"):
        target = root / "recipes" / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (source / rel).is_dir() else shutil.copy)(source / rel, target)
            written.append(target)
    return written


def run_demo(output: str | None = None):
    for path in ensure_demo_recipe():
        print(f"Wrote {path} (the demo's recipe and data, to edit and reuse)")
    model = ensure_demo_model()
    print(f"Demo model: {model} (random weights, tokenizer trained on the demo data)")
    out = output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    recipe = load_recipe(QUICKSTART, [f"output={out}", f"model={model}"])
    from .judge.samples import checkpoint_samples

    result = run_training(recipe, recipe.output, sinks=[StdoutSink()], on_checkpoint=checkpoint_samples())
    print(f"Demo run {result.status}: {result.run_dir}")
    return result
