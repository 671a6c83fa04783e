"""Conditional steering (CAST, arXiv 2409.05907): a gate read from the prompt's own activations turns a
setting on for the reply only when the context calls for it.

The gate reads the residual stream (`l_out`) of one layer at the last prompt token, unsteered, projects it on
a direction (the CAA direction of that layer, oriented so that larger means "steer") and fires above a
threshold. `fit_gate` chooses the layer, the orientation and the threshold from dev prompts alone: among the
thresholds that fire on at most `max_rate` of the harmless prompts, the layer whose gate fires on the most
prompts that call for steering. A fired prompt's reply is generated under the setting in scope "generation"
(the prompt was read unsteered to decide); any other prompt's reply is unsteered.

This is an evaluation method: a profile file has no gate yet, so a build measures it and does not ship it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..control_vector import ControlVector
from ..engine.decoder import Decoder

MAX_TRIGGER_RATE = 0.05  # on harmless prompts (CAST: 2.4% on harmless at 83% refusal on harmful)


@dataclass(frozen=True)
class Gate:
    layer: int
    direction: tuple[float, ...]  # unit length; a tuple so that a gate compares and hashes by value
    threshold: float

    def scores(self, residuals: np.ndarray) -> np.ndarray:
        """Projections of last-prompt-token residuals ([prompts, layers, width]) on the gate's direction."""
        return residuals[:, self.layer] @ np.asarray(self.direction, dtype=np.float64)

    def fires(self, residuals: np.ndarray) -> np.ndarray:
        return self.scores(residuals) > self.threshold

    def describe(self) -> str:
        return f"gate at layer {self.layer}, threshold {self.threshold:.3g}"


def last_prompt_residuals(llm, prompts: Sequence[Sequence[int]]) -> np.ndarray:
    """The unsteered residual stream of every layer at the last token of each prompt: [prompts, layers, width]."""
    out = np.empty((len(prompts), llm.shape.n_layers, llm.shape.widths["layer"]), dtype=np.float32)
    with Decoder(llm) as decoder:
        for group in decoder.groups(prompts):
            out[group.members] = decoder.capture(group, ["layer"])["layer"]
    return out


def fit_gate(wanted: np.ndarray, harmless: np.ndarray, control: ControlVector,
             max_rate: float = MAX_TRIGGER_RATE) -> Gate:
    """The gate that fires on the most `wanted` prompts while firing on at most `max_rate` of the `harmless`
    ones (both: last-prompt-token residuals of dev prompts, `last_prompt_residuals`); ties go to the lower
    layer."""
    if len(wanted) == 0 or len(harmless) == 0:
        raise ValueError("a gate is fitted on prompts that call for steering and on harmless ones")
    best: tuple[float, float, Gate] | None = None
    for layer in control.layers:
        direction = np.asarray(control.directions[layer], dtype=np.float64)
        norm = np.linalg.norm(direction)
        if norm == 0:
            continue
        for sign in (1.0, -1.0):
            unit = sign * direction / norm
            gate_scores = harmless[:, layer] @ unit
            allowed = int(np.floor(max_rate * len(gate_scores)))  # harmless prompts it may fire on
            threshold = float(np.sort(gate_scores)[::-1][allowed])  # fires strictly above
            gate = Gate(layer, tuple(float(v) for v in unit), threshold)
            rate = float(gate.fires(wanted).mean())
            margin = float(np.median(wanted[:, layer] @ unit) - threshold)
            if best is None or (rate, margin) > best[:2]:
                best = (rate, margin, gate)
    if best is None:
        raise ValueError("the control vector has no direction to gate on")
    return best[2]
