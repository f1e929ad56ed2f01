"""DPO and ORPO match TRL on one tiny model: losses, rewards, metrics and LoRA gradients.

Both sides load the same tiny Llama and the same LoRA weights (MLX: mlx-lm LoRA layers;
PyTorch: transformers + PEFT) and see the same batch of pairs, tokenized once by
`mlxsft.data.preference`. TRL side:
- DPO: a real `trl.DPOTrainer` (PEFT model, no ref model, so its reference is the
  adapter switched off) and its own `_compute_loss` on the collated batch, then
  `loss.backward()`; its logged metrics give the rewards, accuracy and log-probs.
- ORPO: `trl.experimental.orpo.ORPOTrainer.get_batch_logps` (mean log-probs) and
  `ORPOTrainer.odds_ratio_loss` on the PEFT model's logits; TRL's NLL term counts the
  prompt tokens too, ours only the reply (the masking rule), so the NLL term is the
  reply-token cross-entropy in PyTorch.
Tolerance reached (fp32, TRL 1.16): losses within 2.5e-6 relative, gradients within 3.6e-6
of the largest gradient entry; the asserts use rtol 1e-4 and atol 1e-6 x the largest entry.
"""

from types import SimpleNamespace

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxsft.config import recipe_from_dict
from mlxsft.data.preference import collate_pairs, load_pairs
from mlxsft.model import attach_adapters, load_base
from mlxsft.train.preference import PreferenceLoss, summarize
from mlxsft.train.preference_run import LogpsPass, PairBatch, PreferencePlan, batch_arrays, logps_of
from mlxsft.train.reference import Reference
from mlxsft.train.step import split_head

from .conftest import write_jsonl
from .export_fixtures import randomize_trainable

torch = pytest.importorskip("torch")
pytest.importorskip("trl")
TARGETS = ["q_proj", "v_proj", "down_proj"]
RANK, ALPHA = 4, 8.0
USER = "What is the capital of France?"
PAIRS = [
    (USER, "Paris is the capital.", "hello world"),
    ("Convert to JSON: name age city", '{"name": "Alice"}', "sorry"),
    ("please order a refund", "thanks, the refund is on its way", "no refund for you, sorry please"),
]


@pytest.fixture(scope="module")
def setup(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trl")
    rows = [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in PAIRS
    ]
    recipe = recipe_from_dict(
        {"model": str(tiny_llama), "data": "unused", "lora": {"rank": RANK, "alpha": ALPHA, "targets": TARGETS}}
    )
    mx.random.seed(0)
    model, tok, _path, _ = load_base(recipe)
    attach_adapters(model, recipe)
    reference = Reference(model)  # the fresh adapter: B = 0, i.e. the adapter switched off
    randomize_trainable(model, seed=3, lora_b_std=0.2)  # as if trained a while
    ds = load_pairs(write_jsonl(tmp / "pairs.jsonl", rows), tok)
    batch = collate_pairs(ds.pairs, range(len(PAIRS)), pad_id=tok.pad_token_id or 0)
    return SimpleNamespace(
        model=model,
        tok=tok,
        ds=ds,
        batch=batch,
        reference=reference,
        tmp=tmp,
        base_dir=tiny_llama,
        peft=peft_twin(tiny_llama, model.trainable_parameters()),
    )


def peft_twin(base_dir, weights):
    """transformers + PEFT model with MLX adapter weights (lora_A = lora_a.T, alpha = scale * r)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0))
    load_twin_weights(model, weights)
    model.train()
    return model


def load_twin_weights(peft_model, weights, adapter="default"):
    state = {}
    for name, v in tree_flatten(weights):
        module, leaf = name.rsplit(".", 1)
        key = {"lora_a": "lora_A", "lora_b": "lora_B"}[leaf]
        state[f"base_model.model.{module}.{key}.{adapter}.weight"] = torch.tensor(np.array(v).T)
    result = peft_model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys


def trl_inputs(ds):
    """TRL's padded batch: rows = ids (chosen sides, then rejected), completion_mask = our trained mask."""
    sides = [p.chosen for p in ds.pairs] + [p.rejected for p in ds.pairs]
    L = max(len(s.ids) for s in sides)
    ids = torch.zeros((len(sides), L), dtype=torch.long)
    attention, completion = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, s in enumerate(sides):
        n = len(s.ids)
        ids[i, :n] = torch.tensor(s.ids.astype(np.int64))
        attention[i, :n] = 1
        completion[i, :n] = torch.tensor(s.trained.astype(np.int64))
    return {"input_ids": ids, "attention_mask": attention, "completion_mask": completion}


def mlx_side(setup, cfg):
    """(mean loss, metrics dict, gradient of the mean loss per LoRA parameter) on the MLX side.

    Computed twice: on full logits, and as the trainer runs it (the head on trained positions
    only, through `PreferencePlan.arrays`); the two must agree before either meets TRL.
    """
    arrays = batch_arrays(setup.batch)
    ref = setup.reference.logps(logps_of, *arrays) if cfg.needs_reference else mx.zeros(arrays[0].shape[0])
    sides = []
    for split in (None, split_head(setup.model)):
        plan = PreferencePlan(cfg, logps=LogpsPass(split))
        step_arrays = plan.arrays(PairBatch(setup.batch, (), np.array(ref)))
        (loss_sum, pairs, metrics), grads = nn.value_and_grad(setup.model, plan.loss)(setup.model, *step_arrays)
        n = pairs.item()
        sides.append(
            (loss_sum.item() / n, summarize(np.array(metrics), n), {k: np.array(v) / n for k, v in tree_flatten(grads)})
        )
    (loss, metrics, grads), (g_loss, g_metrics, g_grads) = sides
    gathered = LogpsPass(split_head(setup.model))  # the reference's log-probs the same way
    if cfg.needs_reference:
        got = setup.reference.logps(gathered.logps, *gathered.arrays(setup.batch))
        np.testing.assert_allclose(np.array(got), np.array(ref), rtol=1e-5, atol=1e-4)
    assert len(step_arrays) == 6  # the gathered plan really ran (this model splits)
    assert g_loss == pytest.approx(loss, rel=1e-5)
    assert g_metrics == pytest.approx(metrics, rel=1e-4, abs=1e-6)
    for k, g in grads.items():
        np.testing.assert_allclose(g_grads[k], g, rtol=1e-4, atol=1e-7, err_msg=k)
    return loss, metrics, grads


def torch_grads(peft_model):
    out = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            module = name.removeprefix("base_model.model.").split(".lora_")[0]
            leaf = "lora_a" if ".lora_A." in name else "lora_b"
            out[f"{module}.{leaf}"] = p.grad.numpy().T
            p.grad = None
    return out


def assert_grads_match(mlx_grads, t_grads):
    assert set(mlx_grads) == set(t_grads)
    scale = max(float(np.abs(g).max()) for g in t_grads.values())
    assert scale > 1e-4  # the gradients are not trivially zero
    for k, g in t_grads.items():
        np.testing.assert_allclose(mlx_grads[k], g, rtol=1e-4, atol=1e-6 * scale, err_msg=k)


def dpo_trainer(setup, loss_type, beta):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok = setup.tok._tokenizer
    args = DPOConfig(
        output_dir=str(setup.tmp / "trl"),
        beta=beta,
        loss_type=[loss_type],
        report_to="none",
        use_cpu=True,
        precompute_ref_log_probs=False,
        max_length=None,
    )
    data = Dataset.from_list([{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS])
    # TRL keeps the adapter it is given as the "ref" adapter: give it the fresh one (our reference),
    # then load the trained weights into the adapter being trained.
    model = peft_twin(setup.base_dir, setup.reference.initial)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    assert "ref" in trainer.model.peft_config
    load_twin_weights(trainer.model, setup.model.trainable_parameters())
    return trainer


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_matches_trl_dpo_trainer(setup, loss_type):
    beta = 0.5
    trainer = dpo_trainer(setup, loss_type, beta)
    loss = trainer._compute_loss(trainer.model, trl_inputs(setup.ds), return_outputs=False)
    loss.backward()
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    want_grads = torch_grads(trainer.model)

    got_loss, got, grads = mlx_side(setup, PreferenceLoss("dpo", beta, 0.0, loss_type))
    np.testing.assert_allclose(got_loss, loss.item(), rtol=1e-4)
    for ours, theirs in (
        ("rewards_chosen", "rewards/chosen"),
        ("rewards_rejected", "rewards/rejected"),
        ("margin", "rewards/margins"),
        ("accuracy", "rewards/accuracies"),
        ("logps_chosen", "logps/chosen"),
        ("logps_rejected", "logps/rejected"),
    ):
        np.testing.assert_allclose(got[ours], logged[theirs], rtol=1e-4, atol=1e-5, err_msg=ours)
    assert abs(got["margin"]) > 1e-3  # the adapter moved the policy away from the reference
    assert_grads_match(grads, want_grads)


def test_label_smoothing_is_conservative_dpo_on_trl_log_probs(setup):
    """TRL 1.x's `sigmoid` has no label smoothing; cDPO (TRL 0.x `sigmoid` with label_smoothing) is
    -(1-e) logsig(beta d) - e logsig(-beta d), evaluated here in PyTorch on TRL's own log-probs."""
    import torch.nn.functional as F

    beta, e = 0.5, 0.2
    trainer = dpo_trainer(setup, "sigmoid", beta)
    with torch.no_grad():
        trainer._compute_loss(trainer.model, trl_inputs(setup.ds), return_outputs=False)
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    got_loss, got, _ = mlx_side(setup, PreferenceLoss("dpo", beta, e, "sigmoid"))
    np.testing.assert_allclose(got["margin"], logged["rewards/margins"], rtol=1e-4)
    # per-pair margins from the MLX side (they match TRL's mean above), the loss from the formula in torch
    arrays = batch_arrays(setup.batch)
    ref = np.array(setup.reference.logps(logps_of, *arrays))
    logps = np.array(logps_of(setup.model, *arrays))
    n = len(PAIRS)
    z = torch.tensor(beta * ((logps[:n] - ref[:n]) - (logps[n:] - ref[n:])), dtype=torch.float64)
    want = (-(1 - e) * F.logsigmoid(z) - e * F.logsigmoid(-z)).mean().item()
    np.testing.assert_allclose(got_loss, want, rtol=1e-5)


def test_reference_is_the_adapter_switched_off(setup):
    """The swapped-in fresh adapter gives the base model's log-probs (LoRA scale 0)."""
    arrays = batch_arrays(setup.batch)
    ref = np.array(setup.reference.logps(logps_of, *arrays))
    layers = [m for _, m in setup.model.named_modules() if hasattr(m, "lora_a")]
    scales = [m.scale for m in layers]
    try:
        for m in layers:
            m.scale = 0.0
        base = np.array(logps_of(setup.model, *arrays))
    finally:
        for m, s in zip(layers, scales, strict=True):
            m.scale = s
    np.testing.assert_allclose(ref, base, rtol=1e-5)
    assert not np.allclose(np.array(logps_of(setup.model, *arrays)), base, rtol=1e-3)


def test_orpo_matches_trl_odds_ratio_loss(setup):
    import torch.nn.functional as F
    from trl.experimental.orpo import ORPOTrainer

    beta = 0.25
    inputs = trl_inputs(setup.ds)
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    logits = setup.peft(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    avg = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    n = len(PAIRS)
    fake = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device="cpu"))
    losses, reward_c, reward_r, _, _ = ORPOTrainer.odds_ratio_loss(fake, avg[:n], avg[n:])
    nll = F.cross_entropy(logits[:n, :-1].reshape(-1, logits.shape[-1]), labels[:n, 1:].reshape(-1), ignore_index=-100)
    loss = nll - losses.mean()
    loss.backward()
    want_grads = torch_grads(setup.peft)

    got_loss, got, grads = mlx_side(setup, PreferenceLoss("orpo", beta))
    np.testing.assert_allclose(got_loss, loss.item(), rtol=1e-4)
    np.testing.assert_allclose(got["rewards_chosen"], reward_c.mean().item(), rtol=1e-4)
    np.testing.assert_allclose(got["rewards_rejected"], reward_r.mean().item(), rtol=1e-4)
    assert_grads_match(grads, want_grads)
