"""Reducers of one capture pass: what localization keeps of the captured activations.

- `MomentumCounts` (AUSteer): running sign counts of d = pos - neg per (site, layer, dim). For N pairs,
  r_pos = #(d > 0) / N and r_neg = #(d < 0) / N (zeros count in neither); s = +r_pos if r_pos >= r_neg else
  -r_neg. `rank_units` ranks all units together by |s| = max(r_pos, r_neg) with a stable sort over the order
  (layer, site, dim), so ties go to the lower layer, then (several sites together) the registry's site order,
  then the lower dim. Counts are integers, so the ranking never depends on float rounding.
  With `pooled`, d is the difference of the two texts' means over their own tails (every token of the reply
  from where the two differ), not of their last tokens: position-pooled momentum.
- `MeanDifference` (CAA): the mean of pos - neg per (layer, dim) of one site; at the residual stream
  (`layer`) it is the control vector.
Both hold O(layers x width) memory per site, whatever the number of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .. import sites
from ..control_vector import ControlVector
from ..sites import ModelShape

if TYPE_CHECKING:
    from .capture import PairActivations


@dataclass
class MomentumCounts:
    n_layers: int
    widths: dict[str, int]
    n_pairs: int = 0
    positive: dict[str, np.ndarray] = field(default_factory=dict)
    negative: dict[str, np.ndarray] = field(default_factory=dict)
    pooled: bool = False  # counts the tails' means (needs a pooled capture pass), not the last tokens

    def __post_init__(self) -> None:
        for site, width in self.widths.items():
            self.positive.setdefault(site, np.zeros((self.n_layers, width), dtype=np.int64))
            self.negative.setdefault(site, np.zeros((self.n_layers, width), dtype=np.int64))

    @classmethod
    def for_shape(cls, shape: ModelShape, site_names: tuple[str, ...] | list[str], *,
                  pooled: bool = False) -> MomentumCounts:
        return cls(shape.n_layers, {site: shape.widths[site] for site in site_names}, pooled=pooled)

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(site for site in sites.names() if site in self.widths)

    def add(self, site: str, positive: np.ndarray, negative: np.ndarray) -> None:
        """positive, negative: [pairs, layers, width] last-token activations of the same pairs."""
        difference = positive.astype(np.float32) - negative.astype(np.float32)
        self.positive[site] += (difference > 0).sum(axis=0)
        self.negative[site] += (difference < 0).sum(axis=0)

    def count_pairs(self, n: int) -> None:
        self.n_pairs += n

    def add_group(self, group: PairActivations) -> None:
        positive, negative = group.positive, group.negative
        if self.pooled:
            if group.positive_mean is None:
                raise ValueError("pooled momentum needs a pooled capture pass (PairCapture(..., pooled=True))")
            positive, negative = group.positive_mean, group.negative_mean
        for site in self.sites:
            self.add(site, positive[site], negative[site])
        self.count_pairs(len(group.indices))

    def only(self, site: str) -> MomentumCounts:
        """The counts of one site alone (sharing the arrays): rank_units of it ranks that site's units."""
        return MomentumCounts(self.n_layers, {site: self.widths[site]}, self.n_pairs,
                              {site: self.positive[site]}, {site: self.negative[site]}, self.pooled)

    def scores(self, site: str) -> np.ndarray:
        """[layers, width] momentum scores s of one site."""
        n = self.n_pairs
        positive, negative = self.positive[site], self.negative[site]
        return np.where(positive >= negative, positive / n, -negative / n)

    def layer_strength(self, site: str) -> np.ndarray:
        """[layers] summed |s| of one site: where the site separates the pairs most."""
        return np.maximum(self.positive[site], self.negative[site]).sum(axis=1)


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
    n, site_names = counts.n_pairs, counts.sites
    return [RankedUnit(rank, int(layer_index[i]), site_names[int(site_index[i])], int(dim_index[i]),
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


@dataclass
class MeanDifference:
    """The mean over pairs of pos - neg at one site, per layer (float64 sums), and each unit's typical
    magnitude: its root mean square over both texts of every pair."""

    site: str
    total: np.ndarray  # [layers, width]
    squares: np.ndarray  # [layers, width] sum of pos^2 + neg^2
    n_pairs: int = 0

    @classmethod
    def for_shape(cls, shape: ModelShape, site: str = "layer") -> MeanDifference:
        zeros = np.zeros((shape.n_layers, shape.widths[site]), dtype=np.float64)
        return cls(site, zeros, zeros.copy())

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,)

    def add_group(self, group: PairActivations) -> None:
        positive, negative = group.positive[self.site].astype(np.float64), group.negative[self.site]
        self.total += (positive - negative).sum(axis=0)
        self.squares += (positive ** 2 + negative.astype(np.float64) ** 2).sum(axis=0)
        self.n_pairs += len(group.indices)

    def magnitude(self) -> np.ndarray:
        """[layers, width] each unit's root mean square over both texts of every pair."""
        if self.n_pairs <= 0:
            raise ValueError("no pairs were captured")
        return np.sqrt(self.squares / (2 * self.n_pairs)).astype(np.float32)

    def mean(self) -> np.ndarray:
        if self.n_pairs <= 0:
            raise ValueError("no pairs were captured")
        return (self.total / self.n_pairs).astype(np.float32)

    def control_vector(self, architecture: str) -> ControlVector:
        """CAA: the residual-stream mean difference of every layer L >= 1 (llama.cpp adds it to l_out-L)."""
        if self.site != "layer":
            raise ValueError("a control vector is the mean difference of the residual stream (site 'layer')")
        mean = self.mean()
        return ControlVector({layer: mean[layer] for layer in range(1, len(mean))}, architecture, self.n_pairs)


@dataclass
class DirectionAgreement:
    """How much the pairs agree on one direction: the mean cosine between the pairs' differences pos - neg at
    one site, per layer, over every two pairs. For unit vectors u_1..u_m, the sum over ordered pairs i != j of
    u_i . u_j is |u_1 + ... + u_m|^2 - m, so a running sum of the unit differences is all it keeps."""

    site: str
    total: np.ndarray  # [layers, width] sum of the unit-length differences
    counted: np.ndarray  # [layers] pairs whose difference is not zero
    n_pairs: int = 0

    @classmethod
    def for_shape(cls, shape: ModelShape, site: str = "layer") -> DirectionAgreement:
        width = shape.widths[site]
        return cls(site, np.zeros((shape.n_layers, width), dtype=np.float64), np.zeros(shape.n_layers, dtype=np.int64))

    @property
    def sites(self) -> tuple[str, ...]:
        return (self.site,)

    def add_group(self, group: PairActivations) -> None:
        difference = group.positive[self.site].astype(np.float64) - group.negative[self.site]
        norms = np.linalg.norm(difference, axis=2, keepdims=True)
        nonzero = norms > 0
        self.total += np.where(nonzero, difference / np.where(nonzero, norms, 1.0), 0.0).sum(axis=0)
        self.counted += nonzero[..., 0].sum(axis=0)
        self.n_pairs += len(group.indices)

    def agreement(self) -> np.ndarray:
        """[layers] mean cosine between two pairs' differences (0 where fewer than two pairs differ)."""
        m = self.counted.astype(np.float64)
        squared = (self.total ** 2).sum(axis=1)
        return np.where(m > 1, (squared - m) / np.maximum(m * (m - 1), 1.0), 0.0)
