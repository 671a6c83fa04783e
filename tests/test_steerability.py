"""Will it steer? The capture pass's reading: the pairs' direction agreement against every pair of pairs
compared one by one, the chance level of momentum against fair coins, and a reading of planted units."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from austeer_gguf.localization.capture import PairActivations
from austeer_gguf.localization.reducers import DirectionAgreement, MomentumCounts
from austeer_gguf.localization.steerability import chance_momentum, read
from austeer_gguf.sites import ModelShape

SHAPE = ModelShape("llama", 3, {"layer": 6})


def fed(positive: np.ndarray, negative: np.ndarray, chunk: int = 4) -> DirectionAgreement:
    agreement = DirectionAgreement.for_shape(SHAPE, "layer")
    for start in range(0, len(positive), chunk):
        part = slice(start, start + chunk)
        agreement.add_group(PairActivations(list(range(len(positive)))[part], {"layer": positive[part]},
                                            {"layer": negative[part]}))
    return agreement


def mean_pairwise_cosine(differences: np.ndarray) -> float:
    """Every two pairs (i != j) whose differences are not zero, one by one."""
    kept = [d for d in differences if np.linalg.norm(d) > 0]
    cosines = [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
               for a, b in itertools.permutations(kept, 2)]
    return float(np.mean(cosines)) if cosines else 0.0


@pytest.mark.parametrize("seed", range(3))
def test_direction_agreement_is_the_mean_cosine_over_every_two_pairs(seed):
    rng = np.random.default_rng(seed)
    n = 11
    negative = rng.normal(size=(n, 3, 6)).astype(np.float32)
    shared = rng.normal(size=6)
    positive = negative + (0.5 * seed * shared + rng.normal(size=(n, 3, 6))).astype(np.float32)
    positive[2, 1] = negative[2, 1]  # a pair that does not differ at layer 1 counts in neither sum
    agreement = fed(positive, negative).agreement()
    expected = [mean_pairwise_cosine(positive[:, layer].astype(np.float64) - negative[:, layer]) for layer in range(3)]
    assert agreement == pytest.approx(expected, abs=1e-9)


def test_pairs_along_one_direction_agree_fully_and_opposite_halves_cancel():
    rng = np.random.default_rng(0)
    negative = rng.normal(size=(8, 3, 6)).astype(np.float32)
    direction = np.array([1, 2, 0, 0, -1, 0], dtype=np.float32)
    scale = rng.uniform(0.5, 2.0, size=(8, 1, 1)).astype(np.float32)
    assert fed(negative + scale * direction, negative).agreement() == pytest.approx([1, 1, 1], abs=1e-6)
    signs = np.where(np.arange(8) % 2 == 0, 1, -1).reshape(8, 1, 1).astype(np.float32)
    # four pairs each way: of the 56 ordered pairs of pairs, 24 agree (cosine 1) and 32 oppose (-1)
    assert fed(negative + signs * direction, negative).agreement() == pytest.approx([-8 / 56] * 3, abs=1e-6)


def test_chance_momentum_is_the_largest_score_of_fair_coins():
    rng = np.random.default_rng(1)
    n_pairs, n_units = 200, 2000
    largest = [np.maximum(k, n_pairs - k).max() / n_pairs for k in rng.binomial(n_pairs, 0.5, size=(60, n_units))]
    assert chance_momentum(n_pairs, n_units) == pytest.approx(float(np.median(largest)), abs=0.015)
    assert chance_momentum(10, 10**9) == 1.0


def test_a_reading_finds_planted_units_above_chance():
    rng = np.random.default_rng(2)
    n_pairs, width = 300, 50
    shape = ModelShape("llama", 4, {"attn": width, "layer": width})
    counts = MomentumCounts.for_shape(shape, ("attn", "layer"))
    difference = {site: rng.choice([-1.0, 1.0], size=(n_pairs, 4, width)) for site in ("attn", "layer")}
    difference["attn"][:, 2, :5] = 1.0  # five units every pair moves the same way
    for site in ("attn", "layer"):
        counts.add(site, difference[site], np.zeros_like(difference[site]))
    counts.count_pairs(n_pairs)
    reading = read(counts, np.array([0.0, 0.1, 0.4, 0.2]), top=5)
    assert reading.pairs == n_pairs and reading.units == 400
    assert reading.top_momentum == 1.0 and reading.units_beyond_chance == 5
    assert 0.5 < reading.chance_momentum < 0.7
    assert (reading.agreement, reading.agreement_layer) == (0.4, 2)
    assert "5 units are beyond it" in reading.describe() and "cosine of 0.40 at layer 2" in reading.describe()
