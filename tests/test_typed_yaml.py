"""The one typed YAML loader: recipes, evaluation suites and rule files read numbers, lines and types alike."""

from dataclasses import dataclass, field

import pytest

from mlxsft.errors import MlxsftError
from mlxsft.judge.commands import load_rule
from mlxsft.judge.suite import SuiteError, load_suite
from mlxsft.typed_yaml import Where, build_dataclass, coerce, read_yaml_mapping


def test_suite_reads_exponent_without_a_dot_as_a_number(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text("temperature: 1e-5\ntop_p: 5e-1\n")
    suite = load_suite(path)
    assert suite.temperature == pytest.approx(1e-5) and isinstance(suite.temperature, float)
    assert suite.top_p == 0.5


def test_rule_file_reads_exponent_without_a_dot_as_a_number(tmp_path):
    path = tmp_path / "rule.yaml"
    path.write_text("within: 5e-2\ndev_tolerance: 1e-3\n")
    rule = load_rule(str(path), {})
    assert rule.within == pytest.approx(0.05) and rule.dev_tolerance == pytest.approx(1e-3)


def test_suite_errors_name_file_and_line(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text("k: 2\nmax_tokens: 8\nk: 3\n")
    with pytest.raises(SuiteError, match=r"suite.yaml:3: 'k' is given twice \(also on line 1\)"):
        load_suite(path)
    path.write_text("k: 2\ntemperature: hot\n")
    with pytest.raises(SuiteError, match=r"suite.yaml:2: 'temperature' must be a number, got 'hot'"):
        load_suite(path)
    path.write_text("k: [1\n")
    with pytest.raises(SuiteError, match=r"suite.yaml:\d+: invalid YAML"):
        load_suite(path)
    path.write_text("source: other.yaml\n")
    with pytest.raises(SuiteError, match="unknown key 'source'"):
        load_suite(path)


@dataclass
class _Inner:
    rate: float = 0.1
    names: tuple[str, ...] = ()


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)
    mode: str = field(default="a", metadata={"choices": ("a", "b")})


def test_build_dataclass_nests_checks_choices_and_locates_keys(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("mode: b\ninner:\n  rate: 2e-4\n  names: q, v\n")
    raw, lines = read_yaml_mapping(path, MlxsftError, "missing", "not a mapping")
    assert lines == {"mode": 1, "inner": 2, "inner.rate": 3, "inner.names": 4}
    built = build_dataclass(_Outer, raw, Where(str(path), lines))
    assert built == _Outer(_Inner(2e-4, ("q", "v")), "b")
    path.write_text("mode: c\n")
    raw, lines = read_yaml_mapping(path, MlxsftError, "missing", "not a mapping")
    with pytest.raises(MlxsftError, match=r"x.yaml:1: 'mode' must be one of a, b"):
        build_dataclass(_Outer, raw, Where(str(path), lines))
    with pytest.raises(MlxsftError, match="missing"):
        read_yaml_mapping(tmp_path / "absent.yaml", MlxsftError, "missing", "not a mapping")


def test_coerce_refuses_bools_as_numbers_and_reads_lists():
    with pytest.raises(TypeError, match="an integer"):
        coerce(True, int)
    assert coerce(3, float) == 3.0 and isinstance(coerce(3, float), float)
    assert coerce(["a", "b"], tuple[str, ...]) == ("a", "b")
    assert coerce({"type": "object"}, str | dict | None) == {"type": "object"}


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_method_dpo_points_at_objective_with_the_line(tmp_path, objective):
    """`method: dpo` (the spelling other tools use) fails with the key that does it, and its line."""
    from mlxsft.config import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: m\ndata:\n  train: t.jsonl\nmethod: {objective}\n")
    with pytest.raises(MlxsftError) as info:
        load_recipe(recipe)
    assert f"objective: {objective}" in str(info.value)
    assert ":4" in str(info.value)
