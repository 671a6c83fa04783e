"""The block-level baseline: a CAA control vector.

Direction of layer L = mean over pairs of (pos - neg) of the residual stream `l_out-L` at the last token.
llama.cpp adds `direction.L` to the residual of layer L just before it is named `l_out-L` (the place it was
measured), for L >= 1: layer 0 cannot take a control vector, so direction.0 is never held. Its file is
llama.cpp's control-vector GGUF (`formats.control_vectors`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

MAX_VALUE = 1e5  # the largest value a control vector may add to a residual coordinate


@dataclass(eq=False)
class ControlVector:
    """Equal vectors (same layers, same values) compare equal."""

    directions: dict[int, np.ndarray]  # layer (>= 1) -> [n_embd] float32
    model_hint: str
    n_pairs: int = 0
    extra: dict = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlVector):
            return NotImplemented
        return self.layers == other.layers and all(np.array_equal(self.directions[layer], other.directions[layer])
                                                   for layer in self.layers)

    __hash__ = None  # type: ignore[assignment]

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def check_fits(self, n_layers: int, width: int, what: str = "the control vector") -> None:
        """InputError unless every direction is a vector of `width` for a layer in 1..n_layers-1, with values
        `check_values` accepts."""
        for layer, direction in self.directions.items():
            if not 1 <= layer < n_layers or direction.shape != (width,):
                raise InputError(f"{what}'s direction.{layer} does not fit this model: finite values, layers "
                                 f"1..{n_layers - 1} of width {width}")
        self.check_values(what)

    def check_values(self, what: str = "the control vector") -> None:
        """InputError unless every value is finite and within +-MAX_VALUE (beyond it a residual stream is
        broken, not steered: a vector of 1e30 only gives empty replies)."""
        for layer, direction in self.directions.items():
            if not np.isfinite(direction).all() or float(np.abs(direction).max(initial=0.0)) > MAX_VALUE:
                raise InputError(f"{what}'s direction.{layer} has values that are not finite or beyond "
                                 f"+-{MAX_VALUE:g}: this is not a control vector for a language model")

    def scaled(self, multiplier: float) -> dict[int, np.ndarray]:
        return {layer: direction * np.float32(multiplier) for layer, direction in self.directions.items()}

    def restricted(self, first: int, last: int) -> ControlVector:
        kept = {layer: v for layer, v in self.directions.items() if first <= layer <= last}
        if not kept:
            raise InputError(f"the control vector has no direction in layers {first}-{last} (it has "
                             f"{self.layers[0]}-{self.layers[-1]})")
        return ControlVector(kept, self.model_hint, self.n_pairs, dict(self.extra))
