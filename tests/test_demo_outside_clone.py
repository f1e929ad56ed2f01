"""`mlxsft demo` outside a clone: it writes the bundled quickstart recipe and data into the folder first."""

from __future__ import annotations

from mlxsft.config import load_recipe
from mlxsft.data.splits import resolve_data_files
from mlxsft.demo import QUICKSTART, bundled_recipes, ensure_demo_recipe


def test_the_demo_recipe_and_data_are_written_where_there_are_none(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (bundled_recipes() / "quickstart.yaml").is_file()
    written = ensure_demo_recipe()
    assert sorted(str(p) for p in written) == ["recipes/data/quickstart", "recipes/quickstart.yaml"]
    recipe = load_recipe(QUICKSTART)
    files = resolve_data_files(recipe.data)
    assert files["train"].is_file() and files["valid"].is_file()
    assert ensure_demo_recipe() == []  # a second call leaves what is there alone


def test_an_edited_recipe_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "quickstart.yaml").write_text("# mine\n")
    assert ensure_demo_recipe() == []
    assert (tmp_path / "recipes" / "quickstart.yaml").read_text() == "# mine\n"
