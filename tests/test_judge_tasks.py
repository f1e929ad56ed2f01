"""Task checks and output metrics on hand-made samples (no model), and suite files."""

import json

import pytest

from mlxsft.errors import MlxsftError
from mlxsft.generate import Sample
from mlxsft.judge.sampling import Prompt
from mlxsft.judge.suite import Suite, SuiteError, check_suite, load_suite
from mlxsft.judge.tasks import build_checks, check_all, output_metrics


def sample(text, ids=None, entropies=(1.0,)):
    return Sample(tuple(ids if ids is not None else range(len(text.split()))), text, tuple(entropies))


def test_output_metrics_with_every_check(tmp_path):
    verifier = tmp_path / "verify.py"
    verifier.write_text("def verify(prompt, completion, row):\n    return row['answer'] in completion\n")
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["name"]}))
    prompts = [
        Prompt((1,), "p1", '{"name": "Ann"}', {"answer": "Ann"}),
        Prompt((2,), "p2", '{"name": "Bo"}', {"answer": "Bo"}),
    ]
    samples = [
        [
            sample('{"name": "Ann"}', [1, 2], (0.5, 0.5)),
            sample('{"age": 3}', [1, 3], (1.5,)),
            sample("Ann!", [4]),
        ],
        [sample('{"name": "Bo"}', [5, 6]), sample("nope", [7]), sample("no", [8])],
    ]
    suite = Suite(verifier=str(verifier), schema=str(schema), regex=r"^\{")
    checks = build_checks(suite, prompts)
    assert checks.json and checks.exact and checks.judge() == "verifier"
    m = output_metrics(samples, 3, check_all(prompts, samples, checks), checks.judge())
    assert m["exact_match"] == pytest.approx(2 / 6)
    assert m["json_valid"] == pytest.approx(3 / 6)
    assert m["schema_valid"] == pytest.approx(2 / 6)
    assert m["regex_pass"] == pytest.approx(3 / 6)
    assert m["verifier_pass"] == pytest.approx(3 / 6)  # Ann in two of prompt 1's, Bo in one of prompt 2's
    assert m["pass_at_1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["pass_at_k"] == 1.0
    # entropy is a mean over tokens, not over samples
    assert m["entropy"] == pytest.approx((0.5 + 0.5 + 1.5 + 1.0 * 4) / 7)
    assert m["mean_length"] == pytest.approx(9 / 6)
    assert m["distinct_1"] == pytest.approx(8 / 9)
    assert 0 <= m["self_similarity"] <= 1


def test_verifier_errors_count_as_failures_and_are_reported(tmp_path):
    verifier = tmp_path / "verify.py"
    verifier.write_text("def verify(prompt, completion, row):\n    return row['missing']\n")
    prompts = [Prompt((1,), "p", "x", {}, where="valid.jsonl:1")]
    checks = build_checks(Suite(verifier=str(verifier)), prompts)
    samples = [[sample("x")]]
    m = output_metrics(samples, 1, check_all(prompts, samples, checks), checks.judge())
    assert m["verifier_pass"] == 0.0 and m["exact_match"] == 1.0
    assert checks.verifier_errors and "valid.jsonl:1: KeyError" in checks.verifier_errors[0]


def test_bad_verifier_schema_and_regex_are_clear_errors(tmp_path):
    prompts = [Prompt((1,), "p", "x", {})]
    broken = tmp_path / "broken.py"
    broken.write_text("import nonexistent_module_xyz\n")
    with pytest.raises(MlxsftError, match="importing the verifier failed"):
        build_checks(Suite(verifier=str(broken)), prompts)
    no_fn = tmp_path / "nofn.py"
    no_fn.write_text("x = 1\n")
    with pytest.raises(MlxsftError, match="must define verify"):
        build_checks(Suite(verifier=str(no_fn)), prompts)
    with pytest.raises(MlxsftError, match="not a valid JSON schema"):
        build_checks(Suite(schema={"type": 12}), prompts)
    with pytest.raises(MlxsftError, match="regular expression"):
        build_checks(Suite(regex="(unclosed"), prompts)


def test_load_suite_resolves_paths_and_reports_bad_keys(tmp_path):
    (tmp_path / "verify.py").write_text("def verify(p, c, r):\n    return True\n")
    path = tmp_path / "suite.yaml"
    path.write_text("k: 2\ntemperature: 0\nverifier: verify.py\nmetrics: [fit, output]\n")
    suite = load_suite(path)
    assert suite.k == 2 and suite.temperature == 0.0 and suite.verifier == str(tmp_path / "verify.py")
    assert suite.wants("fit") and not suite.wants("regression")
    path.write_text("k: 2\nsamples: 3\n")
    with pytest.raises(SuiteError, match=r"suite.yaml:2: unknown key 'samples'"):
        load_suite(path)
    path.write_text("k: two\n")
    with pytest.raises(SuiteError, match="'k' must be an integer"):
        load_suite(path)
    path.write_text("metrics: [fit, vibes]\n")
    with pytest.raises(SuiteError, match="unknown groups"):
        load_suite(path)
    with pytest.raises(SuiteError, match="not found"):
        load_suite(tmp_path / "missing.yaml")
    with pytest.raises(SuiteError, match="top_p"):
        check_suite(Suite(top_p=0.0))
