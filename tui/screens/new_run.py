"""New run: pick a recipe, model and dataset, set the knobs, see the estimate, start training.

The form's fields come from `mlxsft.config.iter_fields()`; what it starts is
`python -m mlxsft.cli train RUN/tui-recipe.yaml` in a child process, so every run
started here can be repeated headless with that file.
"""

from __future__ import annotations

from pathlib import Path

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Button, Collapsible, Footer, Header, Input, Label, Select, Static

from mlxsft.errors import MlxsftError
from mlxsft.rundir import RunDir

from ..dataset import DatasetPreview, load_preview_tokenizer, preview_dataset
from ..processes import train_recipe
from ..recipes import (
    build_recipe,
    default_run_dir,
    default_values,
    form_fields,
    list_datasets,
    list_models,
    list_recipes,
    recipe_file_values,
    write_launch_recipe,
)
from ..run_estimate import DataShape, RunEstimate, estimate_for, format_duration, measured_speeds, resolve_model
from ..runs import LAUNCH_RECIPE
from ..widgets.length_histogram import LengthHistogram
from ..widgets.recipe_form import RecipeForm
from ..widgets.token_view import TokenView

PICKER_HELP = {
    "recipe-select": "A recipe file from recipes/ fills every field below; change what you like.",
    "model-select": "Local model folders under models/ (ones with a config.json).",
    "model-path": "model: a local model folder, or a Hugging Face hub id such as Qwen/Qwen2.5-0.5B-Instruct.",
    "data-select": "Bundled datasets under recipes/data/ (folders holding train.jsonl and valid.jsonl).",
    "data-path": "data.train: a JSONL file, or a folder holding train.jsonl (and valid.jsonl).",
    "output": "output: the run folder to create (default: runs/<model>-<method>-<time>).",
}
PREVIEW_DELAY_S = 0.4
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class NewRunScreen(Screen):
    TITLE = "New run"
    AUTO_FOCUS = "#recipe-select"
    HELP = (
        "Start from a recipe (it fills the form), pick a model and a dataset, adjust the "
        "settings, and "
        "press **ctrl+s**. The right-hand side shows the dataset (rows, format, token lengths "
        "against "
        "max_seq_length, the first example with its trained tokens highlighted) and a rough "
        "memory and "
        "time estimate. The recipe that runs is written to RUN/tui-recipe.yaml, so the run can be "
        "repeated with `mlxsft train RUN/tui-recipe.yaml`."
    )
    BINDINGS = [
        Binding("ctrl+s", "start", "Start training", priority=True),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, runs_root: Path):
        super().__init__()
        self.runs_root = Path(runs_root)
        self.preview: DatasetPreview | None = None
        self.preview_error: str | None = None
        self.preview_token = 0
        self.tokenizers: dict[str, object] = {}
        self._preview_timer = None
        self.estimate: RunEstimate | None = None
        self.estimate_token = 0

    # ------------------------------------------------------------ layout
    def compose(self) -> ComposeResult:
        app = self.app
        main, more = form_fields()
        recipes = [(app.display_path(p), str(p)) for p in list_recipes(app.recipes_dir)]
        models = [(app.display_path(p), app.display_path(p)) for p in list_models(app.models_dir)]
        datasets = [(app.display_path(p), app.display_path(p)) for p in list_datasets(app.recipes_dir)]
        yield Header()
        with Horizontal(id="new-run"):
            with VerticalScroll(id="form-col"):
                yield Static("Start from", classes="section")
                yield self._row(
                    "recipe",
                    Select(recipes, prompt="defaults (no recipe)", id="recipe-select", compact=True),
                )
                yield Static("Model", classes="section")
                yield self._row(
                    "local model",
                    Select(
                        models,
                        prompt="pick a folder under models/",
                        id="model-select",
                        compact=True,
                    ),
                )
                yield self._row(
                    "model",
                    Input(placeholder="models/NAME or a hub id", id="model-path", compact=True),
                )
                yield Static("Data", classes="section")
                yield self._row(
                    "bundled",
                    Select(datasets, prompt="pick a dataset", id="data-select", compact=True),
                )
                yield self._row(
                    "data.train",
                    Input(placeholder="JSONL file or folder", id="data-path", compact=True),
                )
                yield Static("Settings", classes="section")
                yield RecipeForm(main, id="main-form")
                with Collapsible(title="More settings", collapsed=True, id="more-settings"):
                    yield RecipeForm(more, id="more-form")
                yield self._row(
                    "output",
                    Input(placeholder="runs/<model>-<method>-<time>", id="output", compact=True),
                )
                yield Static("", id="estimate-line")
                yield Static("", id="form-error")
                yield Button("Start training (ctrl+s)", variant="success", id="start")
            with VerticalScroll(id="preview-col"):
                yield Static("Tab moves between fields; each field's help shows here.", id="field-help")
                yield Static("", id="estimate")
                yield Static("Pick a model and a dataset to preview it.", id="data-summary")
                yield LengthHistogram(id="histogram")
                yield TokenView(id="first-example")
        yield Footer()

    @staticmethod
    def _row(label: str, editor: Widget) -> Horizontal:
        editor.tooltip = PICKER_HELP.get(editor.id or "", None)
        return Horizontal(Label(label, classes="field-label"), editor, classes="field-row")

    def on_mount(self) -> None:
        self.initial_values = self.values()  # Esc asks before discarding anything changed since
        self.sub_title = f"runs go to {self.app.display_path(self.runs_root)}/"
        self.query_one("#estimate", Static).border_title = "Estimate"
        self.query_one("#data-summary", Static).border_title = "Dataset"
        self.update_estimate()

    # ------------------------------------------------------------ values
    def values(self) -> dict[str, str]:
        values = default_values()
        values.update(self.query_one("#main-form", RecipeForm).values())
        values.update(self.query_one("#more-form", RecipeForm).values())
        values["model"] = self.query_one("#model-path", Input).value.strip()
        values["data.train"] = self.query_one("#data-path", Input).value.strip()
        values["output"] = self.query_one("#output", Input).value.strip()
        return values

    def load_recipe_values(self, path: Path) -> None:
        try:
            values = recipe_file_values(path)
        except MlxsftError as exc:
            self.notify(str(exc), severity="error")
            return
        self.query_one("#main-form", RecipeForm).set_values(values)
        self.query_one("#more-form", RecipeForm).set_values(values)
        self.query_one("#model-path", Input).value = values.get("model", "")
        self.query_one("#data-path", Input).value = values.get("data.train", "")
        self.notify(f"Loaded {self.app.display_path(path)}.")

    # ------------------------------------------------------------ reacting
    def on_select_changed(self, event: Select.Changed) -> None:
        if event.value is Select.NULL:
            return
        target = event.select.id
        if target == "recipe-select":
            self.load_recipe_values(Path(str(event.value)))
        elif target == "model-select":
            self.query_one("#model-path", Input).value = str(event.value)
        elif target == "data-select":
            self.query_one("#data-path", Input).value = str(event.value)
        else:
            self.schedule_preview(event.select.id)

    def on_input_changed(self, event: Input.Changed) -> None:
        self.schedule_preview(event.input.id)

    def schedule_preview(self, changed: str | None) -> None:
        self.update_estimate()
        if changed in (
            "model-path",
            "data-path",
            "field-data--mask",
            "field-train--max-seq-length",
            None,
        ):
            if self._preview_timer is not None:
                self._preview_timer.stop()
            self._preview_timer = self.set_timer(PREVIEW_DELAY_S, self.start_preview)

    def field_help(self, widget: Widget) -> str | None:
        """The recipe field or picker `widget` edits, in words (F1 shows it too)."""
        help_line = PICKER_HELP.get(widget.id or "")
        for form in self.query(RecipeForm):
            spec = form.spec_for(widget)
            if spec is not None:
                default = "none" if spec.default is None else spec.default
                choices = f" One of: {', '.join(spec.choices)}." if spec.choices else ""
                help_line = f"{spec.name}: {spec.help}{choices} (default: {default})"
        return help_line

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        help_line = self.field_help(event.widget)
        if help_line:
            self.query_one("#field-help", Static).update(help_line)

    # ------------------------------------------------------------ preview
    def start_preview(self) -> None:
        values = self.values()
        self.preview_token += 1
        if not values["model"] or not values["data.train"]:
            return
        self.query_one("#data-summary", Static).update("reading the dataset…")
        self.load_preview(
            self.preview_token,
            values["model"],
            values["data.train"],
            values["data.mask"] or "assistant",
            values.get("data.multi_turn") or "auto",
        )

    @work(thread=True, exclusive=True, group="preview")
    def load_preview(self, token: int, model: str, data: str, mask: str, multi_turn: str = "auto") -> None:
        project = self.app.project_dir
        data_path = Path(data) if Path(data).is_absolute() else project / data
        preview, error = None, None
        try:
            model_dir = resolve_model(model, project)  # a folder, or a hub id pulled into the store
            if not (model_dir / "config.json").is_file():
                raise MlxsftError("the preview needs a local model folder (for its tokenizer).", path=model)
            if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
                raise MlxsftError("no tokenizer files in this model folder, so no preview.", path=model)
            tokenizer = self.tokenizers.get(str(model_dir))
            if tokenizer is None:
                tokenizer = self.tokenizers[str(model_dir)] = load_preview_tokenizer(model_dir)
            preview = preview_dataset(data_path, tokenizer, mask, multi_turn)
        except MlxsftError as exc:
            error = str(exc)
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.app.call_from_thread(self.show_preview, token, preview, error)

    def show_preview(self, token: int, preview: DatasetPreview | None, error: str | None) -> None:
        if token != self.preview_token or not self.is_attached:
            return  # a newer preview is on its way, or the screen is gone
        self.preview, self.preview_error = preview, error
        try:
            summary = self.query_one("#data-summary", Static)
        except NoMatches:  # the screen is being torn down
            return
        summary.set_class(error is not None, "error")
        max_len = self._max_seq_length()
        if preview is None:
            summary.update(error or "")
            self.query_one(LengthHistogram).update("")
            self.query_one(TokenView).update("")
        else:
            summary.update(preview.summary(max_len))
            self.query_one(LengthHistogram).show(preview.lengths, max_len)
            self.query_one(TokenView).show(
                preview.first_spans, self.app.display_path(Path(preview.first_where)), preview.first_layout
            )
        self.update_estimate()

    def _max_seq_length(self) -> int:
        try:
            return int(self.values()["train.max_seq_length"])
        except ValueError:
            return 2048

    # ------------------------------------------------------------ estimate
    def update_estimate(self) -> None:
        """Check the form now; compute the estimate (the core's models.fit) in a worker."""
        box = self.query_one("#estimate", Static)
        line = self.query_one("#estimate-line", Static)
        box.set_class(False, "error")
        self.estimate_token += 1
        try:
            recipe = build_recipe(self.values())
        except MlxsftError as exc:
            message = str(exc).replace("the New run form: ", "")
            box.update(f"Fix this before starting:\n{message}")
            box.set_class(True, "error")
            line.update("")
            return
        try:
            model_dir = resolve_model(recipe.model, self.app.project_dir)
        except MlxsftError as exc:
            box.update(f"No estimate: {exc}")
            line.update("")
            return
        p = self.preview
        if p is not None:
            data = DataShape(
                p.num_rows,
                p.num_valid_rows or 0,
                p.mean_length,
                max(p.lengths, default=1),
                sum(p.trained_tokens) / max(sum(p.lengths), 1),
            )
        else:
            t = recipe.train.max_seq_length
            data = DataShape(0, 0, t, t)
        self.compute_estimate(self.estimate_token, recipe, model_dir, data)

    @work(thread=True, exclusive=True, group="estimate")
    def compute_estimate(self, token: int, recipe, model_dir: Path, data: DataShape) -> None:
        app = self.app
        speeds = app.measured_speeds  # a local: the Runs screen may reset the app's copy meanwhile
        if speeds is None:
            speeds = app.measured_speeds = measured_speeds(self.runs_root_abs(), app.project_dir)
        try:
            estimate = estimate_for(recipe, model_dir, data, speeds, app.matmul_flops_per_s)
            if not estimate.seconds and app.matmul_flops_per_s is None:
                app.call_from_thread(self.show_estimate, token, estimate, None)
                from mlxsft.models.measure import matmul_flops

                app.matmul_flops_per_s = matmul_flops("float32")  # once per session, ~1 s
                estimate = estimate_for(recipe, model_dir, data, speeds, app.matmul_flops_per_s)
        except MlxsftError as exc:
            app.call_from_thread(self.show_estimate, token, None, f"No estimate: {exc}")
            return
        except (OSError, ValueError, KeyError) as exc:
            app.call_from_thread(
                self.show_estimate, token, None, f"No estimate: the model folder could not be read ({exc})."
            )
            return
        app.call_from_thread(self.show_estimate, token, estimate, None)

    def runs_root_abs(self) -> Path:
        root = self.runs_root
        return root if root.is_absolute() else self.app.project_dir / root

    def show_estimate(self, token: int, estimate: RunEstimate | None, error: str | None) -> None:
        if token != self.estimate_token or not self.is_attached:
            return  # the form changed since, or the screen is gone
        self.estimate = estimate
        try:
            box = self.query_one("#estimate", Static)
        except NoMatches:  # the screen is being torn down
            return
        line = self.query_one("#estimate-line", Static)
        if estimate is None:
            box.update(error or "")
            line.update("")
            return
        box.update(estimate.describe() + ("" if self.preview else "\n(no dataset yet: rows taken as max length)"))
        time = f"~{format_duration(estimate.seconds)}" if estimate.seconds else "timing…"
        line.update(f"estimate: ~{estimate.memory_gb:.2f} GB, {time} for {estimate.steps} steps (models fit)")

    # ------------------------------------------------------------ start
    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "start":
            self.action_start()

    def run_dir_for(self, values: dict[str, str]) -> Path:
        if values["output"]:
            out = Path(values["output"])
            return out if out.is_absolute() else self.app.project_dir / out
        recipe = build_recipe({**values, "output": ""})
        root = self.runs_root if self.runs_root.is_absolute() else self.app.project_dir / self.runs_root
        return default_run_dir(root, recipe)

    def action_back(self) -> None:
        from .confirm import ConfirmScreen

        if self.values() == self.initial_values:
            self.app.pop_screen()
            return
        self.app.push_screen(
            ConfirmScreen("Discard this form? The values you changed are not kept.", yes="Discard"),
            lambda yes: self.app.pop_screen() if yes else None,
        )

    def action_start(self) -> None:
        from .confirm import ConfirmScreen

        note = self.app.training_note()
        if note is None:
            self.start()
            return
        self.app.push_screen(
            ConfirmScreen(f"Start another run?\n\n{note}", yes="Start"), lambda yes: self.start() if yes else None
        )

    def start(self) -> None:
        from .live_run import LiveRunScreen

        error = self.query_one("#form-error", Static)
        values = self.values()
        try:
            run_dir = self.run_dir_for(values)
            if RunDir(run_dir).exists() or (run_dir / LAUNCH_RECIPE).exists():
                raise MlxsftError("this folder already holds a run; choose another output.", path=str(run_dir))
            recipe = build_recipe({**values, "output": self.app.display_path(run_dir)})
        except MlxsftError as exc:
            error.update(str(exc))
            self.notify(str(exc), severity="error")
            return
        error.update("")
        recipe_path = write_launch_recipe(recipe, run_dir, self.app.display_path(run_dir))
        self.app.add_trainer(train_recipe(recipe_path, run_dir, cwd=self.app.project_dir))
        self.notify(f"Training started: {self.app.display_path(run_dir)}")
        self.app.switch_screen(LiveRunScreen(run_dir))
