"""Will it steer? A reading of one capture pass, taken before anything is generated.

- Momentum (AUSteer): how far the top units' sign agreement |s| = max(r_pos, r_neg) stands above chance. If
  every pair's difference had a random sign, a unit's count of positive differences would be Binomial(N, 1/2),
  and the largest |s| of the model's M units would be about 1/2 + z / (2 sqrt N) with z the normal quantile at
  1 - 1/(2M). `units_beyond_chance` counts the units above that level.
- Direction (CAA): the mean cosine between two pairs' residual-stream differences, at the layer where it is
  highest (`reducers.DirectionAgreement`); 0 when the pairs' differences point every which way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from .reducers import MomentumCounts, rank_units

TOP_UNITS = 100


@dataclass(frozen=True)
class Reading:
    pairs: int
    units: int
    top_momentum: float  # mean |s| of the top units
    chance_momentum: float  # the largest |s| of this many units with random signs
    units_beyond_chance: int
    agreement: float  # mean cosine between two pairs' residual-stream differences, best layer
    agreement_layer: int

    def describe(self) -> str:
        return (f"{self.pairs} pairs: the top {TOP_UNITS} units agree in sign on {self.top_momentum:.0%} of pairs "
                f"on average (the largest of {self.units} units would reach {self.chance_momentum:.0%} by chance; "
                f"{self.units_beyond_chance} units are beyond it); the pairs' residual-stream differences have a "
                f"mean cosine of {self.agreement:.2f} at layer {self.agreement_layer} (0: no shared direction)")

    def to_dict(self) -> dict:
        return asdict(self)


def chance_momentum(n_pairs: int, n_units: int) -> float:
    """The |s| the largest of `n_units` units would reach if each pair's difference had a random sign."""
    z = NormalDist().inv_cdf(1 - 1 / (2 * max(n_units, 1)))
    return min(1.0, 0.5 + z / (2 * math.sqrt(max(n_pairs, 1))))


def read(counts: MomentumCounts, agreement: np.ndarray, top: int = TOP_UNITS) -> Reading:
    """The reading of a capture pass: its momentum counts (every site captured) and `DirectionAgreement.agreement()`."""
    units = sum(counts.n_layers * width for width in counts.widths.values())
    strength = np.concatenate([np.maximum(counts.positive[site], counts.negative[site]).ravel()
                               for site in counts.sites]) / max(counts.n_pairs, 1)
    ranked = rank_units(counts, top)
    chance = chance_momentum(counts.n_pairs, units)
    best = int(np.argmax(agreement)) if len(agreement) else 0
    return Reading(counts.n_pairs, units, float(np.mean([abs(unit.score) for unit in ranked])), chance,
                   int((strength > chance).sum()), float(agreement[best]) if len(agreement) else 0.0, best)
