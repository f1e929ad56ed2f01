"""Pure metric functions of the evaluation battery: no MLX, no files, no model.

Output-distribution metrics (distinct-n, self-similarity, template share), task
metrics (exact match, JSON validity, JSON-schema validity, pass@k) and the small
statistics the verdict rules compare. Every function takes plain Python or NumPy
values and returns plain floats, so each is tested against a hand computation.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from itertools import combinations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k).

    The chance that at least one of k samples drawn without replacement from the n
    passes (Chen et al. 2021). Exact integer arithmetic, so it is exact for any n.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float | None:
    """pass@k averaged over prompts, from (n samples, c passed) per prompt."""
    usable = [(n, c) for n, c in counts if n >= k]
    if not usable:
        return None
    return float(np.mean([pass_at_k(n, c, k) for n, c in usable]))


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sequences: Sequence[Sequence], n: int) -> float | None:
    """Unique n-grams / all n-grams over all sequences (Li et al. 2016); None without any n-gram."""
    grams = [g for seq in sequences for g in ngrams(list(seq), n)]
    if not grams:
        return None
    return len(set(grams)) / len(grams)


def _gram_set(tokens: Sequence, n: int) -> frozenset:
    tokens = list(tokens)
    if len(tokens) < n:
        return frozenset([tuple(tokens)]) if tokens else frozenset()
    return frozenset(ngrams(tokens, n))


def jaccard(a: frozenset | set, b: frozenset | set) -> float:
    """|a ∩ b| / |a ∪ b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def self_similarity(samples: Sequence[Sequence], n: int = 2) -> float | None:
    """Mean pairwise Jaccard similarity of the samples' n-gram sets (1.0: all samples alike)."""
    if len(samples) < 2:
        return None
    sets = [_gram_set(s, n) for s in samples]
    return float(np.mean([jaccard(a, b) for a, b in combinations(sets, 2)]))


def template_share(texts: Sequence[str], words: int = 3, at_end: bool = False) -> tuple[float | None, str]:
    """(share, run): the most common run of the first (or last) `words` words, and its share.

    A fine-tune that collapses onto a template ("Sure! Here is ...") shows it here
    long before the loss does. Texts shorter than `words` words are compared whole.
    """
    keys = []
    for text in texts:
        parts = text.split()
        if not parts:
            continue
        keys.append(" ".join(parts[-words:] if at_end else parts[:words]))
    if not keys:
        return None, ""
    template, count = Counter(keys).most_common(1)[0]
    return count / len(texts), template


def entropy_from_logprobs(logprobs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each distribution along the last axis: (..., V) -> (...)."""
    logprobs = np.asarray(logprobs, dtype=np.float64)
    probs = np.exp(logprobs)
    return -(probs * np.where(probs > 0, logprobs, 0.0)).sum(axis=-1)


def exact_match(completion: str, reference: str) -> bool:
    """Equal after trimming surrounding whitespace."""
    return completion.strip() == reference.strip()


def parse_json(text: str):
    """(True, value) when `text` (trimmed, maybe in a ``` fence) is JSON, else (False, None)."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text[text.find("\n") + 1 :] if "\n" in text else text
        text = text.strip()
    try:
        return True, json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return False, None


def looks_like_json(texts: Sequence[str], share: float = 0.5) -> bool:
    """True when at least `share` of the references are a JSON object or array."""
    if not texts:
        return False
    hits = 0
    for t in texts:
        ok, value = parse_json(t)
        hits += ok and isinstance(value, (dict, list))
    return hits / len(texts) >= share


def relative_change(new: float | None, old: float | None) -> float | None:
    """(new - old) / |old|; None when either is missing or old is 0."""
    if new is None or old is None or old == 0 or not (math.isfinite(new) and math.isfinite(old)):
        return None
    return (new - old) / abs(old)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None
