"""Momentum scoring and the global stable top-k against a brute-force NumPy implementation."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf.localization.reducers import MomentumCounts, rank_units


def brute_force(positive: dict, negative: dict, k: int) -> list[tuple[int, str, int, float]]:
    """Straight from the definition: every unit's score, then a plain Python sort."""
    n = next(iter(positive.values())).shape[0]
    rows = []
    for site_order, site in enumerate(positive):
        _, n_layers, width = positive[site].shape
        for layer in range(n_layers):
            for dim in range(width):
                d = [float(positive[site][i, layer, dim]) - float(negative[site][i, layer, dim]) for i in range(n)]
                r_pos = sum(x > 0 for x in d) / n
                r_neg = sum(x < 0 for x in d) / n
                score = r_pos if r_pos >= r_neg else -r_neg
                rows.append((-abs(score), layer, site_order, dim, site, score))
    rows.sort(key=lambda row: row[:4])
    return [(layer, site, dim, score) for _, layer, _, dim, site, score in rows[:k]]


def counts_of(positive: dict, negative: dict, chunk: int = 3) -> MomentumCounts:
    first = next(iter(positive.values()))
    counts = MomentumCounts(first.shape[1], {site: values.shape[2] for site, values in positive.items()})
    for start in range(0, first.shape[0], chunk):  # in several groups, as capture delivers them
        for site in positive:
            counts.add(site, positive[site][start:start + chunk], negative[site][start:start + chunk])
        counts.count_pairs(min(chunk, first.shape[0] - start))
    return counts


def ranked(counts: MomentumCounts, k: int) -> list[tuple[int, str, int, float]]:
    return [(u.layer, u.site, u.dim, u.score) for u in rank_units(counts, k)]


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_with_many_ties_and_zero_differences(seed):
    rng = np.random.default_rng(seed)
    # Small integers: many exact zero differences and many tied scores.
    positive = {"attn": rng.integers(-2, 3, (7, 3, 5)).astype(np.float32),
                "ffn": rng.integers(-2, 3, (7, 3, 4)).astype(np.float32)}
    negative = {site: rng.integers(-2, 3, values.shape).astype(np.float32) for site, values in positive.items()}
    for k in (1, 5, 13, 27):
        assert ranked(counts_of(positive, negative), k) == brute_force(positive, negative, k)


def test_ties_go_to_the_lower_layer_then_the_lower_dim():
    positive = {"layer": np.ones((4, 3, 3), dtype=np.float32)}
    negative = {"layer": np.zeros((4, 3, 3), dtype=np.float32)}
    assert [(u.layer, u.dim) for u in rank_units(counts_of(positive, negative), 4)] == [(0, 0), (0, 1), (0, 2), (1, 0)]


def test_zero_differences_count_in_neither_direction():
    positive = {"attn": np.array([[[1.0]], [[2.0]], [[3.0]], [[5.0]]], dtype=np.float32)}
    negative = {"attn": np.array([[[1.0]], [[2.0]], [[4.0]], [[4.0]]], dtype=np.float32)}
    (unit,) = rank_units(counts_of(positive, negative), 1)
    assert (unit.r_pos, unit.r_neg, unit.score) == (0.25, 0.25, 0.25)  # a tie counts as positive


def test_all_negative_differences_give_score_minus_one():
    positive = {"ffn": np.zeros((5, 2, 3), dtype=np.float32)}
    negative = {"ffn": np.ones((5, 2, 3), dtype=np.float32)}
    units = rank_units(counts_of(positive, negative), 6)
    assert {u.score for u in units} == {-1.0}
    assert [(u.layer, u.dim) for u in units] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_k_larger_than_the_number_of_units_returns_them_all():
    rng = np.random.default_rng(9)
    positive = {"attn": rng.standard_normal((6, 2, 3)).astype(np.float32)}
    negative = {"attn": rng.standard_normal((6, 2, 3)).astype(np.float32)}
    assert ranked(counts_of(positive, negative), 100) == brute_force(positive, negative, 100)
    assert len(rank_units(counts_of(positive, negative), 100)) == 6


def test_no_pairs_or_bad_k_is_refused():
    counts = MomentumCounts(2, {"attn": 3})
    with pytest.raises(ValueError, match="no pairs"):
        rank_units(counts, 3)
    counts.count_pairs(1)
    with pytest.raises(ValueError, match="k must be positive"):
        rank_units(counts, 0)
