"""The evaluation suite: what `mlxsft eval` measures, read from an optional YAML file.

Without a file every default applies: prompts are the first 8 validation rows'
prompts, 4 samples each, the general-text probe set shipped in this package, and all
metric groups the data allows. Relative paths in a suite file are resolved against
the file's folder. The file is read by the typed YAML loader (`mlxsft/typed_yaml.py`), so
unknown keys and wrong types are errors naming the file and line, and `1e-5` is a number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MlxsftError
from ..typed_yaml import Where, build_dataclass, read_yaml_mapping

GROUPS = ("fit", "ood", "output", "task", "regression")
PROBES_FILE = Path(__file__).parent / "probes" / "general.jsonl"


class SuiteError(MlxsftError):
    """The evaluation suite file is invalid."""


@dataclass(frozen=True)
class Suite:
    prompts: int | str | list = 8  # N validation rows, a JSONL file of rows, or a list of user messages
    k: int = 4  # samples per prompt
    max_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 1.0  # 1.0: off
    seed: int = 0
    metrics: list = field(default_factory=lambda: list(GROUPS))
    valid: str | None = None  # validation file (default: the recipe's)
    valid_rows: int | None = None  # at most this many validation rows for the loss (None: all)
    ood: str | None = None  # out-of-distribution split (default: the recipe's data.ood)
    probes: str | None = None  # general-text probe JSONL (default: the packaged one)
    probe_rows: int | None = None
    verifier: str | None = None  # Python file defining verify(prompt, completion, row) -> bool
    schema: str | dict | None = None  # JSON schema (file or inline mapping) completions must satisfy
    regex: str | None = None  # a completion passes when re.search(regex, completion) matches
    json: bool | str = "auto"  # JSON-valid rate: true, false, or auto (when references are JSON)
    batch_size: int | None = None  # rows per loss batch (default: the recipe's train.batch_size)
    source: str | None = None  # the suite file, if any (set by load_suite)

    def wants(self, group: str) -> bool:
        return group in self.metrics

    def probes_file(self) -> Path:
        return Path(self.probes) if self.probes else PROBES_FILE

    def fingerprint(self) -> dict:
        """What makes two evaluations comparable: every setting but the file's own name."""
        data = dataclasses.asdict(self)
        data.pop("source")
        return data


_PATH_KEYS = ("valid", "ood", "probes", "verifier")


def load_suite(path: str | Path | None) -> Suite:
    """The defaults, or the settings of a YAML suite file (validated; `1e-5` reads as a number)."""
    if path is None:
        return Suite()
    path = Path(path)
    raw, lines = read_yaml_mapping(
        path,
        SuiteError,
        "suite file not found; check the path given to --suite.",
        "a suite must be a mapping of keys (prompts:, k:, max_tokens:, ...).",
    )
    values = dataclasses.asdict(build_dataclass(Suite, raw, Where(str(path), lines), SuiteError, skip=("source",)))
    values = {key: values[key] for key in raw}
    base = path.parent
    for key in _PATH_KEYS:
        if values.get(key):
            values[key] = str((base / values[key]).expanduser())
    if isinstance(values.get("prompts"), str):
        values["prompts"] = str(base / values["prompts"])
    if isinstance(values.get("schema"), str):
        values["schema"] = str(base / values["schema"])
    suite = Suite(**values, source=str(path))
    check_suite(suite)
    return suite


def check_suite(suite: Suite) -> None:
    """Value checks beyond types."""
    where = suite.source
    unknown = [g for g in suite.metrics if g not in GROUPS]
    if unknown:
        raise SuiteError(f"'metrics' has unknown groups {unknown}; choose from {', '.join(GROUPS)}.", path=where)
    if suite.k < 1 or suite.max_tokens < 1:
        raise SuiteError("'k' and 'max_tokens' must be at least 1.", path=where)
    if suite.temperature < 0 or not 0 < suite.top_p <= 1:
        raise SuiteError("'temperature' must be >= 0 and 'top_p' in (0, 1].", path=where)
    if isinstance(suite.json, str) and suite.json != "auto":
        raise SuiteError(f"'json' must be true, false or auto, got {suite.json!r}.", path=where)
    if isinstance(suite.prompts, int) and suite.prompts < 0:
        raise SuiteError("'prompts' must be a number of rows >= 0, a JSONL file or a list.", path=where)
    if isinstance(suite.prompts, list) and not all(isinstance(p, str) for p in suite.prompts):
        raise SuiteError("'prompts' as a list must hold strings (user messages).", path=where)
    for key in ("verifier", "probes", "valid", "ood"):
        value = getattr(suite, key)
        if value and not Path(value).is_file():
            raise SuiteError(f"'{key}' file not found: {value}.", path=where)
    if isinstance(suite.prompts, str) and not Path(suite.prompts).is_file():
        raise SuiteError(f"'prompts' file not found: {suite.prompts}.", path=where)
