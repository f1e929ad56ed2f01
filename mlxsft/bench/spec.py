"""What a benchmark runs (`BenchSpec`) and what one side measured (`BenchResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class BenchSpec:
    model: str
    data: str  # JSONL file or folder with train.jsonl
    method: str = "lora"
    batch_size: int = 8
    max_seq_length: int = 512
    steps: int = 20
    warmup: int = 5
    rank: int = 8
    alpha: float = 16.0
    layers: int | str = "all"
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    learning_rate: float = 1e-5
    seed: int = 0
    # our trainer's own knobs (mlx-lm has no equivalent)
    pack: bool = False
    batch_tokens: int | None = None
    grad_checkpoint: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> BenchSpec:
        raw = dict(raw)
        raw["targets"] = tuple(raw.get("targets", cls.targets))
        return cls(**raw)


@dataclass
class BenchResult:
    name: str
    steps: int
    seconds: float
    tokens: int  # non-padding positions processed in the timed steps
    trained_tokens: int  # positions that carried loss
    padded_positions: int  # all positions, padding included
    peak_memory_gb: float
    notes: list[str] = field(default_factory=list)
    # cold vs warm: load + prepare, the first step (compiles), all warm-up steps, the whole child process
    prepare_s: float = 0.0
    first_step_s: float = 0.0
    warmup_s: float = 0.0
    wall_s: float = 0.0
    run: str = "warm"  # "warm", "first-install" (empty temp dir and kernel cache) or "after-reboot" (empty temp dir)
    info: dict = field(default_factory=dict)  # versions, threads, BLAS (sideinfo.py)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def trained_tokens_per_second(self) -> float:
        return self.trained_tokens / self.seconds

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / self.steps

    @property
    def padding_waste(self) -> float:
        return 1 - self.tokens / max(self.padded_positions, 1)

    def to_dict(self) -> dict:
        return asdict(self) | {
            "tokens_per_second": self.tokens_per_second,
            "trained_tokens_per_second": self.trained_tokens_per_second,
            "ms_per_step": self.ms_per_step,
            "padding_waste": self.padding_waste,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> BenchResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})
