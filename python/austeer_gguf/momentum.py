"""Activation momentum: running sign counts of pos - neg, scores, and the global stable top-k.

For N pairs and each (site, layer, dim): d = pos - neg at the last token; r_pos = #(d > 0) / N and
r_neg = #(d < 0) / N (zeros count in neither); s = +r_pos if r_pos >= r_neg else -r_neg. All units are
ranked together by |s| = max(r_pos, r_neg) with a stable sort over the order (layer, site, dim), so ties
go to the lower layer, then (when several sites are localized together) the site order attn, ffn, layer,
then the lower dim. Counts are integers, so the ranking never depends on float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .sites import SITES


@dataclass
class MomentumCounts:
    """Memory O(layers x width) per site, whatever the number of pairs."""

    n_layers: int
    widths: dict[str, int]
    n_pairs: int = 0
    positive: dict[str, np.ndarray] = field(default_factory=dict)
    negative: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for site, width in self.widths.items():
            self.positive.setdefault(site, np.zeros((self.n_layers, width), dtype=np.int64))
            self.negative.setdefault(site, np.zeros((self.n_layers, width), dtype=np.int64))

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(site for site in SITES if site in self.widths)

    def add(self, site: str, positive: np.ndarray, negative: np.ndarray) -> None:
        """positive, negative: [pairs, layers, width] last-token activations of the same pairs."""
        difference = positive.astype(np.float32) - negative.astype(np.float32)
        self.positive[site] += (difference > 0).sum(axis=0)
        self.negative[site] += (difference < 0).sum(axis=0)

    def count_pairs(self, n: int) -> None:
        self.n_pairs += n


@dataclass(frozen=True)
class RankedUnit:
    rank: int
    layer: int
    site: str
    dim: int
    r_pos: float
    r_neg: float

    @property
    def score(self) -> float:
        return self.r_pos if self.r_pos >= self.r_neg else -self.r_neg


def rank_units(counts: MomentumCounts, k: int) -> list[RankedUnit]:
    """The top-k units over all sites and layers (fewer when the model has fewer units)."""
    if counts.n_pairs <= 0:
        raise ValueError("no pairs were scored")
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    positive, negative, layer_index, site_index, dim_index = _flatten(counts)
    strength = np.maximum(positive, negative)
    order = np.argsort(-strength, kind="stable")[:k]
    n, sites = counts.n_pairs, counts.sites
    return [RankedUnit(rank, int(layer_index[i]), sites[int(site_index[i])], int(dim_index[i]),
                       int(positive[i]) / n, int(negative[i]) / n)
            for rank, i in enumerate(order, start=1)]


def _flatten(counts: MomentumCounts) -> tuple[np.ndarray, ...]:
    """Counts and coordinates in (layer, site, dim) order, so a stable sort breaks ties as documented."""
    positive, negative, layers, site_codes, dims = [], [], [], [], []
    for layer in range(counts.n_layers):
        for code, site in enumerate(counts.sites):
            width = counts.widths[site]
            positive.append(counts.positive[site][layer])
            negative.append(counts.negative[site][layer])
            layers.append(np.full(width, layer))
            site_codes.append(np.full(width, code))
            dims.append(np.arange(width))
    return tuple(np.concatenate(parts) for parts in (positive, negative, layers, site_codes, dims))
