"""Recipe validation: types, unknown keys with file and line, overrides, shipped recipes."""

from pathlib import Path

import pytest

from mlxsft.config import Recipe, iter_fields, load_recipe, recipe_from_dict
from mlxsft.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_scientific_notation_is_a_float(tmp_path):
    recipe = load_recipe(write(tmp_path, "model: m\ndata: d\ntrain:\n  learning_rate: 1e-5\n"))
    assert recipe.train.learning_rate == pytest.approx(1e-5)
    assert isinstance(recipe.train.learning_rate, float)


def test_unknown_key_names_key_file_and_line(tmp_path):
    path = write(tmp_path, "model: m\ndata: d\ntrain:\n  iters: 3\n  learnin_rate: 1e-4\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "train.learnin_rate" in message and f"{path}:5:" in message
    assert "learning_rate" in message  # lists the known keys


def test_wrong_type_is_reported(tmp_path):
    with pytest.raises(RecipeError, match=r"'train.batch_size' must be an integer, got 'four'"):
        load_recipe(write(tmp_path, "model: m\ndata: d\ntrain:\n  batch_size: four\n"))


def test_bad_choice_and_zero_iters(tmp_path):
    with pytest.raises(RecipeError, match="method' must be one of lora, dora, full"):
        load_recipe(write(tmp_path, "model: m\ndata: d\nmethod: qlora\n"))
    with pytest.raises(RecipeError, match=r"train.iters' must be at least 1, got 0"):
        load_recipe(write(tmp_path, "model: m\ndata: d\ntrain: {iters: 0}\n"))


def test_invalid_yaml_names_line(tmp_path):
    path = write(tmp_path, "model: m\ntrain:\n  iters: [1,\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(path)


def test_dotted_overrides(tmp_path):
    path = write(tmp_path, "model: m\ndata: d\n")
    recipe = load_recipe(path, ["train.learning_rate=2e-4", "output=runs/x", "lora.targets=q_proj,v_proj"])
    assert recipe.train.learning_rate == pytest.approx(2e-4)
    assert recipe.output == "runs/x"
    assert recipe.lora.targets == ["q_proj", "v_proj"]
    with pytest.raises(RecipeError, match="unknown key 'train.nope'"):
        load_recipe(path, ["train.nope=1"])


def test_data_directory_shorthand():
    recipe = recipe_from_dict({"model": "m", "data": "some/dir"})
    assert recipe.data.train == "some/dir"


def test_quantized_full_finetune_is_refused():
    with pytest.raises(RecipeError, match="quantize.bits"):
        recipe_from_dict({"model": "m", "data": "d", "method": "full", "quantize": {"bits": 4}})


def test_every_field_has_help_and_a_flag_name():
    fields = list(iter_fields(Recipe))
    names = [name for name, *_ in fields]
    assert "train.learning_rate" in names and "lora.rank" in names and "quantize.bits" in names
    assert all(help_text for _, _, _, help_text, _ in fields)


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.model and recipe.data.train
