"""DPO/ORPO step vs SFT step on the same model and the same rows (chosen + rejected sides as SFT rows).

    PYTHONPATH=$PWD LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        python scripts/bench_preference.py tests/fixtures/tiny_base

Cold: the first step of each side in the process (trace and compile of that shape). Warm: every
batch shape compiled, then 3 interleaved rounds of 40 steps per side; the median is reported
with its ratio to the SFT step measured in the same process. Every side runs as the trainer
runs it (the CPU fast ops on the CPU backend, the LM head on trained positions only); one DPO
side runs the head on full logits, for comparison.
"""

import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxsft.config import recipe_from_dict
from mlxsft.data.batching import collate
from mlxsft.data.preference import collate_pairs, load_pairs
from mlxsft.model import attach_adapters, load_base
from mlxsft.train.cpu_ops import enable_fast_cpu_ops, fast_ops_apply
from mlxsft.train.preference import PreferenceLoss
from mlxsft.train.preference_run import LogpsPass, PairBatch, PreferencePlan
from mlxsft.train.reference import Reference
from mlxsft.train.schedule import build_optimizer
from mlxsft.train.step import build_steps

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "preference" / "train.jsonl"
PAIRS_PER_STEP = 4  # 8 rows


def main(base: str) -> None:
    recipe = recipe_from_dict(
        {"model": base, "data": "x", "lora": {"rank": 8, "alpha": 16}, "train": {"max_seq_length": 256}}
    )
    mx.random.seed(0)
    model, tok, _, _ = load_base(recipe)
    attach_adapters(model, recipe)
    enable_fast_cpu_ops(model)
    fast_ce = fast_ops_apply()
    ds = load_pairs(DATA, tok)
    batches = [list(range(i, i + PAIRS_PER_STEP)) for i in range(0, 40 * PAIRS_PER_STEP, PAIRS_PER_STEP)]
    reference = Reference(model)

    def sft_step():
        steps = build_steps(model, build_optimizer(recipe.train, 1000), 1.0, packed=False, fast_ce=fast_ce)

        def run(idx):
            rows = [ds.pairs[i].chosen for i in idx] + [ds.pairs[i].rejected for i in idx]
            batch = collate(rows, [[k] for k in range(len(rows))], tok.pad_token_id)
            mx.eval(steps.train_step(*steps.plan.arrays(batch)), model.state)
            return batch.num_tokens

        return run

    def preference_step(objective, ref_per_batch, full_logits=False):
        passes = LogpsPass() if full_logits else LogpsPass.for_model(model, fast_ce)  # as the trainer runs it
        plan = PreferencePlan(PreferenceLoss(objective, 0.1), logps=passes)
        steps = build_steps(model, build_optimizer(recipe.train, 1000), 1.0, packed=False, loss=plan)

        def run(idx):
            batch = collate_pairs(ds.pairs, idx, tok.pad_token_id)
            zeros = np.zeros(2 * len(idx), np.float32)
            ref = np.array(reference.logps(passes.logps, *passes.arrays(batch))) if ref_per_batch else zeros
            mx.eval(steps.train_step(*plan.arrays(PairBatch(batch, tuple(idx), ref))), model.state)
            return batch.num_tokens

        return run

    sides = {
        "sft": sft_step(),
        "dpo (cached ref)": preference_step("dpo", False),
        "dpo (full logits)": preference_step("dpo", False, full_logits=True),
        "dpo (ref per batch)": preference_step("dpo", True),
        "orpo": preference_step("orpo", False),
    }
    cold = {}
    for name, run in sides.items():
        start = time.perf_counter()
        cold[name] = run(batches[0]) / (time.perf_counter() - start)
    for run in sides.values():  # compile every batch shape once
        for idx in batches:
            run(idx)
    rates = {name: [] for name in sides}
    for _ in range(3):
        for name, run in sides.items():
            start = time.perf_counter()
            tokens = sum(run(idx) for idx in batches)
            rates[name].append(tokens / (time.perf_counter() - start))
    anchor = statistics.median(rates["sft"])
    for name in sides:
        warm = statistics.median(rates[name])
        print(
            f"{name:22s} cold {cold[name]:7.0f} tok/s   warm {warm:7.0f} tok/s (median of 3 rounds)   "
            f"warm vs SFT {warm / anchor:.2f}x"
        )


if __name__ == "__main__":
    main(sys.argv[1])
