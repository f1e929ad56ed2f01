"""The README's benchmark figures in one invocation: `mlxsft bench --suite DIR`.

DIR is what `python scripts/bench_setup.py DIR` writes (models s256 and l768, chat data
data-multi and data-single). The suite runs, each side in its own environment
(`runner.run_benchmark`):

- s256 (7.3M) at 8 x 128 and 4 x 256 on multi-turn chats against PyTorch + PEFT, the first
  with cold runs (first run after install, after a reboot) next to warm ones;
- l768 (125M) at 8 x 128 against PyTorch + PEFT;
- s256 at 8 x 512 on one-turn chats (both trainers train the same tokens) against mlx-lm.

It prints each case's full table, then one summary table, and `--json` keeps everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import MlxsftError
from .runner import best_of, format_table, run_benchmark, summary
from .spec import BenchResult, BenchSpec

NEEDED = ("s256", "l768", "data-multi", "data-single")


@dataclass(frozen=True)
class SuiteCase:
    name: str
    spec: BenchSpec
    against: str  # the one peer this case compares with
    cold: bool = False


def suite_cases(root: Path, steps: int = 10) -> list[SuiteCase]:
    """The cases, with paths under `root`; the 125M model runs fewer steps (each is ~20x longer)."""

    def spec(model: str, data: str, batch: int, seq: int, n: int, warmup: int) -> BenchSpec:
        return BenchSpec(
            model=str(root / model),
            data=str(root / data),
            batch_size=batch,
            max_seq_length=seq,
            steps=n,
            warmup=warmup,
        )

    return [
        SuiteCase("s256 (7.3M), 8 x 128, multi-turn", spec("s256", "data-multi", 8, 128, steps, 3), "peft", cold=True),
        SuiteCase("s256 (7.3M), 4 x 256, multi-turn", spec("s256", "data-multi", 4, 256, steps, 3), "peft"),
        SuiteCase(
            "l768 (125M), 8 x 128, multi-turn", spec("l768", "data-multi", 8, 128, max(2, steps // 3), 2), "peft"
        ),
        SuiteCase("s256 (7.3M), 8 x 512, one-turn", spec("s256", "data-single", 8, 512, steps, 3), "mlx-lm"),
    ]


def check_suite_dir(root: Path) -> None:
    missing = [name for name in NEEDED if not (root / name).exists()]
    if missing:
        raise MlxsftError(
            f"the benchmark folder lacks {', '.join(missing)}; build it with "
            f"`python scripts/bench_setup.py {root}` (from a clone of mlxsft).",
            path=str(root),
        )


def run_suite(root: Path, steps: int = 10, repeats: int = 1, progress=print) -> list[tuple[SuiteCase, dict]]:
    """(case, results per side) for every case, in order."""
    check_suite_dir(root)
    done = []
    for case in suite_cases(root, steps):
        progress(f"== {case.name} against {case.against}")
        results = run_benchmark(case.spec, [case.against], repeats=repeats, cold=case.cold, progress=progress)
        progress(format_table(results))
        done.append((case, results))
    return done


def _cold_line(results: dict[str, list[BenchResult]]) -> str | None:
    ours = results["mlxsft"]
    runs = {r.run: r for r in ours}
    if "after-reboot" not in runs:
        return None
    warm = best_of(ours)
    install, reboot = runs["first-install"], runs["after-reboot"]
    return (
        f"cold vs warm (ours, whole run): after install {install.wall_s:.1f} s "
        f"(first step {install.first_step_s:.1f} s), "
        f"after a reboot {reboot.wall_s:.1f} s (first step {reboot.first_step_s:.1f} s), warm {warm.wall_s:.1f} s "
        f"(first step {warm.first_step_s:.1f} s); after a reboot / warm x{reboot.wall_s / warm.wall_s:.2f}; "
        f"one-time compile cost about {install.first_step_s - warm.first_step_s:.0f} s"
    )


def format_suite(done: list[tuple[SuiteCase, dict]]) -> str:
    """A markdown table of the warm ratios, then the cold-start line."""
    lines = [
        "| case | against | ours tok/s | theirs tok/s | tok/s ratio | trained tok/s ratio | peak memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    extra = []
    for case, results in done:
        ours, theirs = best_of(results["mlxsft"]), best_of(results[case.against])
        lines.append(
            f"| {case.name} | {case.against} | {ours.tokens_per_second:,.0f} | {theirs.tokens_per_second:,.0f} "
            f"| {ours.tokens_per_second / theirs.tokens_per_second:.2f}x "
            f"| {ours.trained_tokens_per_second / theirs.trained_tokens_per_second:.2f}x "
            f"| {ours.peak_memory_gb / max(theirs.peak_memory_gb, 1e-9):.2f}x |"
        )
        cold = _cold_line(results)
        if cold:
            extra.append(f"{case.name}: {cold}")
    return "\n".join(lines + [""] + extra)


def suite_summary(done: list[tuple[SuiteCase, dict]]) -> dict:
    return {"cases": [{"name": c.name, "against": c.against} | summary(c.spec, r) for c, r in done]}
