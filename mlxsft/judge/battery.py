"""The evaluation battery: one set of metrics per checkpoint of a run (the base is step 0).

For each checkpoint: fit (validation loss, assistant-token NLL, token accuracy),
generalization (loss on the OOD split), the output distribution of k samples per
prompt (entropy, distinct-n, self-similarity, length, template share), task metrics
(exact match, JSON and schema validity, regex, user verifier, pass@1 and pass@k), and
regression on general text (probe loss relative to the base, KL to the base). Rows
with tags or a bucket get every metric per bucket too. The base model is loaded
once; checkpoints are swapped in as weights (`CheckpointWeights`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx

from ..config import Recipe
from ..data.formats import Example, load_jsonl
from ..data.masking import TokenizedDataset, TokenizedExample, tokenize_dataset
from ..data.splits import pad_token_id, resolve_data_files
from ..errors import MlxsftError
from ..events import CheckpointEvaluated, JsonlSink
from ..generate import Sample, sample_completions
from ..model import load_base
from ..rundir import RunDir
from . import results as R
from .sampling import Prompt, prompts_from_examples, prompts_from_strings
from .scoring import RowScore, loss_plan, score_rows, score_rows_with_kl
from .suite import Suite, check_suite
from .tasks import TaskChecks, build_checks, check_all, output_metrics, per_prompt_values
from .weights import CheckpointWeights, read_adapter_config

SAMPLES_KEPT = 2  # completions per prompt stored in results.json, for people to read
PROMPTS_KEPT = 8


@dataclass
class Bench:
    """Everything loaded once per run: model, weights swapper, data splits, prompts, checks."""

    run: RunDir
    recipe: Recipe
    suite: Suite
    model: object
    tokenizer: object
    weights: CheckpointWeights
    plan: object
    pad_id: int
    batch_size: int
    valid: list[TokenizedExample] = field(default_factory=list)
    assistant: list[TokenizedExample] | None = None  # None: same as `valid` (mask is assistant)
    ood: list[TokenizedExample] = field(default_factory=list)
    probes: list[TokenizedExample] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    checks: TaskChecks | None = None
    notes: list[str] = field(default_factory=list)
    base_probe_loss: float | None = None


# --------------------------------------------------------------------------- setup


def open_bench(run_dir: str | Path, suite: Suite) -> Bench:
    check_suite(suite)
    run = RunDir(run_dir)
    recipe = run.load_recipe()
    steps = run.checkpoint_steps()
    if not steps:
        raise MlxsftError(
            "this run has no checkpoint yet; let it save one (train.steps_per_save) first.",
            path=str(run.path),
        )
    model_path = run.read_meta().get("model_path")
    if model_path and Path(model_path).is_dir():
        recipe = dataclasses.replace(recipe, model=model_path)
    model, tokenizer, _, _ = load_base(recipe)
    weights = CheckpointWeights(model, read_adapter_config(run.checkpoint_dir(steps[0])))
    model.eval()  # no dropout anywhere in evaluation
    bench = Bench(
        run=run,
        recipe=recipe,
        suite=suite,
        model=model,
        tokenizer=tokenizer,
        weights=weights,
        plan=loss_plan(model),
        pad_id=pad_token_id(tokenizer),
        batch_size=suite.batch_size or recipe.train.batch_size,
    )
    _load_splits(bench)
    return bench


def _tokenize(bench: Bench, examples: list[Example], name: str, mask: str) -> list[TokenizedExample]:
    limit = bench.recipe.train.max_seq_length
    data = bench.recipe.data  # the run's own data settings: eval sees rows as training did
    ds: TokenizedDataset = tokenize_dataset(
        examples,
        bench.tokenizer,
        mask=mask,
        max_seq_length=limit,
        multi_turn=data.multi_turn,
        on_bad_row=data.on_bad_row,
        train_reasoning=data.train_reasoning,
    )
    if ds.skipped:
        bench.notes.append(f"{name}: {len(ds.skipped)} rows skipped (e.g. {ds.skipped[0]})")
    for ex in ds.examples:
        if ex.truncated:
            bench.notes.append(
                f"{name}: {ex.path} line {ex.line} truncated to max_seq_length={limit} tokens; its tail is not scored"
            )
    return ds.examples


def _without_end_marker(examples: list[TokenizedExample], tokenizer) -> list[TokenizedExample]:
    """Plain-text probes as the text alone: drop the end marker the data layer appends.

    Training rows get EOS appended so the model learns to stop; a general-text probe
    measures the text. On a base that never saw the chat end marker, scoring it adds
    about 13 nats per row, and fine-tuning then teaches the marker, hiding forgetting.
    """
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for ex in examples:
        if isinstance(eos, int) and len(ex.ids) > 1 and int(ex.ids[-1]) == eos and not ex.truncated:
            ex = dataclasses.replace(ex, ids=ex.ids[:-1], trained=ex.trained[:-1])
        out.append(ex)
    return out


def _load_splits(bench: Bench) -> None:
    suite, recipe = bench.suite, bench.recipe
    files = resolve_data_files(recipe.data)
    valid_file = Path(suite.valid) if suite.valid else files["valid"]
    ood_file = suite.ood or recipe.data.ood
    valid_rows = load_jsonl(valid_file) if valid_file else []
    if suite.valid_rows is not None:
        valid_rows = valid_rows[: suite.valid_rows]
    if suite.wants("fit"):
        if valid_rows:
            bench.valid = _tokenize(bench, valid_rows, "valid", recipe.data.mask)
            if recipe.data.mask != "assistant":
                bench.assistant = _tokenize(bench, valid_rows, "valid (assistant tokens)", "assistant")
        else:
            bench.notes.append("fit: no validation split (data.valid), so no validation loss")
    ood_rows = load_jsonl(ood_file) if ood_file else []
    if suite.wants("ood"):
        if ood_rows:
            bench.ood = _tokenize(bench, ood_rows, "ood", recipe.data.mask)
        else:
            bench.notes.append("ood: no out-of-distribution split (data.ood in the recipe, or ood: in a suite)")
    if suite.wants("regression"):
        probes = load_jsonl(suite.probes_file())
        if suite.probe_rows is not None:
            probes = probes[: suite.probe_rows]
        bench.probes = _without_end_marker(_tokenize(bench, probes, "probes", "none"), bench.tokenizer)
    if (suite.wants("output") or suite.wants("task")) and suite.prompts != 0:
        bench.prompts = _prompts(bench, valid_rows, ood_rows, files["train"])
        if not bench.prompts:
            bench.notes.append("output: no prompts (no chat or prompt/completion rows), so no sampling")
    if suite.wants("task") and bench.prompts:
        bench.checks = build_checks(suite, bench.prompts)


def _prompts(bench: Bench, valid_rows, ood_rows, train_file: Path) -> list[Prompt]:
    prompts = bench.suite.prompts
    if isinstance(prompts, list):
        return prompts_from_strings(prompts, bench.tokenizer)
    if isinstance(prompts, str):
        return prompts_from_examples(load_jsonl(prompts), bench.tokenizer)
    source = valid_rows or ood_rows
    if not source:
        bench.notes.append(
            "prompts come from training rows (no validation split): they measure recall, not generalization"
        )
        source = load_jsonl(train_file)
    return prompts_from_examples(source, bench.tokenizer, limit=prompts)


# --------------------------------------------------------------------------- one checkpoint


def _fit(scores: list[RowScore]) -> tuple[float | None, float | None]:
    tokens = sum(s.tokens for s in scores)
    if not tokens:
        return None, None
    return sum(s.nll for s in scores) / tokens, sum(s.correct for s in scores) / tokens


def _fit_metrics(valid, assistant, ood, probes) -> dict:
    out: dict[str, float | None] = {}
    if valid is not None:
        out["valid_loss"], out["token_accuracy"] = _fit(valid)
        out["assistant_nll"] = _fit(assistant)[0] if assistant is not None else out["valid_loss"]
    if ood is not None:
        out["ood_loss"], out["ood_accuracy"] = _fit(ood)
    if probes is not None:
        out["probe_loss"] = _fit(probes)[0]
        tokens = sum(s.tokens for s in probes)
        out["probe_kl"] = sum(s.kl for s in probes) / tokens if tokens else None
    return out


def _subset(scores, examples, tag) -> list[RowScore] | None:
    if scores is None:
        return None
    return [s for s, ex in zip(scores, examples, strict=True) if tag in ex.tags]


def _buckets(bench: Bench, scores: dict, samples: list[list[Sample]], judged) -> dict[str, dict]:
    tags = sorted({t for ex in bench.valid + bench.ood for t in ex.tags} | {t for p in bench.prompts for t in p.tags})
    buckets = {}
    for tag in tags:
        metrics = _fit_metrics(
            _subset(scores["valid"], bench.valid, tag),
            _subset(scores["assistant"], bench.assistant or [], tag) if scores["assistant"] else None,
            _subset(scores["ood"], bench.ood, tag),
            None,
        )
        chosen = [i for i, p in enumerate(bench.prompts) if tag in p.tags]
        if samples and chosen:
            metrics |= output_metrics(
                [samples[i] for i in chosen],
                bench.suite.k,
                [judged[i] for i in chosen] if judged is not None else None,
                bench.checks.judge() if bench.checks is not None else None,
            )
        buckets[tag] = _clean(metrics)
    return buckets


def _sample_all(bench: Bench) -> list[list[Sample]]:
    s = bench.suite
    return [
        sample_completions(
            bench.model,
            bench.tokenizer,
            p.ids,
            k=s.k,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            seed=s.seed + 7919 * i,
        )
        for i, p in enumerate(bench.prompts)
    ]


def _clean(metrics: dict) -> dict:
    """Plain floats; NaN/inf become None (JSON has no NaN)."""
    return {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in metrics.items()}


def _round(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(f"{value:.6g}")


def _row_values(scores: dict, probes: list[RowScore] | None) -> dict:
    """Per-row sums of every scored split, for the verdict's bootstrap (noise.py)."""
    rows = {}
    for name in ("valid", "ood"):
        if scores.get(name):
            rows[name] = {"nll": [_round(r.nll) for r in scores[name]], "tokens": [r.tokens for r in scores[name]]}
    if probes:
        rows["probes"] = {
            "nll": [_round(r.nll) for r in probes],
            "tokens": [r.tokens for r in probes],
            "kl": [_round(r.kl) for r in probes],
        }
    return rows


def evaluate_checkpoint(bench: Bench, step: int) -> dict:
    """The results entry of checkpoint `step` (0: the base model)."""
    start = time.time()
    folder = bench.run.checkpoint_dir(step) if step else None
    if folder is None:
        bench.weights.use_base()
    else:
        bench.weights.use(folder)
    model, bs, pad = bench.model, bench.batch_size, bench.pad_id
    scores = {
        "valid": score_rows(model, bench.plan, bench.valid, bs, pad) if bench.valid else None,
        "assistant": score_rows(model, bench.plan, bench.assistant, bs, pad) if bench.assistant else None,
        "ood": score_rows(model, bench.plan, bench.ood, bs, pad) if bench.ood else None,
    }
    probes = None
    if bench.probes:
        if folder is None:
            probes = score_rows(model, bench.plan, bench.probes, bs, pad)
        else:
            probes = score_rows_with_kl(
                model,
                bench.probes,
                bs,
                pad,
                bench.weights.use_base,
                lambda: bench.weights.use(folder),
            )
    metrics = _fit_metrics(scores["valid"], scores["assistant"], scores["ood"], probes)
    if probes is not None:
        if folder is None:
            bench.base_probe_loss = metrics["probe_loss"]
        base = bench.base_probe_loss
        metrics["probe_loss_delta"] = metrics["probe_loss"] - base if base is not None else None
    samples = _sample_all(bench) if bench.prompts else []
    judged = check_all(bench.prompts, samples, bench.checks) if samples and bench.checks else None
    judge = bench.checks.judge() if bench.checks is not None else None
    if samples:
        metrics |= output_metrics(samples, bench.suite.k, judged, judge)
    rows = _row_values(scores, probes)
    if samples:
        rows["prompts"] = {
            k: [_round(v) for v in vs] for k, vs in per_prompt_values(samples, bench.suite.k, judged, judge).items()
        }
    entry = {
        "step": step,
        "label": "base" if step == 0 else f"step {step}",
        "metrics": _clean(metrics),
        "buckets": _buckets(bench, scores, samples, judged),
        "samples": [
            {"prompt": p.where, "completions": [s.text[:400] for s in group[:SAMPLES_KEPT]]}
            for p, group in list(zip(bench.prompts, samples, strict=False))[:PROMPTS_KEPT]
        ],
        "rows": rows,
        "elapsed_s": time.time() - start,
    }
    if bench.checks is not None and bench.checks.verifier_errors:
        entry["verifier_errors"] = list(bench.checks.verifier_errors)
        bench.checks.verifier_errors.clear()
    return entry


# --------------------------------------------------------------------------- a run


def parse_checkpoints(spec: str | None, run: RunDir) -> list[int]:
    """Steps named by --checkpoints: 'all', or a comma list of steps, 'base', 'best', 'latest'."""
    have = run.checkpoint_steps()
    if spec is None or spec.strip() == "all":
        return have
    steps = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item == "base":
            continue  # the base is always measured
        if item == "latest":
            step = have[-1] if have else None
        elif item == "best":
            step = run.read_meta().get("best_step")
        else:
            try:
                step = int(item)
            except ValueError:
                raise MlxsftError(
                    f"--checkpoints: '{item}' is not a step; give steps like 100,200, or all, best, latest."
                ) from None
        if step not in have:
            raise MlxsftError(
                f"no checkpoint at step {step if step is not None else item}; this run has "
                f"checkpoints at steps: {', '.join(map(str, have)) or 'none'}.",
                path=str(run.path),
            )
        steps.append(step)
    return sorted(set(steps))


def _event(entry: dict, k: int, path: Path) -> CheckpointEvaluated:
    m = entry["metrics"]
    names = (
        "valid_loss",
        "assistant_nll",
        "token_accuracy",
        "ood_loss",
        "probe_loss",
        "probe_kl",
        "entropy",
        "distinct_2",
        "self_similarity",
        "pass_at_1",
        "pass_at_k",
    )
    return CheckpointEvaluated(
        step=entry["step"],
        label=entry["label"],
        **{n: m.get(n) for n in names},
        k=k,
        elapsed_s=entry["elapsed_s"],
        results_path=str(path),
    )


def evaluate_run(
    run_dir: str | Path,
    suite: Suite,
    checkpoints: str | None = None,
    on_entry: Callable[[dict], None] | None = None,
) -> dict:
    """Evaluate the base and the chosen checkpoints; update RUN/eval/results.json after each one."""
    run = RunDir(run_dir)
    run.require_existing()
    steps = parse_checkpoints(checkpoints, run)
    bench = open_bench(run.path, suite)
    doc = R.new_results(run, suite.fingerprint(), R.read_results(run))
    doc["notes"] = list(bench.notes)
    todo = [0] + steps  # the base first: probe deltas are relative to it
    sink = JsonlSink(run.events_file)
    try:
        for step in todo:
            entry = evaluate_checkpoint(bench, step)
            R.put_checkpoint(doc, entry)
            path = R.write_results(run, doc)
            sink(_event(entry, suite.k, path))
            if on_entry is not None:
                on_entry(entry)
    finally:
        sink.close()
        mx.clear_cache()
    return doc
