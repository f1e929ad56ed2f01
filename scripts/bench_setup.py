"""Build the benchmark models and chat data used for the figures in the README and notes.

    python scripts/bench_setup.py bench/      # then e.g.
    mlxsft bench --model bench/s256 --data bench/data-multi --batch-size 8 --max-seq-length 512 \\
                 --steps 10 --warmup 3 --against mlx-lm --against peft

s256: Llama, hidden 256 x 8 layers, vocab 2000 (tokenizer trained on the data), 7.3M parameters.
m384: Llama, hidden 384 x 12 layers, vocab padded to 32000 (a realistic LM head), 43M parameters.
l768: Llama, hidden 768 x 12 layers (12 heads, 4 KV heads), MLP 2048, vocab padded to 32000, 125M parameters.
data-multi: 400 chats of 2-4 turns (133-498 tokens, mean ~309); data-single: 400 one-turn chats.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from mlxsft.devmodel import TinyModelSpec, build_tiny_model

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part"
).split()


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def paragraph(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(sentence(rng, rng.randint(6, 14)) for _ in range(rng.randint(lo, hi)))


def chat(rng: random.Random, turns: tuple[int, int], user: tuple[int, int], reply: tuple[int, int]) -> dict:
    messages = [{"role": "system", "content": "You are a helpful assistant. " + sentence(rng, 8)}]
    for _ in range(rng.randint(*turns)):
        messages.append({"role": "user", "content": paragraph(rng, *user)})
        messages.append({"role": "assistant", "content": paragraph(rng, *reply)})
    return {"messages": messages}


def write_data(folder: Path, seed: int, **shape) -> list[str]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    texts = []
    for name, n in (("train", 400), ("valid", 40)):
        rows = [chat(rng, **shape) for _ in range(n)]
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        texts += [m["content"] for r in rows for m in r["messages"]]
    return texts


def main(out: str) -> None:
    root = Path(out)
    texts = write_data(root / "data-multi", 1, turns=(2, 4), user=(2, 5), reply=(2, 6))
    write_data(root / "data-single", 2, turns=(1, 1), user=(3, 9), reply=(4, 12))
    build_tiny_model(
        root / "s256",
        TinyModelSpec(
            hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2, intermediate_size=768, vocab_size=2000
        ),
        corpus=texts,
    )
    build_tiny_model(
        root / "m384",
        TinyModelSpec(
            hidden_size=384,
            num_layers=12,
            num_heads=6,
            num_kv_heads=2,
            intermediate_size=1024,
            vocab_size=2000,
            model_vocab_size=32000,
        ),
        corpus=texts,
    )
    build_tiny_model(
        root / "l768",
        TinyModelSpec(
            hidden_size=768,
            num_layers=12,
            num_heads=12,
            num_kv_heads=4,
            intermediate_size=2048,
            vocab_size=2000,
            model_vocab_size=32000,
        ),
        corpus=texts,
    )
    print(f"Wrote models s256, m384, l768 and data-multi, data-single under {root}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench")
