"""A planted preference task: the right opening of a reply depends on the prompt's first word.

Prompts start with "please" or "order", then random words. The rule: after "please" the
reply opens with "thanks", after "order" with "sorry"; the rejected reply has the other
opening and the same rest. Half the pairs prefer each opening, so a model that simply
likes one opening better (as any model does) is right on about half of them.

An SFT stage first trains each prompt with both openings (`sft_rows`): the model learns
the reply format but no rule. Preference tuning must then learn the rule. Held-out rows
are new prompts (other draws of the words; checked to differ from every training prompt).
"""

from __future__ import annotations

import random

RULE = {"please": "thanks", "order": "sorry"}
TRAIN_WORDS = ["hello", "world", "quick", "brown", "fox", "lazy", "dog", "name", "city", "age", "refund", "question"]


def _rows(words, n: int, seed: int) -> list[tuple[str, str, str]]:
    """(prompt, right opening, reply body) rows, the two triggers alternating."""
    rng = random.Random(seed)
    triggers = list(RULE)
    rows = []
    for i in range(n):
        trigger = triggers[i % 2]
        rows.append((" ".join([trigger, *rng.sample(words, 3)]), RULE[trigger], " ".join(rng.sample(words, 2))))
    return rows


def other(opening: str) -> str:
    return next(o for o in RULE.values() if o != opening)


def chat(prompt: str, reply: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]}


def pair_row(prompt: str, opening: str, body: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": f"{opening} {body}"}],
        "rejected": [{"role": "assistant", "content": f"{other(opening)} {body}"}],
    }


def sft_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Each prompt twice, once with each opening."""
    return [chat(p, f"{o} {body}") for p, right, body in _rows(TRAIN_WORDS, n, seed) for o in (right, other(right))]


def train_pairs(n: int = 96, seed: int = 1) -> list[dict]:
    return [pair_row(*row) for row in _rows(TRAIN_WORDS, n, seed)]


def held_out_pairs(n: int = 32, seed: int = 2) -> list[dict]:
    seen = {p for p, _, _ in _rows(TRAIN_WORDS, 48, 0) + _rows(TRAIN_WORDS, 96, 1)}
    rows = [row for row in _rows(TRAIN_WORDS, 2 * n, seed) if row[0] not in seen]
    return [pair_row(*row) for row in rows[:n]]


def follows_rule(prompt: str, reply: str) -> bool:
    return reply.strip().startswith(RULE[prompt.split()[0]])
