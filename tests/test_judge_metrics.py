"""Pure metrics of the evaluation battery, against closed forms and brute force."""

import math
from itertools import combinations

import numpy as np
import pytest

from mlxsft.judge import metrics as M


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of all k-subsets of n samples (c of them correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert M.pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_closed_forms():
    # pass@1 is the share of correct samples; pass@n is 1 as soon as one sample passes
    assert M.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert M.pass_at_k(10, 1, 10) == 1.0
    assert M.pass_at_k(10, 0, 5) == 0.0
    # 1 - C(7,2)/C(10,2) = 1 - 21/45
    assert M.pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    # large n stays exact (no float overflow in the binomials)
    assert M.pass_at_k(200, 1, 100) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 1, 5)


def test_mean_pass_at_k_averages_prompts_and_skips_short_ones():
    assert M.mean_pass_at_k([(4, 0), (4, 4)], 1) == pytest.approx(0.5)
    assert M.mean_pass_at_k([(4, 1), (2, 2)], 4) == pytest.approx(1.0)  # (2, 2) has too few samples for k=4
    assert M.mean_pass_at_k([(2, 1)], 4) is None


def test_distinct_n_counts_unique_ngrams():
    assert M.distinct_n([[1, 2, 3], [1, 2, 4]], 1) == pytest.approx(4 / 6)
    assert M.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)  # (1,2) twice, (2,3), (2,4)
    assert M.distinct_n([[5, 5, 5, 5]], 2) == pytest.approx(1 / 3)
    assert M.distinct_n([[1]], 2) is None


def test_self_similarity_is_mean_pairwise_jaccard():
    same = [[1, 2, 3], [1, 2, 3], [1, 2, 3]]
    assert M.self_similarity(same) == 1.0
    disjoint = [[1, 2], [3, 4]]
    assert M.self_similarity(disjoint) == 0.0
    # bigram sets {(1,2),(2,3)} and {(1,2),(2,4)}: 1 shared of 3
    assert M.self_similarity([[1, 2, 3], [1, 2, 4]]) == pytest.approx(1 / 3)
    assert M.self_similarity([[1, 2]]) is None


def test_template_share_finds_the_common_opening_and_closing():
    texts = ["Sure! Here is the answer: 4", "Sure! Here is what I think", "No.", "Sure! Here is it"]
    share, template = M.template_share(texts)
    assert share == pytest.approx(3 / 4) and template == "Sure! Here is"
    share, template = M.template_share(["a b c d", "x c d", "e f"], words=2, at_end=True)
    assert share == pytest.approx(2 / 3) and template == "c d"
    assert M.template_share([]) == (None, "")


def test_entropy_from_logprobs():
    uniform = np.log(np.full((2, 4), 0.25))
    assert M.entropy_from_logprobs(uniform) == pytest.approx([math.log(4)] * 2)
    certain = np.array([0.0, -np.inf, -np.inf])
    assert M.entropy_from_logprobs(certain) == pytest.approx(0.0)


def test_json_parsing_and_detection():
    assert M.parse_json(' {"a": 1} ') == (True, {"a": 1})
    assert M.parse_json('```json\n{"a": [1, 2]}\n```') == (True, {"a": [1, 2]})
    assert M.parse_json("{'a': 1}") == (False, None)
    assert M.looks_like_json(['{"a": 1}', "[1]", "plain"])
    assert not M.looks_like_json(["plain", "text", "[1]"])
    assert M.exact_match(" Paris\n", "Paris") and not M.exact_match("paris", "Paris")


def test_relative_change_handles_missing_and_zero():
    assert M.relative_change(1.1, 1.0) == pytest.approx(0.1)
    assert M.relative_change(0.5, -1.0) == pytest.approx(1.5)
    assert M.relative_change(None, 1.0) is None and M.relative_change(1.0, 0.0) is None
    assert M.mean_or_none([None, 1.0, 3.0]) == 2.0 and M.mean_or_none([None]) is None
