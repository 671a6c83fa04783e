"""CAA (contrastive activation addition): the mean residual-stream difference of the pairs, per layer.

The block-level baseline people use today; written as a llama.cpp control vector (see control_vector.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .control_vector import ControlVector
from .gguf_file import scan
from .localize import CaptureRun, captured_pairs
from .pairs import Pair, load_pairs


def compute_control_vector(model_path: str | Path, pairs: Sequence[Pair] | str | Path, *,
                           layers: tuple[int, int] | None = None, chat: bool = False, max_tokens: int = 512,
                           n_threads: int | None = None, progress: bool = True) -> ControlVector:
    """CAA: the mean of pos - neg at l_out-L over the pairs, for every layer L >= 1 (or those in `layers`)."""
    if isinstance(pairs, (str, Path)):
        pairs = load_pairs(pairs)
    run = CaptureRun()
    total: np.ndarray | None = None
    for group in captured_pairs(model_path, list(pairs), ["layer"], run, chat=chat, max_tokens=max_tokens,
                                n_threads=n_threads, progress=progress, description="control vector"):
        difference = (group.positive["layer"].astype(np.float64) - group.negative["layer"]).sum(axis=0)
        total = difference if total is None else total + difference
    assert total is not None
    mean = (total / run.n_pairs).astype(np.float32)
    architecture = scan(model_path).value("general.architecture", "")
    vector = ControlVector({layer: mean[layer] for layer in range(1, run.n_layers)}, architecture, run.n_pairs)
    return vector.restricted(*layers) if layers else vector
