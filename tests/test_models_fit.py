"""`mlxsft models fit`: the architecture estimate against measured compiled training steps."""

from __future__ import annotations

import dataclasses
import math

import pytest

from mlxsft.cli import build_parser
from mlxsft.devmodel import TinyModelSpec, build_tiny_model
from mlxsft.errors import ModelError
from mlxsft.models.fit import FitSettings, estimate_fit
from mlxsft.models.measure import machine_memory, matmul_flops, measure_fit
from mlxsft.models.report import verdict

# Two tiny-but-not-trivial Llamas (8 layers, vocab ~3k), one four times the other's width^2.
SIZES = {
    "h256": TinyModelSpec(
        hidden_size=256,
        num_layers=8,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=768,
        vocab_size=512,
        model_vocab_size=3072,
    ),
    "h512": TinyModelSpec(
        hidden_size=512,
        num_layers=8,
        num_heads=8,
        num_kv_heads=2,
        intermediate_size=1536,
        vocab_size=512,
        model_vocab_size=3072,
    ),
}
LORA = FitSettings(method="lora", rank=8, batch_tokens=512, seq_length=256)


@pytest.fixture(scope="module")
def sized_models(tmp_path_factory):
    return {name: build_tiny_model(tmp_path_factory.mktemp(name), spec) for name, spec in SIZES.items()}


@pytest.mark.parametrize("size", sorted(SIZES))
def test_estimate_is_within_25_percent_of_measured_peak(sized_models, size):
    path = sized_models[size]
    estimate = estimate_fit(path, LORA)
    measured = measure_fit(path, LORA, steps=3)
    ratio = estimate.memory.total / measured.peak_bytes
    print(
        f"\n{size}: estimated {estimate.memory.total / 2**20:.1f} MiB, measured "
        f"{measured.peak_bytes / 2**20:.1f} MiB ({ratio - 1:+.1%}); "
        f"{measured.tokens_per_second:.0f} tokens/s"
    )
    assert abs(ratio - 1) <= 0.25
    # the measured run trained for real: a finite loss near log(V) for random targets
    assert math.isfinite(measured.loss) and abs(measured.loss - math.log(3072)) < 3
    assert measured.tokens_per_second > 0


def test_estimate_moves_the_way_the_settings_do(sized_models):
    path = sized_models["h256"]
    base = estimate_fit(path, LORA).memory
    bigger = estimate_fit(path, dataclasses.replace(LORA, batch_tokens=1024)).memory
    longer = estimate_fit(path, dataclasses.replace(LORA, batch_tokens=1024, seq_length=1024)).memory
    qlora = estimate_fit(path, dataclasses.replace(LORA, quantize_bits=4)).memory
    checkpointed = estimate_fit(path, dataclasses.replace(LORA, grad_checkpoint=True)).memory
    dora = estimate_fit(path, dataclasses.replace(LORA, method="dora")).memory
    masked = estimate_fit(path, dataclasses.replace(LORA, trained_fraction=0.25)).memory
    top_two = estimate_fit(path, dataclasses.replace(LORA, layers=2)).memory
    full = estimate_fit(path, dataclasses.replace(LORA, method="full"))

    assert bigger.activations == 2 * base.activations
    assert longer.attention == 4 * bigger.attention  # same tokens, rows 4x as long: T x T probabilities
    assert longer.activations == bigger.activations
    assert 5 < base.weights / qlora.weights < 8  # 4-bit packs plus fp32 scales and biases
    assert checkpointed.activations < base.activations / 2
    assert dora.dora > 0 and base.dora == 0
    assert masked.head < base.head and masked.activations == base.activations
    assert top_two.activations < base.activations / 2  # no backward below the lowest adapter
    assert full.trainable_parameters == full.total_parameters and full.memory.weights == 0
    assert full.memory.trainable == 4 * 4 * full.total_parameters  # fp32 weights, grads, Adam m and v
    assert full.flops_per_token > estimate_fit(path, LORA).flops_per_token


def test_verdict_thresholds():
    assert verdict(50, 100) == "fits"
    assert verdict(90, 100) == "tight"
    assert verdict(101, 100) == "does not fit"
    assert verdict(10, None).startswith("unknown")


def test_machine_and_matmul_are_read_here():
    machine = machine_memory()
    assert machine.budget_bytes and machine.budget_bytes > 2**28
    assert machine.total_bytes is None or machine.total_bytes >= machine.budget_bytes
    assert matmul_flops("float32", size=256, repeats=2) > 1e8


def _run(argv):
    args = build_parser().parse_args(argv)
    return args.handler(args)


def test_cli_fit_prints_estimate_verdict_and_speed(sized_models, capsys):
    path = str(sized_models["h256"])
    assert (
        _run(
            [
                "models",
                "fit",
                path,
                "--batch-tokens",
                "4096",
                "--seq-length",
                "1024",
                "--trained-fraction",
                "0.5",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Estimate     peak" in out and "Verdict      fits" in out
    assert "tokens/s estimated" in out and "FLOPs per token = 4·N_body" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-tokens", "256", "--seq-length", "512"], "cannot exceed --batch-tokens"),
        (["--trained-fraction", "0"], "--trained-fraction must be in"),
        (["--method", "full", "--quantize", "4"], "cannot be used with --method full"),
        (["--quantize", "7"], "must be one of 2, 3, 4"),
        (["--layers", "zero"], "--layers must be 'all'"),
        (["--targets", "nope_proj"], "match no linear layer"),
    ],
    ids=["seq>batch", "fraction", "full+quantize", "bits", "layers", "targets"],
)
def test_cli_fit_rejects_bad_settings(sized_models, argv, message):
    with pytest.raises(ModelError, match=message):
        _run(["models", "fit", str(sized_models["h256"]), *argv])
