"""Recipe configuration: the one set of typed dataclasses behind YAML recipes, CLI flags and UI forms.

Every knob lives here once, with its default, its help text and (where it has one)
its set of allowed values. `load_recipe` reads YAML (with `1e-5` read as a float),
applies dotted `--set` overrides and validates types and values; any unknown key or
wrong type is a `RecipeError` naming the key, the file and the line.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import RecipeError
from .typed_yaml import Where, build_dataclass, parse_yaml_value, read_yaml_mapping

METHODS = ("lora", "dora", "full")
MASK_MODES = ("assistant", "last", "none")
MULTI_TURN_MODES = ("auto", "split", "single")
BAD_ROW_POLICIES = ("error", "skip")
LR_SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adam", "sgd")
DTYPES = ("auto", "float32", "bfloat16", "float16")
OBJECTIVES = ("sft", "dpo", "orpo")
PREFERENCE_LOSSES = ("sigmoid", "ipo")
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _field(default, help: str, choices: tuple | None = None, hints: dict | None = None, **kw):
    """A dataclass field carrying its help text and allowed values (for CLI/TUI).

    `hints`: for a value people often give here by mistake, what to do instead.
    """
    meta = {"help": help, "choices": choices, "hints": hints or {}}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class DataConfig:
    train: str | None = _field(None, "Training JSONL file, or a directory with train.jsonl/valid.jsonl.")
    valid: str | None = _field(None, "Validation JSONL file (defaults to valid.jsonl beside train).")
    test: str | None = _field(None, "Optional test JSONL file.")
    ood: str | None = _field(None, "Optional out-of-distribution / hard JSONL split, for `mlxsft eval`.")
    mask: str = _field(
        "assistant",
        "Which tokens are trained: every assistant turn, the last assistant turn, or all tokens.",
        MASK_MODES,
    )
    multi_turn: str = _field(
        "auto",
        "Multi-turn chats on templates that render earlier turns differently (e.g. drop their reasoning): "
        "auto = one sequence when faithful, else one per turn that needs it; split = one per turn; "
        "single = one sequence, training only the turns it shows as generated.",
        MULTI_TURN_MODES,
    )
    train_reasoning: bool = _field(True, "Train the reasoning (<think>, reasoning_content) of assistant turns.")
    on_bad_row: str = _field(
        "error",
        "Rows the chat template cannot train as written: error = list them all and stop before training; "
        "skip = train without them (listed in the run's events).",
        BAD_ROW_POLICIES,
    )


@dataclass
class LoraConfig:
    rank: int = _field(16, "LoRA rank r.")
    alpha: float = _field(32.0, "LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = _field(0.0, "Dropout on the LoRA input.")
    layers: int | str = _field("all", "How many of the last transformer blocks get adapters, or 'all'.")
    targets: list = _field(
        list(DEFAULT_TARGETS),
        "Module names (suffixes) that get adapters, e.g. q_proj, v_proj, down_proj.",
    )
    train_new_tokens: bool | str = _field(
        "auto",
        "Also train the embedding and LM-head rows of the chat template's tokens: auto (when their base "
        "embeddings look untrained), true (always), false (never).",
    )


@dataclass
class QuantizeConfig:
    bits: int | None = _field(None, "Quantize the base model to this many bits at load (QLoRA): 2, 3, 4, 6 or 8.")
    group_size: int = _field(64, "Quantization group size: 32, 64 or 128.")


@dataclass
class PreferenceConfig:
    beta: float = _field(
        0.1,
        "DPO: strength of the pull towards the reference (higher = stay closer); "
        "ORPO: weight of the odds-ratio term beside the chosen replies' NLL.",
    )
    label_smoothing: float = _field(
        0.0, "DPO sigmoid: assumed share of pairs whose preference is flipped (conservative DPO), in [0, 0.5)."
    )
    loss_type: str = _field("sigmoid", "DPO loss: sigmoid (the DPO paper) or ipo.", PREFERENCE_LOSSES)
    cache_reference: bool = _field(
        True,
        "DPO: compute the reference log-probs once before training and keep them in the run dir "
        "(else one extra forward pass per batch).",
    )


@dataclass
class TrainConfig:
    iters: int | None = _field(None, "Optimizer steps to run (give iters or epochs).")
    epochs: float | None = _field(None, "Passes over the training data (used when iters is not set).")
    batch_size: int = _field(4, "Rows (sequences) per micro-batch.")
    batch_tokens: int | str | None = _field(
        None, "Cap on padded tokens per micro-batch (rows x length), or 'auto': the most that fits memory_limit_gb."
    )
    memory_limit_gb: float | None = _field(
        None, "Memory for training (batch_tokens: auto); default: 90% of Metal's working set, 60% of RAM on CPU."
    )
    pack: bool = _field(False, "Pack short rows into one sequence (attention never crosses rows).")
    learning_rate: float = _field(1e-4, "Peak learning rate.")
    lr_schedule: str = _field("cosine", "Learning-rate decay after warmup.", LR_SCHEDULES)
    warmup_steps: int = _field(0, "Linear warmup steps from 0 to the peak learning rate.")
    min_lr_ratio: float = _field(0.1, "Final learning rate as a share of the peak (linear/cosine).")
    optimizer: str = _field("adamw", "Optimizer.", OPTIMIZERS)
    weight_decay: float = _field(0.0, "Decoupled weight decay (adamw).")
    max_grad_norm: float | None = _field(1.0, "Clip the global gradient norm to this value (null: off).")
    grad_accumulation: int = _field(1, "Micro-batches per optimizer step.")
    grad_checkpoint: bool = _field(False, "Recompute every block's activations in the backward pass.")
    max_seq_length: int = _field(2048, "Longest sequence in tokens; longer rows are truncated.")
    seed: int = _field(0, "Seed for adapter init, data order and dropout.")
    dtype: str = _field("auto", "Compute dtype: auto (float32 on CPU, the model's own elsewhere).", DTYPES)
    fast_cpu_ops: bool = _field(
        True, "On the CPU backend, use a polynomial exp in attention softmax, SwiGLU and the cross-entropy."
    )
    steps_per_report: int = _field(10, "Steps between training-metric reports.")
    steps_per_eval: int = _field(100, "Steps between validation passes (0: only at the end).")
    steps_per_save: int = _field(100, "Steps between checkpoints (the final step is always saved).")
    val_batches: int = _field(-1, "Validation batches per evaluation (-1: the whole validation set).")
    early_stop_patience: int | None = _field(
        None, "Stop when this many evaluations in a row gain at most early_stop_tolerance on the best before."
    )
    early_stop_tolerance: float = _field(0.01, "Relative validation-loss gain that counts as no gain (early stop).")


@dataclass
class Recipe:
    model: str = _field("", "Local model folder or Hugging Face hub id.")
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Data files and masking."})
    method: str = _field(
        "lora",
        "Fine-tuning method.",
        METHODS,
        hints={
            name: f"method picks the weights that train; for preference tuning set objective: {name}."
            for name in ("dpo", "orpo")
        },
    )
    objective: str = _field(
        "sft",
        "Training objective: sft (replies), dpo or orpo (preference pairs: prompt, chosen, rejected).",
        OBJECTIVES,
    )
    init: str | None = _field(
        None, "Start from a finished run's adapter (a run folder, e.g. runs/sft-x) instead of a fresh one."
    )
    preference: PreferenceConfig = field(
        default_factory=PreferenceConfig, metadata={"help": "DPO/ORPO settings (objective: dpo or orpo)."}
    )
    lora: LoraConfig = field(default_factory=LoraConfig, metadata={"help": "LoRA/DoRA adapter shape."})
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig, metadata={"help": "QLoRA base quantization."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimization and schedule."})
    output: str | None = _field(None, "Run directory (default: runs/<model>-<method>-<time>).")
    trust_remote_code: bool = _field(False, "Allow a model's own Python code (only if you trust it).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- YAML reading


def read_recipe_file(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Read a YAML recipe into a plain dict, with the line of each key."""
    return read_yaml_mapping(
        path,
        RecipeError,
        "recipe file not found; check the path.",
        "a recipe must be a mapping of keys (model:, data:, train:, ...).",
    )


def _normalize_data(raw: dict) -> dict:
    """Accept `data: DIR` as shorthand for `data: {train: DIR}`."""
    if isinstance(raw.get("data"), str):
        raw = dict(raw)
        raw["data"] = {"train": raw["data"]}
    return raw


def override_origins(overrides: list[str], labels: dict[str, str] | None = None) -> dict[str, str]:
    """Dotted key -> how the user wrote it (`--set KEY=VALUE`, or a label such as `--train.iters many`)."""
    labels = labels or {}
    origins = {}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        origins[key] = labels.get(key, f"--set {item}")
    return origins


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply dotted `key=value` overrides (values parsed as YAML) to a raw recipe dict."""
    raw = _normalize_data(raw)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set '{item}' must look like section.key=value, e.g. train.learning_rate=2e-4.")
        key, text = item.split("=", 1)
        try:
            value = parse_yaml_value(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise RecipeError(
                f"the value of '{key.strip()}' is not valid YAML ({problem}); quote it, "
                f"e.g. {key.strip()}='\"{text}\"'.",
                path=f"--set {item}",
            ) from None
        parts = key.strip().split(".")
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return raw


def check_recipe(recipe: Recipe, source: str = "<recipe>", lines=None) -> None:
    """Value checks that types alone do not catch (`lines`: a dict of key lines or a `_Where`)."""
    locate = lines if isinstance(lines, Where) else Where(source, lines)

    def fail(key: str, message: str):
        raise RecipeError(f"'{key}' {message}", **locate(key))

    t = recipe.train
    if isinstance(recipe.lora.train_new_tokens, str) and recipe.lora.train_new_tokens != "auto":
        fail("lora.train_new_tokens", f"must be auto, true or false, got {recipe.lora.train_new_tokens!r}.")
    if not recipe.model:
        fail("model", "is required: a local model folder or a hub id such as Qwen/Qwen2.5-0.5B-Instruct.")
    if not recipe.data.train:
        fail("data.train", "is required: a JSONL file or a folder holding train.jsonl and valid.jsonl.")
    if t.iters is not None and t.iters <= 0:
        fail("train.iters", f"must be at least 1, got {t.iters}.")
    if t.epochs is not None and t.epochs <= 0:
        fail("train.epochs", f"must be greater than 0, got {t.epochs}.")
    if t.iters is not None and t.epochs is not None:
        fail(
            "train.epochs",
            f"({t.epochs}) and train.iters ({t.iters}) are both set; give one of them "
            "(iters: optimizer steps, epochs: passes over the data).",
        )
    for key in ("batch_size", "grad_accumulation", "max_seq_length", "steps_per_report", "steps_per_save"):
        if getattr(t, key) < 1:
            fail(f"train.{key}", f"must be at least 1, got {getattr(t, key)}.")
    if t.steps_per_eval < 0:
        fail("train.steps_per_eval", "must be 0 (only at the end) or more.")
    if isinstance(t.batch_tokens, str) and t.batch_tokens != "auto":
        fail("train.batch_tokens", f"must be a number of tokens or 'auto', got {t.batch_tokens!r}.")
    if isinstance(t.batch_tokens, int) and t.batch_tokens < t.max_seq_length:
        fail("train.batch_tokens", f"({t.batch_tokens}) must be at least train.max_seq_length ({t.max_seq_length}).")
    if t.memory_limit_gb is not None and t.memory_limit_gb <= 0:
        fail("train.memory_limit_gb", f"must be greater than 0, got {t.memory_limit_gb}.")
    if t.early_stop_patience is not None and t.early_stop_patience < 1:
        fail("train.early_stop_patience", f"must be at least 1 (or null: off), got {t.early_stop_patience}.")
    if not t.learning_rate > 0:
        fail("train.learning_rate", f"must be greater than 0, got {t.learning_rate}.")
    if recipe.lora.rank < 1:
        fail("lora.rank", f"must be at least 1, got {recipe.lora.rank}.")
    if not 0 <= recipe.lora.dropout < 1:
        fail("lora.dropout", f"must be in [0, 1), got {recipe.lora.dropout}.")
    layers = recipe.lora.layers
    if isinstance(layers, str) and layers != "all" or isinstance(layers, int) and layers < 1:
        fail("lora.layers", f"must be 'all' or a number of blocks >= 1, got {layers!r}.")
    if not recipe.lora.targets:
        fail("lora.targets", "must name at least one module, e.g. [q_proj, v_proj].")
    pref = recipe.preference
    if not pref.beta > 0:
        fail("preference.beta", f"must be greater than 0, got {pref.beta}.")
    if not 0 <= pref.label_smoothing < 0.5:
        fail("preference.label_smoothing", f"must be in [0, 0.5), got {pref.label_smoothing}.")
    if recipe.objective != "sft" and t.pack:
        fail(
            "train.pack",
            f"cannot be used with objective: {recipe.objective} (each batch row is one side of a "
            "pair); set it to false.",
        )
    q = recipe.quantize
    if q.bits is not None and q.bits not in (2, 3, 4, 5, 6, 8):
        fail("quantize.bits", f"must be 2, 3, 4, 5, 6 or 8, got {q.bits}.")
    if q.group_size not in (32, 64, 128):
        fail("quantize.group_size", f"must be 32, 64 or 128, got {q.group_size}.")
    if q.bits is not None and recipe.method == "full":
        fail(
            "quantize.bits", "cannot be used with method: full (a quantized base cannot be trained); use lora or dora."
        )


def recipe_from_dict(
    raw: dict,
    source: str = "<recipe>",
    lines: dict[str, int] | None = None,
    origins: dict[str, str] | None = None,
) -> Recipe:
    """Validate a raw dict (from YAML or a UI form) into a Recipe.

    `lines` gives each key's line in `source`; `origins` names the command-line flag of
    each overridden key, so an error blames the flag rather than the recipe's line.
    """
    locate = Where(source, lines, origins)
    recipe = build_dataclass(Recipe, _normalize_data(raw), locate, RecipeError)
    check_recipe(recipe, source, locate)
    return recipe


def recipe_from_text(text: str, source: str = "<recipe>") -> Recipe:
    """Validate a recipe given as YAML text (e.g. received from another rank)."""
    raw = parse_yaml_value(text) or {}
    return recipe_from_dict(raw, source)


def load_recipe(
    path: str | Path | None, overrides: list[str] | None = None, labels: dict[str, str] | None = None
) -> Recipe:
    """Read, override and validate a recipe; `path=None` starts from defaults.

    `labels` maps an overridden key to the flag that set it (`--train.iters many`); other
    overrides are named as `--set KEY=VALUE` in errors.
    """
    raw, lines, source = {}, {}, "<command line>"
    if path is not None:
        raw, lines = read_recipe_file(path)
        source = str(path)
    raw = apply_overrides(raw, overrides or [])
    return recipe_from_dict(raw, source, lines, override_origins(overrides or [], labels))


def check_layers_fit(lora: LoraConfig, num_blocks: int) -> None:
    """`lora.layers` against the model's block count (known only once the model is loaded)."""
    if isinstance(lora.layers, int) and lora.layers > num_blocks:
        raise RecipeError(
            f"'lora.layers' is {lora.layers}, but this model has only {num_blocks} transformer blocks; "
            f"set it to a number from 1 to {num_blocks}, or 'all'."
        )


def with_absolute_paths(recipe: Recipe) -> Recipe:
    """A copy whose local model and data paths are absolute, so a run dir works from any cwd.

    Hub ids (paths that do not exist locally) are kept as written.
    """

    def absolute(value: str | None) -> str | None:
        if value and Path(value).expanduser().exists():
            return str(Path(value).expanduser().resolve())
        return value

    data = dataclasses.replace(
        recipe.data,
        train=absolute(recipe.data.train),
        valid=absolute(recipe.data.valid),
        test=absolute(recipe.data.test),
        ood=absolute(recipe.data.ood),
    )
    return dataclasses.replace(
        recipe,
        model=absolute(recipe.model),
        data=data,
        init=absolute(recipe.init),
        output=absolute(recipe.output) if recipe.output else recipe.output,
    )


def dump_recipe(recipe: Recipe) -> str:
    """The recipe as YAML, every key explicit (what a run dir stores)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def iter_fields(cls=Recipe, prefix: str = ""):
    """Yield (dotted name, type, default, help, choices) for every leaf field: CLI flags and forms."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield f"{prefix}{f.name}", tp, default, f.metadata.get("help", ""), f.metadata.get("choices")
