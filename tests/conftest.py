"""Shared fixtures: tiny local models built once per session (no hub access anywhere)."""

import json
from pathlib import Path

import pytest

from mlxsft.devmodel import TinyModelSpec, build_tiny_model

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART_DATA = ROOT / "recipes" / "data" / "quickstart"


def quickstart_corpus() -> list[str]:
    texts = []
    for line in (QUICKSTART_DATA / "train.jsonl").read_text().splitlines():
        texts.extend(m["content"] for m in json.loads(line)["messages"])
    return texts


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide Llama with a ChatML template and a tokenizer trained on the demo data."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), TinyModelSpec(), corpus=quickstart_corpus())


@pytest.fixture(scope="session")
def tiny_qwen_llama3(tmp_path_factory) -> Path:
    """A Qwen2-style model (attention biases) with a Llama-3 chat template."""
    spec = TinyModelSpec(architecture="qwen2", template="llama3")
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), spec, corpus=quickstart_corpus())


PRETRAINED_BASE = ROOT / "tests" / "fixtures" / "tiny_base"
BASE_TASK = ROOT / "tests" / "fixtures" / "tiny_base_task"


@pytest.fixture(scope="session")
def pretrained_base() -> Path:
    """A 705k-parameter Llama pretrained on stdlib docstrings (held-out perplexity 64.7; see its README).

    Committed, never rebuilt by tests; its ChatML markers are untrained. Read-only: copy before changing.
    """
    return PRETRAINED_BASE


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- data layer (tests/test_masking.py, tests/test_batching.py) ---------------------


@pytest.fixture(scope="session")
def data_tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny model folders with a ChatML and a Llama-3 chat template, keyed by template."""
    return {
        template: build_tiny_model(tmp_path_factory.mktemp(f"data-{template}"), TinyModelSpec(template=template))
        for template in ("chatml", "llama3")
    }


@pytest.fixture(scope="session")
def data_tokenizers(data_tiny_models) -> dict:
    """mlx-lm `TokenizerWrapper`s of `data_tiny_models` (shared: do not mutate them)."""
    from mlx_lm.utils import load_tokenizer

    return {template: load_tokenizer(path) for template, path in data_tiny_models.items()}
