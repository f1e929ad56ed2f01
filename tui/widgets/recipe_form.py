"""A form for recipe fields, built from `mlxsft.config.iter_fields()` (the dataclasses decide).

Each field is a row: its dotted name, then an editor chosen from its type: a Select
for fields with a set of choices and for booleans, an Input otherwise (typed text is
parsed as YAML, like `--set key=value`). The help text of the config is the tooltip
and what the screen shows when the field has focus.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Input, Label, Select

from ..recipes import FieldSpec, format_value


def field_id(name: str) -> str:
    return "field-" + name.replace(".", "--").replace("_", "-")


class RecipeForm(Vertical):
    """Editors for `fields`; `values()` gives {dotted name: text}."""

    def __init__(self, fields: list[FieldSpec], **kwargs):
        super().__init__(**kwargs)
        self.fields = {spec.name: spec for spec in fields}

    def compose(self) -> ComposeResult:
        for spec in self.fields.values():
            with Horizontal(classes="field-row"):
                yield Label(spec.name, classes="field-label")
                yield self._editor(spec)

    @staticmethod
    def _editor(spec: FieldSpec) -> Widget:
        value = format_value(spec.default)
        if spec.choices or spec.is_bool:
            options = list(spec.choices) if spec.choices else ["true", "false"]
            editor: Widget = Select(
                [(o, o) for o in options],
                value=value,
                allow_blank=False,
                id=field_id(spec.name),
                compact=True,
            )
        else:
            editor = Input(
                value=value,
                placeholder="none" if spec.default is None else "",
                id=field_id(spec.name),
                compact=True,
            )
        editor.tooltip = spec.help
        return editor

    def editor(self, name: str) -> Input | Select:
        return self.query_one(f"#{field_id(name)}")

    def spec_for(self, widget: Widget) -> FieldSpec | None:
        for name, spec in self.fields.items():
            if widget.id == field_id(name):
                return spec
        return None

    def values(self) -> dict[str, str]:
        out = {}
        for name in self.fields:
            editor = self.editor(name)
            value = editor.value
            out[name] = "" if value is Select.NULL or value is None else str(value)
        return out

    def set_values(self, values: dict[str, str]) -> None:
        for name, text in values.items():
            if name not in self.fields:
                continue
            editor = self.editor(name)
            if isinstance(editor, Select):
                options = self.fields[name].choices or ("true", "false")
                if text in options:
                    editor.value = text
            else:
                editor.value = text
