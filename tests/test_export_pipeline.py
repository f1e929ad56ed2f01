"""The one exporter: `export_run` over the `Format` protocol, the registry, `verify`'s dispatch, the import graph.

The formats here are small test formats: one whose artifact reads back as the trained
adapter (parity passes), one whose artifact reads back as the bare base (parity fails:
the adapter's effect is far beyond tolerance), and one whose write raises. They show
that the pipeline, not each format, makes an export atomic.
"""

import ast
import json
from pathlib import Path

import pytest

from mlxsft.export import ExportError, export_mlx_adapter, verify_export
from mlxsft.export import registry as registry_module
from mlxsft.export.commands import FORMATS as CLI_FORMATS
from mlxsft.export.mlx_adapter import MLX
from mlxsft.export.parity import Candidate, trained_reference
from mlxsft.export.pipeline import export_run
from mlxsft.export.registry import FORMATS
from mlxsft.export.source import load_base_as_trained, load_trained

from .export_fixtures import make_run

EXPORT_DIR = Path(__file__).resolve().parents[1] / "mlxsft" / "export"


@pytest.fixture(scope="module")
def run(tiny_llama, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("pipeline") / "run", tiny_llama, layers=1, steps=(1,))


class NoteFormat:
    """Writes `note.txt` holding `text` (or one file with it); reads back as the trained model,
    or as the bare base when `broken` (a wrong artifact); raises in write when `crash`."""

    name = "note"
    parity_names = ("parity.json",)

    def __init__(self, text: str, *, single_file: bool = False, broken: bool = False, crash: bool = False):
        self.text, self.single_file, self.broken, self.crash = text, single_file, broken, crash
        self.calls: list[str] = []

    def plan(self, job):
        self.calls.append("plan")
        return f"note export to {job.out}"

    def reference(self, job):
        self.calls.append("reference")
        return trained_reference(job.source)

    def write(self, job, path):
        self.calls.append("write")
        (path if self.single_file else path / "note.txt").write_text(self.text)
        if self.crash:
            raise RuntimeError("the format failed half-way")
        return f"wrote {job.out}"

    def load(self, path, source):
        self.calls.append("load")
        loaded = load_base_as_trained(source) if self.broken else load_trained(source)
        return Candidate(loaded.model, "float32")


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Names in `folder` other than `keep` (staging folders, temp parity files)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_a_passing_format_is_committed_with_its_parity_report(run, tmp_path):
    fmt = NoteFormat("first")
    out = export_run(fmt, run, tmp_path / "out")
    assert fmt.calls == ["plan", "reference", "write", "load"]
    assert (out / "note.txt").read_text() == "first"
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["format"] == "note" and report["max_abs_diff"] < 1e-5
    assert leftovers(tmp_path, set()) == ["out"]


def test_failed_parity_leaves_no_target_and_keeps_an_existing_one(run, tmp_path):
    with pytest.raises(ExportError, match="does not reproduce the trained adapter.*Nothing was written"):
        export_run(NoteFormat("bad", broken=True), run, tmp_path / "new")
    assert leftovers(tmp_path, set()) == []

    out = export_run(NoteFormat("first"), run, tmp_path / "out")
    before = (out / "parity.json").read_text()
    with pytest.raises(ExportError, match="does not reproduce"):
        export_run(NoteFormat("second", broken=True), run, out, force=True)
    assert (out / "note.txt").read_text() == "first" and (out / "parity.json").read_text() == before
    assert leftovers(tmp_path, set()) == ["out"]


def test_failed_parity_of_a_single_file_leaves_neither_file_nor_report(run, tmp_path):
    out = export_run(NoteFormat("first", single_file=True), run, tmp_path / "a.gguf")
    parity = tmp_path / "a.gguf.parity.json"
    assert out.read_text() == "first" and json.loads(parity.read_text())["passed"]
    before = parity.read_text()
    with pytest.raises(ExportError, match="does not reproduce"):
        export_run(NoteFormat("second", single_file=True, broken=True), run, out, force=True)
    assert out.read_text() == "first" and parity.read_text() == before
    with pytest.raises(ExportError, match="does not reproduce"):
        export_run(NoteFormat("x", single_file=True, broken=True), run, tmp_path / "b.gguf")
    assert leftovers(tmp_path, set()) == ["a.gguf", "a.gguf.parity.json"]


def test_a_write_that_raises_leaves_no_target_and_keeps_an_existing_one(run, tmp_path):
    crash = NoteFormat("half", crash=True)
    with pytest.raises(RuntimeError, match="half-way"):
        export_run(crash, run, tmp_path / "new")
    assert "load" not in crash.calls and leftovers(tmp_path, set()) == []

    out = export_run(NoteFormat("first"), run, tmp_path / "out", verify=False)
    assert json.loads((out / "parity.json").read_text())["skipped"]
    with pytest.raises(RuntimeError, match="half-way"):
        export_run(NoteFormat("half", crash=True), run, out, force=True, verify=False)
    assert (out / "note.txt").read_text() == "first"
    assert leftovers(tmp_path, set()) == ["out"]


def test_the_registry_lists_every_format_the_cli_and_tui_offer():
    from mlxsft.tui.export_job import FORMATS as TUI_FORMATS

    offered = set(CLI_FORMATS) | {"fused"}  # `mlxsft fuse` is the fused format
    assert set(FORMATS) == offered == set(TUI_FORMATS)
    for name, fmt in FORMATS.items():
        assert fmt.name == name
        assert all(callable(getattr(fmt, step)) for step in ("plan", "reference", "write", "load"))
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        registry_module.get_format("onnx")


class Spy:
    """A registered format that records which of its steps `verify` called, then delegates."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.single_file, self.parity_names = inner.name, inner.single_file, inner.parity_names

    def __getattr__(self, step):
        def call(*args):
            self.calls.append(step)
            return getattr(self.inner, step)(*args)

        return call


def test_verify_dispatches_through_the_registry(run, tmp_path, monkeypatch):
    out = export_mlx_adapter(run, tmp_path / "mlx")
    spy = Spy(MLX)
    monkeypatch.setitem(FORMATS, "mlx", spy)
    report = verify_export(out, run)
    assert report.passed and report.format == "mlx"
    assert sorted(spy.calls) == ["load", "reference"]

    class Broken(Spy):  # the registered format decides what the export reads back as
        def load(self, path, source):
            self.calls.append("load")
            return Candidate(load_base_as_trained(source).model, "float32")

    monkeypatch.setitem(FORMATS, "mlx", Broken(MLX))
    with pytest.raises(ExportError, match="does not reproduce"):
        verify_export(out, run)
    assert json.loads((out / "parity.json").read_text())["passed"] is False


# ---------------------------------------------------------------- the import graph of export/


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(sibling modules imported at module level, modules imported inside functions: '.x' for relative ones)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, local = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ["." * node.level + (node.module or "")]
            if node.level == 1 and node in tree.body:
                top.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        else:
            continue
        if node not in tree.body:
            local.extend(names)
    return top, local


def test_export_modules_import_each_other_without_a_circle():
    graph, local = {}, {}
    for path in EXPORT_DIR.glob("*.py"):
        graph[path.stem], local[path.stem] = _imports(path)
    siblings = set(graph)
    # inside functions: only optional heavy packages, and the CLI handlers (kept light for --help)
    for module, names in local.items():
        inner = [n for n in names if n.startswith(".")]
        assert module == "commands" or not inner, f"{module} imports {inner} inside a function"

    def visit(node, path):
        assert node not in path, f"import circle: {' -> '.join([*path, node])}"
        for nxt in sorted(graph[node] & siblings):
            visit(nxt, [*path, node])

    for module in graph:
        visit(module, [])


def test_nothing_below_the_wings_imports_export_and_import_adapter_skips_the_trainer():
    package = EXPORT_DIR.parent
    wings = ("export", "judge", "bench", "models", "cli.py")
    below = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] not in wings]
    for path in below:
        text = path.read_text(encoding="utf-8")
        assert "from .export" not in text and "from ..export" not in text and "mlxsft.export" not in text, path
    tree = ast.parse((EXPORT_DIR / "import_adapter.py").read_text(encoding="utf-8"))
    modules = {"." * n.level + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "..train.checkpoint" in modules  # the checkpoint format's writer: reused, not copied
    assert not modules & {"..train", "..train.loop"}  # the training loop itself is not involved
