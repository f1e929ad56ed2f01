"""The curated catalog (models/catalog.yaml): every entry well formed and buildable by mlx-lm."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from mlxsft.errors import ModelError
from mlxsft.models.catalog import (
    CatalogEntry,
    find_entry,
    load_catalog,
    mlx_lm_module,
    supported_by_mlx_lm,
)

ROOT = Path(__file__).resolve().parents[1]
CATALOG = ROOT / "models" / "catalog.yaml"


@pytest.fixture(scope="module")
def entries() -> list[CatalogEntry]:
    return load_catalog(CATALOG)


def _architecture_source(model_type: str) -> str:
    """Source of the mlx-lm module for `model_type` and of the mlx-lm modules it builds on."""
    module = importlib.import_module(mlx_lm_module(model_type))
    sources = [inspect.getsource(module)]
    for value in vars(module).values():
        owner = value if inspect.ismodule(value) else inspect.getmodule(value)
        name = getattr(owner, "__name__", "")
        if name.startswith("mlx_lm.models.") and owner is not module:
            sources.append(inspect.getsource(owner))
    return "\n".join(sources)


def test_catalog_covers_the_families_people_fine_tune_on_laptops(entries):
    families = {e.family for e in entries}
    for family in (
        "Qwen2.5",
        "Qwen3",
        "Llama 3.2",
        "Gemma 2",
        "Gemma 3",
        "SmolLM2",
        "Phi-3.5",
        "Phi-4",
        "Mistral",
    ):
        assert family in families, family
    assert len({e.id.lower() for e in entries}) == len(entries)


def test_every_entry_has_plausible_fields(entries):
    for e in entries:
        assert re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", e.id), e.id
        assert 0.05 <= e.params_b <= 9.0, (e.id, e.params_b)  # laptop-sized: 0.1-8B
        assert isinstance(e.gated, bool) and e.license.strip() and e.family.strip()
        assert e.name == e.id.split("/")[1]
        # sizes in hub names ("0.5B", "135M") agree with params_b within rounding
        size = re.search(r"-(\d+(?:\.\d+)?)([BM])\b", e.id)
        if size:
            stated = float(size.group(1)) / (1000 if size.group(2) == "M" else 1)
            assert abs(stated - e.params_b) / stated < 0.25, (e.id, e.params_b)


def test_every_model_type_is_an_mlx_lm_architecture_with_the_recommended_targets(entries):
    for e in entries:
        assert supported_by_mlx_lm(e.model_type), e.model_type
        importlib.import_module(mlx_lm_module(e.model_type))
        source = _architecture_source(e.model_type)
        for target in e.lora_targets:
            assert re.search(rf"self\.{target}\s*=", source), (e.id, target)


def test_unknown_architectures_are_not_supported():
    assert not supported_by_mlx_lm("definitely_not_an_architecture")
    assert mlx_lm_module("mistral") == "mlx_lm.models.llama"  # mlx-lm's own rename


def test_find_entry_is_case_insensitive(entries):
    entry = find_entry("qwen/qwen2.5-0.5b-instruct", entries)
    assert entry is not None and entry.id == "Qwen/Qwen2.5-0.5B-Instruct"
    assert find_entry("nobody/nothing", entries) is None


def test_the_store_catalog_is_found_through_the_store_setting(tmp_path, monkeypatch):
    store = tmp_path / "elsewhere"
    store.mkdir()
    (store / "catalog.yaml").write_text(
        "models:\n  - {id: a/B-1B, family: F, model_type: llama, params_b: 1.0, license: mit,\n"
        "     gated: false, lora_targets: [q_proj]}\n"
    )
    monkeypatch.setenv("MLXSFT_MODELS", str(store))
    assert [e.id for e in load_catalog()] == ["a/B-1B"]
    assert [e.id for e in load_catalog(store=str(store))] == ["a/B-1B"]


BAD = """models:
  - id: Qwen/Qwen2.5-0.5B-Instruct
    family: Qwen2.5
    model_type: qwen2
    params_b: 0.49
    license: apache-2.0
    gated: false
    lora_targets: [q_proj]
  - id: other/Model
    family: X
    model_type: llama
    params_b: "big"
    license: mit
    gated: false
    lora_targets: [q_proj]
"""


@pytest.mark.parametrize(
    "text, message, line",
    [
        (BAD, "'params_b' must be int or float", 9),
        (
            BAD.replace('"big"', "1.0").replace("other/Model", "qwen/qwen2.5-0.5b-instruct"),
            "listed twice",
            9,
        ),
        (
            BAD.replace("    gated: false\n    lora_targets: [q_proj]\n", "    lora_targets: [q_proj]\n", 1),
            "missing 'gated'",
            2,
        ),
        (BAD.replace("family: X", "family: X\n    colour: red"), "unknown catalog field", 9),
        (BAD.replace("lora_targets: [q_proj]\n", "lora_targets: []\n", 1), "non-empty list", 2),
        (BAD.replace('"big"', "1.0").replace("id: other/Model", "id: no-slash"), "not a hub id", 9),
    ],
    ids=["wrong-type", "duplicate", "missing-field", "unknown-field", "empty-targets", "bad-id"],
)
def test_bad_entries_are_errors_with_their_line(tmp_path, text, message, line):
    path = tmp_path / "catalog.yaml"
    path.write_text(text)
    with pytest.raises(ModelError, match=message) as info:
        load_catalog(path)
    assert f"catalog.yaml:{line}:" in str(info.value)


def test_unreadable_catalogs_are_errors(tmp_path):
    path = tmp_path / "catalog.yaml"
    path.write_text("models: [\n")
    with pytest.raises(ModelError, match="invalid YAML"):
        load_catalog(path)
    path.write_text("- just a list\n")
    with pytest.raises(ModelError, match="top-level 'models:' list"):
        load_catalog(path)
    with pytest.raises(ModelError, match="cannot read the catalog"):
        load_catalog(tmp_path / "missing.yaml")
