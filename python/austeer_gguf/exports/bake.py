"""Fold a profile into the weights: the steered model then runs in any llama.cpp at zero runtime cost.

Each site's registry record names the weight its unit belongs to and whether the unit is an output row or
an input column of it (`sites.Site.weight`, `.axis`):
- output-row units (`ffn`: rows of `ffn_down`; in a mixture-of-experts model, that row of every expert's matrix
  in `ffn_down_exps`, since the experts' summed output is linear in each). An output row is a contiguous run of
  quantization blocks that belong to that row alone, so multiplying each block's scale fields by the unit's
  factor scales every dequantized value of the row: exact up to the fp16 rounding of the new scales.
- input-column units (`attn`: columns of `attn_output`): exact for F32/F16/BF16 weights. For quantized weights a
  column shares its blocks with other columns; when every query head has its own KV head, the unit is an
  output row of `attn_v` instead (attention is linear in V) and is folded there exactly. Otherwise it is
  refused, or with `approximate=True` the touched blocks are requantized and the largest error reported.
- units no weight owns (`layer`, the residual stream) cannot be folded: refused, use the runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .. import sites
from ..errors import InputError
from ..formats.embedded import BAKED_KEY
from ..formats.model_file import ModelFile
from ..formats.profiles import encode_compact
from ..ggufio.layout import FLOAT_TYPES, GgufLayout, TensorEntry
from ..ggufio.rewrite import rewrite
from ..profile import Profile
from ..sites import ModelShape

T = gguf.GGMLQuantizationType
# Byte offsets of the fp16 scale fields in one block; scaling them scales every value of the block.
SCALE_FIELDS: dict[gguf.GGMLQuantizationType, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
    T.IQ4_NL: (0,), T.IQ4_XS: (0,),
}
FP16_MAX = 65504.0


@dataclass
class BakeReport:
    target: Path
    rows_scaled: int
    columns_scaled: int
    via_attn_v: bool
    approximate_max_error: float | None


def profile_digest(profile: Profile) -> str:
    return hashlib.sha256(encode_compact(profile).encode()).hexdigest()[:16]


def baked_entries(layout: GgufLayout) -> list[dict]:
    text = layout.value(BAKED_KEY)
    if not text:
        return []
    try:
        entries = json.loads(str(text))
    except (json.JSONDecodeError, RecursionError):
        entries = None
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise InputError(f"{layout.path}: its {BAKED_KEY} record is damaged; bake from the original model")
    return entries


def bake(model: str | Path, profile: Profile, target: str | Path, *, strength: float = 1.0,
         approximate: bool = False, allow_model_mismatch: bool = False) -> BakeReport:
    model_file = ModelFile.open(model)
    layout, shape = model_file.layout, model_file.shape
    profile.check_model(shape, model_file.fingerprint, allow_mismatch=allow_model_mismatch)
    digest = profile_digest(profile)
    done = baked_entries(layout)
    if any(entry.get("digest") == digest for entry in done):
        raise InputError(f"profile {profile.name!r} is already baked into {model}; baking it twice would apply "
                         "it twice")
    if profile.control is not None:
        raise InputError(f"profile {profile.name!r} carries a control vector, which no weight can hold: steer it at "
                         "run time with SteeredLlama")
    unowned = [u for u in profile.units if sites.get(u.site).weight is None]
    if unowned:
        names = ", ".join(sorted({f"{u.site!r}" for u in unowned}))
        raise InputError(f"profile {profile.name!r} has {len(unowned)} {names} (residual stream) units, which no "
                         "weight can express: steer them at run time with SteeredLlama")
    tensors = {t.name: t for t in layout.tensors}
    rows: dict[str, dict[int, float]] = {}
    columns: dict[str, dict[int, float]] = {}
    via_attn_v = False
    for unit, factor in zip(profile.units, profile.factors(strength).tolist()):
        site = sites.get(unit.site)
        name = f"blk.{unit.layer}.{shape.weight(unit.site)}.weight"
        weight = tensors.get(name)
        if weight is None:
            raise InputError(f"{model} has no tensor {name} (fused weights?): cannot bake {unit.site} units")
        if site.axis == "output":
            _refuse_bias(tensors, f"blk.{unit.layer}.{shape.weight(unit.site)}.bias", profile)
            # An expert weight holds one matrix per expert: the experts' summed output scales with each one's row.
            for matrix in range(_matrices(weight)):
                rows.setdefault(name, {})[matrix * weight.shape[1] + unit.dim] = factor
        elif weight.ggml_type in FLOAT_TYPES or approximate:
            columns.setdefault(name, {})[unit.dim] = factor
        elif site.weight == "attn_output" and _has_own_kv_heads(layout, shape):
            # Attention is linear in V: with one KV head per query head, input column c of attn_output is
            # output row c of attn_v, whose blocks belong to it alone.
            via_attn_v = True
            rows.setdefault(f"blk.{unit.layer}.attn_v.weight", {})[unit.dim] = factor
            bias = f"blk.{unit.layer}.attn_v.bias"
            if bias in tensors:
                rows.setdefault(bias, {})[unit.dim] = factor
        else:
            raise InputError(
                f"{unit.site} unit {unit.describe()} scales an input column of {name} ({weight.ggml_type.name}), "
                "whose quantization blocks it shares with other columns, and the model shares KV heads "
                "between query heads, so attn_v cannot carry it either: bake with --approximate "
                "(requantizes the touched blocks and reports the error) or steer at run time")

    patches = {name: _row_patch(tensors[name], factors) for name, factors in rows.items()}
    max_error = None
    for name, factors in columns.items():
        tensor = tensors[name]
        if tensor.ggml_type in FLOAT_TYPES:
            patches[name] = _column_patch(tensor, factors)
        else:
            patches[name], error = _requantized_column_patch(layout, tensor, factors)
            max_error = max(error, max_error or 0.0)

    entry = {"profile": profile.name, "strength": strength, "sites": list(profile.sites), "k": profile.k,
             "digest": digest, "approximate": max_error is not None}
    rewrite(layout, Path(target), drop_key=lambda key: key == BAKED_KEY,
            new_keys={BAKED_KEY: json.dumps(done + [entry], separators=(",", ":"))}, patches=patches)
    n_rows = sum(len(f) for n, f in rows.items() if n.endswith(".weight"))
    return BakeReport(Path(target), n_rows, sum(len(f) for f in columns.values()), via_attn_v, max_error)


def _matrices(tensor: TensorEntry) -> int:
    """How many matrices a weight holds: 1, or one per expert (ggml's third dimension)."""
    return int(np.prod(tensor.shape[2:])) if len(tensor.shape) > 2 else 1


def _refuse_bias(tensors: dict[str, TensorEntry], name: str, profile: Profile) -> None:
    if name in tensors:
        raise InputError(f"{name} exists: the FFN output includes a bias, which scaling the weight rows does not "
                         f"scale; profile {profile.name!r} cannot be baked exactly (steer at run time)")


def _has_own_kv_heads(layout: GgufLayout, shape: ModelShape) -> bool:
    architecture = shape.architecture
    heads = layout.value(f"{architecture}.attention.head_count")
    kv_heads = layout.value(f"{architecture}.attention.head_count_kv", heads)
    return heads == kv_heads


def scale_rows(data: bytes, tensor: TensorEntry, factors: dict[int, float]) -> bytes:
    """Scale output rows (index -> factor) of a weight stored as `tensor.ggml_type`."""
    n_rows = int(np.prod(tensor.shape[1:])) if len(tensor.shape) > 1 else 1
    rows = np.frombuffer(data, dtype=np.uint8).copy().reshape(n_rows, -1)
    for row, factor in factors.items():
        rows[row] = _scale_row(rows[row], tensor.ggml_type, factor, f"{tensor.name} row {row}")
    return rows.tobytes()


def _scale_row(row: np.ndarray, ggml_type: gguf.GGMLQuantizationType, factor: float, where: str) -> np.ndarray:
    if ggml_type == T.F32:
        return (row.view(np.float32) * np.float32(factor)).view(np.uint8)
    if ggml_type == T.F16:
        return _to_f16(row.view(np.float16).astype(np.float32) * np.float32(factor), where).view(np.uint8)
    if ggml_type == T.BF16:
        values = (row.view(np.uint16).astype(np.uint32) << 16).view(np.float32) * np.float32(factor)
        return _to_bf16(values).view(np.uint8)
    if ggml_type not in SCALE_FIELDS:
        raise InputError(f"{where}: cannot fold a factor into {ggml_type.name} blocks exactly; supported: "
                         f"{', '.join(t.name for t in (*FLOAT_TYPES, *SCALE_FIELDS))}")
    block_bytes = gguf.GGML_QUANT_SIZES[ggml_type][1]
    blocks = row.reshape(-1, block_bytes).copy()
    for offset in SCALE_FIELDS[ggml_type]:
        scales = blocks[:, offset:offset + 2].copy().view(np.float16).astype(np.float32)
        blocks[:, offset:offset + 2] = _to_f16(scales * np.float32(factor), where).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1)


def _to_f16(values: np.ndarray, where: str) -> np.ndarray:
    if np.abs(values).max(initial=0.0) > FP16_MAX:
        raise InputError(f"{where}: the scaled value exceeds the fp16 range ({FP16_MAX}); use a smaller alpha "
                         "or strength, or steer at run time")
    return values.astype(np.float16)


def _to_bf16(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
    return (rounded >> 16).astype(np.uint16)


def _row_patch(tensor: TensorEntry, factors: dict[int, float]):
    def patch(data: bytes) -> bytes:
        return scale_rows(data, tensor, factors)

    return patch


def _column_patch(tensor: TensorEntry, factors: dict[int, float]):
    def patch(data: bytes) -> bytes:
        n_in = tensor.shape[0]
        dtype = {T.F32: np.float32, T.F16: np.float16, T.BF16: np.uint16}[tensor.ggml_type]
        matrix = np.frombuffer(data, dtype=dtype).copy().reshape(-1, n_in)
        for column, factor in factors.items():
            if tensor.ggml_type == T.BF16:
                values = (matrix[:, column].astype(np.uint32) << 16).view(np.float32) * np.float32(factor)
                matrix[:, column] = _to_bf16(values)
            elif tensor.ggml_type == T.F16:
                matrix[:, column] = _to_f16(matrix[:, column].astype(np.float32) * np.float32(factor), tensor.name)
            else:
                matrix[:, column] *= np.float32(factor)
        return matrix.tobytes()

    return patch


def _requantized_column_patch(layout: GgufLayout, tensor: TensorEntry, factors: dict[int, float]):
    """Scale the columns and requantize only the blocks they touch: the patch and the largest absolute error
    of those blocks against the exactly scaled values."""
    with layout.path.open("rb") as file:
        file.seek(layout.data_offset + tensor.offset)
        raw = np.frombuffer(file.read(tensor.nbytes), dtype=np.uint8)
    n_in, n_rows = tensor.shape[0], int(np.prod(tensor.shape[1:]))
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[tensor.ggml_type]
    blocks = raw.reshape(n_rows, n_in // block_elements, block_bytes).copy()
    matrix = gguf.quants.dequantize(raw.reshape(n_rows, -1), tensor.ggml_type).reshape(n_rows, n_in)
    for column, factor in factors.items():
        matrix[:, column] *= np.float32(factor)
    touched = sorted({column // block_elements for column in factors})
    exact = np.concatenate([matrix[:, b * block_elements:(b + 1) * block_elements] for b in touched], axis=1)
    try:
        requantized = gguf.quants.quantize(exact, tensor.ggml_type)
    except NotImplementedError:
        raise InputError(f"{tensor.name} is {tensor.ggml_type.name}, which gguf-py cannot requantize: "
                         "steer these attn units at run time") from None
    error = float(np.abs(gguf.quants.dequantize(requantized, tensor.ggml_type) - exact).max())
    blocks[:, touched] = requantized.reshape(n_rows, len(touched), block_bytes)
    data = blocks.tobytes()
    return (lambda _: data), error
