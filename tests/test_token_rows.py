"""Untrained chat tokens: a ChatML LoRA fine-tune of a base that never saw the markers.

The base (tests/fixtures/tiny_base) never saw `<|im_start|>`/`<|im_end|>`. With
`lora.train_new_tokens` (auto: on, since the markers look untrained) their embedding
and LM-head rows train beside LoRA; the run's samples stop at the end marker; the rows
are saved in checkpoints, resume exactly, and export to PEFT (`trainable_token_indices`)
and to a merged HF model that transformers (+ peft) load with the same logits.
Without the key the start of training warns.
"""

import json

import mlx.core as mx
import numpy as np
import pytest

from mlxsft.config import recipe_from_dict
from mlxsft.data.formats import load_jsonl
from mlxsft.events import RunStarted, StepReported, read_events
from mlxsft.export import export_peft, load_trained, resolve_source
from mlxsft.export.merged import export_hf
from mlxsft.generate import sample_completions
from mlxsft.judge.battery import open_bench
from mlxsft.judge.sampling import prompts_from_examples
from mlxsft.judge.suite import Suite
from mlxsft.rundir import RunDir
from mlxsft.token_rows import EmbeddingRows, LinearRows, attach_token_rows
from mlxsft.train.run import StopFlag, run_training

from .conftest import BASE_TASK, PRETRAINED_BASE
from .export_fixtures import max_abs_diff, mlx_logits, torch_logits

MARKERS = [1, 2]  # <|im_start|>, <|im_end|> in the fixture's tokenizer
PROBE_IDS = [[1, 72, 300, 55, 2, 198, 1, 40], [100, 101, 2, 5, 9]]


def recipe(out, iters=40, key="auto"):
    return recipe_from_dict(
        {
            "model": str(PRETRAINED_BASE),
            "data": {"train": str(BASE_TASK)},
            "output": str(out),
            "method": "lora",
            "lora": {"rank": 8, "alpha": 16, "train_new_tokens": key},
            "train": {
                "iters": iters,
                "batch_size": 4,
                "learning_rate": 2e-3,
                "lr_schedule": "constant",
                "max_seq_length": 128,
                "steps_per_report": 10,
                "steps_per_eval": 20,
                "steps_per_save": 20,
            },
        }
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rows") / "run"
    run_training(recipe(out))
    return out


def test_rows_layers_compute_the_base_until_trained_and_fuse_exactly():
    from mlx_lm.utils import load_model

    from mlxsft.export.merged import fuse_adapters

    model, _ = load_model(PRETRAINED_BASE)
    x = mx.array(PROBE_IDS[0])[None]
    base = model(x)
    model.freeze()
    assert attach_token_rows(model, [2, 1, 2]) == MARKERS
    assert isinstance(model.model.embed_tokens, EmbeddingRows) and isinstance(model.lm_head, LinearRows)
    assert sorted(k for k, _ in _flat(model.trainable_parameters())) == ["lm_head.rows", "model.embed_tokens.rows"]
    assert mx.abs(model(x) - base).max().item() < 1e-5  # the same up to float rounding
    model.model.embed_tokens.rows = model.model.embed_tokens.rows * 3 + 0.1
    model.lm_head.rows = model.lm_head.rows + 0.5
    trained = model(x)
    assert mx.abs(trained - base).max().item() > 0.1
    # only the marker columns of the head moved, for a position that is not a marker
    moved = mx.abs(trained - base)[0, 1]  # (V,) at token 72, after one <|im_start|>
    assert moved[MARKERS].min().item() > 0
    fuse_adapters(model, dequantize=True)
    assert mx.abs(model(x) - trained).max().item() < 1e-5


def _flat(tree):
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


def test_chatml_fine_tune_trains_the_marker_rows_and_stops(trained):
    started = [e for e in read_events(RunDir(trained).events_file) if isinstance(e, RunStarted)][0]
    assert "token ids [1, 2]" in started.warnings[0] and "train_new_tokens: auto" in started.warnings[0]
    folder = RunDir(trained).checkpoint_dir(40)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["trainable_tokens"] == MARKERS
    rows = mx.load(str(folder / "adapters.safetensors"))
    base = mx.load(str(PRETRAINED_BASE / "model.safetensors"))
    embed_before = np.linalg.norm(np.asarray(base["model.embed_tokens.weight"])[MARKERS], axis=-1)
    embed_after = np.linalg.norm(np.asarray(rows["model.embed_tokens.rows"]), axis=-1)
    assert (embed_after > 1.5 * embed_before).all()  # the untrained rows moved off their init scale
    loaded = load_trained(resolve_source(trained))
    prompts = prompts_from_examples(load_jsonl(BASE_TASK / "valid.jsonl"), loaded.tokenizer, limit=6)
    samples = [
        s
        for i, p in enumerate(prompts)
        for s in sample_completions(
            loaded.model, loaded.tokenizer, p.ids, k=2, max_tokens=48, temperature=0.7, top_p=1.0, seed=i
        )
    ]
    stopped = [len(s.entropies) > len(s.ids) for s in samples]  # the last step chose the end marker
    assert all(stopped), [s.text for s in samples]
    # the judge swaps these checkpoints in too (rows included): the base again at step 0
    bench = open_bench(trained, Suite(prompts=0, metrics=["fit"]))
    bench.weights.use(folder)
    assert mx.abs(bench.model.lm_head.rows - rows["lm_head.rows"]).max().item() == 0
    bench.weights.use_base()
    assert mx.abs(bench.model.lm_head.rows - base["lm_head.weight"][mx.array(MARKERS)]).max().item() == 0


def test_without_the_key_training_warns(tmp_path):
    out = tmp_path / "run"
    run_training(recipe(out, iters=1, key=False))
    started = [e for e in read_events(RunDir(out).events_file) if isinstance(e, RunStarted)][0]
    assert "look untrained: <|im_start|>" in started.warnings[0] and "lora.train_new_tokens" in started.warnings[0]
    config = json.loads((RunDir(out).checkpoint_dir(1) / "adapter_config.json").read_text())
    assert "trainable_tokens" not in config


@pytest.mark.slow
def test_token_rows_resume_exactly(trained, tmp_path):
    out = tmp_path / "run"
    stop = StopFlag()

    def stop_at_20(event):
        if isinstance(event, StepReported) and event.step == 20:
            stop.set("test")

    run_training(recipe(out), sinks=[stop_at_20], stop=stop)
    assert RunDir(out).checkpoint_steps()[-1] < 40  # stopped with a checkpoint part-way
    run_training(recipe(out), resume=True)
    a = mx.load(str(RunDir(out).checkpoint_dir(40) / "adapters.safetensors"))
    b = mx.load(str(RunDir(trained).checkpoint_dir(40) / "adapters.safetensors"))
    assert set(a) == set(b) and "lm_head.rows" in a
    for k in a:
        assert mx.allclose(a[k], b[k], atol=1e-5).item(), k


@pytest.mark.slow
def test_token_rows_export_to_peft_and_merged_hf_with_parity(trained, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    reference = mlx_logits(load_trained(resolve_source(trained)).model, PROBE_IDS)
    peft_dir = export_peft(trained, tmp_path / "peft")  # raises unless its own parity check passes
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"embed_tokens": MARKERS, "lm_head": MARKERS}
    assert json.loads((peft_dir / "parity.json").read_text())["passed"]
    base = transformers.AutoModelForCausalLM.from_pretrained(str(PRETRAINED_BASE), dtype=torch.float32)
    base_logits = torch_logits(base, PROBE_IDS)
    with_adapter = peft.PeftModel.from_pretrained(base, str(peft_dir)).eval()
    assert max_abs_diff(reference, base_logits) > 0.1
    assert max_abs_diff(reference, torch_logits(with_adapter, PROBE_IDS)) < 1e-3
    hf_dir = export_hf(trained, tmp_path / "hf")
    merged = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    assert max_abs_diff(reference, torch_logits(merged, PROBE_IDS)) < 1e-3


def test_qlora_keeps_the_token_rows_in_full_precision(tmp_path):
    out = tmp_path / "run"
    r = recipe(out, iters=2)
    run_training(r.__class__(**{**r.__dict__, "quantize": r.quantize.__class__(bits=4, group_size=64)}))
    loaded = load_trained(resolve_source(out))
    embed = loaded.model.model.embed_tokens
    assert hasattr(embed.base, "scales")  # the base embedding is quantized ...
    assert embed.rows.dtype == mx.float32 and loaded.model.lm_head.rows.dtype == mx.float32  # ... its rows are not
