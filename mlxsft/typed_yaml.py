"""Typed YAML: files and values read into dataclasses, with errors that name the file and line.

The one loader behind recipes (`config.py`), evaluation suites (`judge/suite.py`) and rule
files (`judge/verdict.py`):
- `YamlLoader` reads `1e-5` (no dot) as a float, as YAML 1.2 does (PyYAML reads a string);
- `read_yaml_mapping` reads a file into a dict plus the line of every dotted key, refusing
  a key given twice, invalid YAML (with its line), non-UTF-8 text and a non-mapping;
- `coerce` checks one value against a type hint; `build_dataclass` builds a (nested)
  dataclass, naming the unknown key or the wrong type with its file and line.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import MlxsftError


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that reads 1e-5 (no dot) as a float, as YAML 1.2 does."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml_value(text: str) -> Any:
    """Parse one scalar or flow value the way recipes are parsed (for --set)."""
    return yaml.load(text, Loader=YamlLoader)


def key_lines(node, prefix: str = "", source: str = "<yaml>", error: type[MlxsftError] = MlxsftError) -> dict[str, int]:
    """Map dotted keys to their 1-based line in the YAML source; a key given twice is an error."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            line = key_node.start_mark.line + 1
            if key in lines:  # PyYAML would keep the last silently
                raise error(
                    f"'{key}' is given twice (also on line {lines[key]}); keep one of them.",
                    path=source,
                    line=line,
                )
            lines[key] = line
            lines.update(key_lines(value_node, key + ".", source, error))
    return lines


def read_yaml_mapping(
    path: str | Path, error: type[MlxsftError], missing: str, not_mapping: str
) -> tuple[dict, dict[str, int]]:
    """Read a YAML file holding a mapping into a plain dict, with the line of each dotted key.

    `missing` and `not_mapping` are the messages (what to do) for a file that is not there
    and for YAML that is not a mapping; every error is an `error` naming the file (and line).
    """
    path = Path(path)
    if not path.is_file():
        raise error(missing, path=str(path))
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=YamlLoader)
        raw = yaml.load(text, Loader=YamlLoader)
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text ({exc.reason}); save it as UTF-8.", path=str(path)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error(f"invalid YAML: {problem}.", path=str(path), line=line) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise error(not_mapping, path=str(path))
    return raw, key_lines(node, source=str(path), error=error) if node is not None else {}


# ---------------------------------------------------------------- building dataclasses

_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}


def type_name(tp) -> str:
    return _TYPE_WORDS.get(tp) or getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp) -> Any:
    """Return `value` as type `tp`, or raise TypeError with what was expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option)
            except TypeError:
                continue
        raise TypeError(" or ".join(type_name(o) for o in options))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError("a string")
    if tp is dict:
        if isinstance(value, dict):
            return value
        raise TypeError("a mapping")
    if tp is list or origin is list or origin is tuple:
        wrap = tuple if origin is tuple else list
        if isinstance(value, str):
            return wrap(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return wrap(value)
        raise TypeError("a list of strings")
    raise TypeError(type_name(tp))


class Where:
    """Where a dotted key was given: its line in a YAML file, or the command-line flag that set it."""

    def __init__(self, source: str, lines: dict[str, int] | None = None, origins: dict[str, str] | None = None):
        self.source, self.lines, self.origins = source, lines or {}, origins or {}

    def __call__(self, key: str) -> dict:
        parts = key.split(".")
        for n in range(len(parts), 0, -1):  # an override of `train` covers `train.iters`
            origin = self.origins.get(".".join(parts[:n]))
            if origin is not None:
                return {"path": origin, "line": None}
        return {"path": self.source, "line": self.lines.get(key)}


def build_dataclass(
    cls, raw: dict, locate: Where, error: type[MlxsftError] = MlxsftError, where: str = "", skip: tuple[str, ...] = ()
):
    """Build dataclass `cls` from `raw`, checking every key and type (nested dataclasses too).

    `where` prefixes dotted keys (`train.`); `skip` names fields a file may not set.
    A field's `choices` metadata, when present, lists its allowed values.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    values = {}
    for key, value in raw.items():
        dotted = f"{where}{key}"
        if key not in names:
            known = ", ".join(names)
            raise error(f"unknown key '{dotted}'. Known keys here: {known}.", **locate(dotted))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise error(
                    f"'{dotted}' must be a mapping of keys ({', '.join(f.name for f in dataclasses.fields(tp))}).",
                    **locate(dotted),
                )
            values[key] = build_dataclass(tp, value, locate, error, dotted + ".")
            continue
        try:
            values[key] = coerce(value, tp)
        except TypeError as exc:
            raise error(f"'{dotted}' must be {exc}, got {value!r}.", **locate(dotted)) from None
        choices = names[key].metadata.get("choices")
        if choices and values[key] not in choices:
            hint = names[key].metadata.get("hints", {}).get(values[key])
            message = f"'{dotted}' must be one of {', '.join(choices)}, got {value!r}."
            raise error(message + (f" ({hint})" if hint else ""), **locate(dotted))
    return cls(**values)
