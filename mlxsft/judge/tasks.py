"""Task checks on sampled completions, and the metrics of a set of prompts' samples.

A completion can be checked by exact match against the row's reference, JSON
validity, a JSON schema (`jsonschema`), a regular expression, and a user verifier:
a Python file defining `verify(prompt, completion, row) -> bool` (their own code,
imported as is). pass@1 and pass@k use the strongest check available, in the order
verifier, schema, regex, exact match.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MlxsftError
from ..generate import Sample
from . import metrics as M
from .sampling import Prompt


@dataclass
class TaskChecks:
    """Which checks apply to this suite and data, and how each judges a completion."""

    exact: bool = False
    json: bool = False
    schema: dict | None = None
    regex: re.Pattern | None = None
    verifier: Callable | None = None
    verifier_errors: list[str] = field(default_factory=list)

    def judge(self) -> str | None:
        """The check that decides pass@k."""
        for name, on in (
            ("verifier", self.verifier),
            ("schema", self.schema),
            ("regex", self.regex),
            ("exact_match", self.exact),
        ):
            if on is not None and on is not False:
                return name
        return None

    def check(self, prompt: Prompt, sample: Sample) -> dict[str, bool]:
        text = sample.text
        out: dict[str, bool] = {}
        if self.exact and prompt.reference is not None:
            out["exact_match"] = M.exact_match(text, prompt.reference)
        if self.json or self.schema is not None:
            ok, value = M.parse_json(text)
            if self.json:
                out["json_valid"] = ok
            if self.schema is not None:
                out["schema"] = ok and _schema_ok(self.schema, value)
        if self.regex is not None:
            out["regex"] = self.regex.search(text) is not None
        if self.verifier is not None:
            out["verifier"] = self._verify(prompt, text)
        return out

    def _verify(self, prompt: Prompt, completion: str) -> bool:
        try:
            return bool(self.verifier(prompt.text, completion, prompt.row))
        except Exception as exc:  # the user's code: any failure is a failed check, reported
            if len(self.verifier_errors) < 5:
                self.verifier_errors.append(f"{prompt.where}: {type(exc).__name__}: {exc}")
            return False


def _schema_ok(schema: dict, value) -> bool:
    import jsonschema

    return jsonschema.Draft202012Validator(schema).is_valid(value)


def load_schema(schema: str | dict | None) -> dict | None:
    if schema is None or isinstance(schema, dict):
        _check_schema(schema, "<suite>")
        return schema
    path = Path(schema)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MlxsftError("JSON schema file not found; check 'schema' in the suite.", path=str(path)) from None
    except json.JSONDecodeError as exc:
        raise MlxsftError(f"the JSON schema is not valid JSON ({exc.msg}).", path=str(path), line=exc.lineno) from None
    _check_schema(value, str(path))
    return value


def _check_schema(schema, where: str) -> None:
    if schema is None:
        return
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise MlxsftError(f"not a valid JSON schema: {exc.message}.", path=where) from None


def load_verifier(path: str | None) -> Callable | None:
    """`verify` from the user's Python file (their code, imported as a module)."""
    if path is None:
        return None
    spec = importlib.util.spec_from_file_location("mlxsft_user_verifier", path)
    if spec is None or spec.loader is None:
        raise MlxsftError("cannot import this verifier; it must be a .py file.", path=path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # their code failed on import: say where
        raise MlxsftError(f"importing the verifier failed: {type(exc).__name__}: {exc}", path=path) from None
    verify = getattr(module, "verify", None)
    if not callable(verify):
        raise MlxsftError("the verifier file must define verify(prompt, completion, row) -> bool.", path=path)
    return verify


def build_checks(suite, prompts: Sequence[Prompt]) -> TaskChecks:
    references = [p.reference for p in prompts if p.reference is not None]
    want_json = suite.json is True or (suite.json == "auto" and M.looks_like_json(references))
    return TaskChecks(
        exact=bool(references),
        json=want_json,
        schema=load_schema(suite.schema),
        regex=_compile(suite.regex, suite.source),
        verifier=load_verifier(suite.verifier),
    )


def _compile(pattern: str | None, where: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise MlxsftError(f"'regex' is not a valid regular expression: {exc}.", path=where) from None


CHECK_METRICS = {
    "exact_match": "exact_match",
    "json_valid": "json_valid",
    "schema": "schema_valid",
    "regex": "regex_pass",
    "verifier": "verifier_pass",
}


def check_all(
    prompts: Sequence[Prompt], samples: Sequence[Sequence[Sample]], checks: TaskChecks
) -> list[list[dict[str, bool]]]:
    """Every check of every sample, once (a user verifier may be slow): [prompt][sample]."""
    return [[checks.check(p, s) for s in group] for p, group in zip(prompts, samples, strict=True)]


def output_metrics(
    samples: Sequence[Sequence[Sample]],
    k: int,
    judged: Sequence[Sequence[dict[str, bool]]] | None = None,
    judge: str | None = None,
) -> dict[str, float | None]:
    """Distribution metrics of the samples ([prompt][sample]), and task metrics from their
    check results (`check_all`); pass@1 and pass@k count the `judge` check."""
    flat = [s for group in samples for s in group]
    entropies = [h for s in flat for h in s.entropies]
    texts = [s.text for s in flat]
    out: dict[str, float | None] = {
        "entropy": M.mean_or_none(entropies),
        "distinct_1": M.distinct_n([s.ids for s in flat], 1),
        "distinct_2": M.distinct_n([s.ids for s in flat], 2),
        "self_similarity": M.mean_or_none([M.self_similarity([s.ids for s in g]) for g in samples]),
        "mean_length": M.mean_or_none([len(s.ids) for s in flat]),
        "template_start_share": M.template_share(texts)[0],
        "template_end_share": M.template_share(texts, at_end=True)[0],
    }
    if judged is None:
        return out
    for check, metric in CHECK_METRICS.items():
        values = [r[check] for group in judged for r in group if check in r]
        out[metric] = sum(values) / len(values) if values else None
    if judge is not None:
        counts = [(len(group), sum(r[judge] for r in group)) for group in judged if group and judge in group[0]]
        out["pass_at_1"] = M.mean_pass_at_k(counts, 1)
        out["pass_at_k"] = M.mean_pass_at_k(counts, k)
    return out


def per_prompt_values(
    samples: Sequence[Sequence[Sample]],
    k: int,
    judged: Sequence[Sequence[dict[str, bool]]] | None = None,
    judge: str | None = None,
) -> dict[str, list[float | None]]:
    """The output metrics of each prompt on its own: the verdict's noise model resamples them."""
    out: dict[str, list[float | None]] = {
        "entropy": [M.mean_or_none([h for s in group for h in s.entropies]) for group in samples],
        "distinct_2": [M.distinct_n([s.ids for s in group], 2) for group in samples],
    }
    if judged is not None and judge is not None:
        counts = [(len(g), sum(r.get(judge, False) for r in g)) for g in judged]
        out["pass_at_1"] = [M.pass_at_k(n, c, 1) if n >= 1 else None for n, c in counts]
        out["pass_at_k"] = [M.pass_at_k(n, c, k) if n >= k else None for n, c in counts]
    return out
