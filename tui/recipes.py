"""Recipes and models the New run screen offers, and the recipe it writes before launching.

Form values are the dotted keys of `mlxsft.config.iter_fields()` as text; they are
parsed the way `--set key=value` is (`parse_yaml_value`) and validated by
`recipe_from_dict`, so the form accepts exactly what a YAML recipe accepts and says
the same errors. The recipe that runs is written (atomically) into the run folder as
`tui-recipe.yaml` with a header that says how to repeat the run headless.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mlxsft.config import (
    Recipe,
    dump_recipe,
    iter_fields,
    parse_yaml_value,
    read_recipe_file,
    recipe_from_dict,
)
from mlxsft.safeio import atomic_write_text

from .runs import LAUNCH_RECIPE

# The knobs that matter, shown first; every other leaf field sits under "More settings".
MAIN_FIELDS = (
    "method",
    "objective",  # sft, or dpo/orpo on preference pairs
    "init",  # a finished run whose adapter DPO continues
    "lora.rank",
    "lora.alpha",
    "lora.layers",
    "train.learning_rate",
    "train.batch_size",
    "train.iters",
    "train.epochs",
    "train.max_seq_length",
    "quantize.bits",
    "data.mask",
)
# Chosen with their own widgets (pickers), not typed into the generic form.
PICKED_FIELDS = ("model", "data.train", "output")


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: object
    default: object
    help: str
    choices: tuple | None

    @property
    def is_bool(self) -> bool:
        return self.type is bool


def field_specs() -> dict[str, FieldSpec]:
    return {name: FieldSpec(name, tp, default, help_, choices) for name, tp, default, help_, choices in iter_fields()}


def form_fields() -> tuple[list[FieldSpec], list[FieldSpec]]:
    """(main, more): the form's fields, from the config dataclasses (the one source of truth)."""
    specs = field_specs()
    main = [specs[name] for name in MAIN_FIELDS if name in specs]
    more = [s for name, s in specs.items() if name not in MAIN_FIELDS and name not in PICKED_FIELDS]
    return main, more


def format_value(value) -> str:
    """A recipe value as the text a form field shows (`parse_yaml_value` reads it back)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def flatten(recipe_dict: dict, prefix: str = "") -> dict[str, object]:
    flat = {}
    for key, value in recipe_dict.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def default_values() -> dict[str, str]:
    return {spec.name: format_value(spec.default) for spec in field_specs().values()}


def recipe_file_values(path: Path) -> dict[str, str]:
    """Form values of a recipe file: its keys over the defaults (not validated yet)."""
    raw, _ = read_recipe_file(path)
    if isinstance(raw.get("data"), str):
        raw["data"] = {"train": raw["data"]}
    values = default_values()
    values.update({k: format_value(v) for k, v in flatten(raw).items()})
    return values


def build_recipe(values: dict[str, str], source: str = "the New run form") -> Recipe:
    """Validate form values into a Recipe (a `RecipeError` names the field)."""
    raw: dict = {}
    specs = field_specs()
    for name, text in values.items():
        text = text.strip()
        if text == "" and name in specs and specs[name].default is not None:
            continue  # an emptied field falls back to its default (the check names required ones)
        value = None if text == "" else parse_yaml_value(text)
        if name == "lora.targets" and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        node = raw
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return recipe_from_dict(raw, source)


def default_run_dir(runs_root: Path, recipe: Recipe) -> Path:
    model = Path(recipe.model.rstrip("/")).name or "model"
    return runs_root / f"{model}-{recipe.method}-{time.strftime('%Y%m%d-%H%M%S')}"


def write_launch_recipe(recipe: Recipe, run_dir: Path, shown_dir: str | None = None) -> Path:
    """Write the recipe this run will use into RUN/tui-recipe.yaml (before the trainer starts)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LAUNCH_RECIPE
    shown = f"{shown_dir}/{LAUNCH_RECIPE}" if shown_dir else str(path)
    header = (
        "# Written by `mlxsft tui` for this run. To repeat it headless:\n"
        f"#   mlxsft train {shown} --set output=runs/<new-name>\n"
    )
    atomic_write_text(path, header + dump_recipe(recipe))
    return path


def list_models(models_dir: Path) -> list[Path]:
    """Local model folders (with a config.json) under models/, by name."""
    if not models_dir.is_dir():
        return []
    return sorted(p for p in models_dir.iterdir() if (p / "config.json").is_file())


def list_recipes(recipes_dir: Path) -> list[Path]:
    if not recipes_dir.is_dir():
        return []
    return sorted(p for p in recipes_dir.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def list_datasets(recipes_dir: Path) -> list[Path]:
    """Bundled data folders (recipes/data/*) that hold a train.jsonl."""
    data = recipes_dir / "data"
    if not data.is_dir():
        return []
    return sorted(p for p in data.iterdir() if (p / "train.jsonl").is_file())
