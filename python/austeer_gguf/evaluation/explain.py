"""What each atomic unit writes into the vocabulary: its output direction through the final norm and the
output embedding (a logit-lens view).

A unit's output direction in the residual stream follows its site's registry record: a unit that is an
input column c of a weight (attn: `attn_output`) writes column c of that weight; a unit that is an output
row of a weight writing the residual (ffn: `ffn_down`) or a residual coordinate (layer) is the residual
coordinate c itself (Gemma's post-FFN norm is a fixed elementwise scale here; post-norm statistics are
ignored). The direction is scaled elementwise by the final norm's weight
and multiplied by the output embedding: the tokens with the largest values are promoted when the unit's
value grows, the smallest suppressed. Amplifying a unit (score > 0) pushes it further along its current sign;
the table lists tokens for a positive unit value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .. import sites
from ..errors import InputError
from ..formats.model_file import ModelFile
from ..ggufio.layout import open_reader
from ..profile import Profile


@dataclass
class UnitExplanation:
    layer: int
    site: str
    dim: int
    score: float
    promoted: list[str]
    suppressed: list[str]


def explain(model: str | Path, profile: Profile, *, top: int = 8,
            allow_model_mismatch: bool = False) -> list[UnitExplanation]:
    model_file = ModelFile.open(model)
    profile.check_model(model_file.shape, model_file.fingerprint,
                        allow_mismatch=allow_model_mismatch)
    reader = open_reader(model)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    tokens = [bytes(reader.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8", errors="replace")
              for i in reader.fields["tokenizer.ggml.tokens"].data]
    output = tensors.get("output.weight", tensors["token_embd.weight"])
    unembed = _matrix(output)  # (vocab, n_embd)
    final_norm = _matrix(tensors["output_norm.weight"]).reshape(-1)
    explanations = []
    for unit in profile.units:
        site = sites.get(unit.site)
        if site.axis == "input":
            weight = tensors.get(f"blk.{unit.layer}.{site.weight}.weight")
            if weight is None:
                raise InputError(f"{model} has no blk.{unit.layer}.{site.weight}.weight to explain {unit.describe()}")
            direction = _matrix(weight)[:, unit.dim]
        else:
            direction = np.zeros(unembed.shape[1], dtype=np.float32)
            direction[unit.dim] = 1.0
        logits = unembed @ (final_norm * direction)
        order = np.argsort(logits)
        explanations.append(UnitExplanation(unit.layer, unit.site, unit.dim, unit.score,
                                            [tokens[i] for i in order[::-1][:top]], [tokens[i] for i in order[:top]]))
    return explanations


def table(explanations: list[UnitExplanation]) -> str:
    lines = ["| layer | site | dim | score | promotes | suppresses |", "|---|---|---|---|---|---|"]
    for e in explanations:
        promoted = " ".join(repr(t) for t in e.promoted)
        suppressed = " ".join(repr(t) for t in e.suppressed)
        lines.append(f"| {e.layer} | {e.site} | {e.dim} | {e.score:+.3f} | {promoted} | {suppressed} |")
    return "\n".join(lines)


def _matrix(tensor) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(tensor.shape))
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(values, dtype=np.float32).reshape(shape)
