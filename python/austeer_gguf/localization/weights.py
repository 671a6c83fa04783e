"""Which weights localization reads: the model file as given, or a copy of it with other weights.

A float32 copy is 4x the size of a Q8 file (28 GB for a 7B model). `scripts/bench_precision.py` measured how
many of the top-100 units each precision finds again against F32 on both built-in models with 1,000 pairs
(README, "Localizing without a float32 copy"): F16 0.99-1.00, BF16 0.97, Q8_0 0.92-0.94, the shipped Q4_1 and
Q4_K_M files 0.91-0.94. The default follows that table: the file itself.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .. import models

WEIGHTS = ("file", "f32", "f16", "bf16", "q8_0")
DEFAULT_WEIGHTS = "file"
# weight types of the files that measurement read; localizing on any other quantization gets a warning
MEASURED_TYPES = frozenset({"F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_0", "Q4_K", "Q4_1"})


@contextmanager
def localization_model(model: str, weights: str = DEFAULT_WEIGHTS) -> Iterator[Path]:
    """The GGUF to localize `model` on (a path or a built-in name). A copy of a built-in model is cached beside
    it; a copy of another file lives in the temporary directory ($TMPDIR) while the block runs."""
    if weights not in WEIGHTS:
        raise ValueError(f"unknown weights {weights!r}; choose {', '.join(WEIGHTS)}")
    if weights == "file":
        yield models.resolve(model)
    elif model in models.MODELS:
        yield models.float_copy(model, weights)
    else:
        from ..ggufio.dequantize import dequantize

        source = models.resolve(model)
        with tempfile.TemporaryDirectory(prefix="austeer-weights-") as folder:
            print(f"writing a {weights} copy of {source.name} to {folder} for localization", file=sys.stderr)
            yield dequantize(source, Path(folder) / f"{source.stem}.{weights}.gguf", dtype=weights)
