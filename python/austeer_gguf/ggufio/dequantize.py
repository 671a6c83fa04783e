"""Write a copy of a GGUF with its weights in another type (F32, F16, BF16 or Q8_0), with gguf-py, one tensor at
a time.

Localization can run on float weights. Users who only have the quantized file get its float copy here (or a
Q8_0 copy, a quarter of F32's size): every weight is dequantized with gguf-py and stored in the target type;
1-D tensors (norms, biases), and weights whose rows do not fill whole Q8_0 blocks, are kept in F32 as
llama.cpp's converters write them. Metadata is copied unchanged except `general.file_type`.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ..errors import InputError
from .atomic import atomic_output
from .layout import open_reader

T = gguf.GGMLQuantizationType
TARGETS = {"f32": (T.F32, gguf.LlamaFileType.ALL_F32), "f16": (T.F16, gguf.LlamaFileType.MOSTLY_F16),
           "bf16": (T.BF16, gguf.LlamaFileType.MOSTLY_BF16), "q8_0": (T.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)}
_SKIPPED_KEYS = {"general.architecture", "general.file_type", "general.alignment"}


def dequantize(source: str | Path, target: str | Path, *, dtype: str = "f16") -> Path:
    """Write `target` (atomically) as the float copy of `source`; returns target."""
    if dtype not in TARGETS:
        raise InputError(f"unknown weight type {dtype!r}; choose {', '.join(TARGETS)}")
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise ValueError("dequantize writes a new file: choose an output path other than the source")
    reader = open_reader(source)
    ggml_type, file_type = TARGETS[dtype]
    architecture = reader.fields["general.architecture"].contents()

    with atomic_output(target) as (_, temporary):
        writer = gguf.GGUFWriter(str(temporary), architecture, use_temp_file=False)
        writer.data_alignment = reader.alignment
        for name, field in reader.fields.items():
            if name.startswith("GGUF.") or name in _SKIPPED_KEYS:
                continue
            value_type = field.types[0]
            sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
        writer.add_file_type(file_type)

        plans = []
        for tensor in reader.tensors:
            shape = tuple(int(n) for n in reversed(tensor.shape))
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
            keep_f32 = len(shape) == 1 or tensor.tensor_type == T.F32 or shape[-1] % block
            out_type = T.F32 if keep_f32 else ggml_type
            block, type_size = gguf.GGML_QUANT_SIZES[out_type]
            byte_shape = (*shape[:-1], shape[-1] // block * type_size)
            writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)),
                                   raw_dtype=out_type)
            plans.append((tensor, shape, out_type))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor, shape, out_type in plans:
            values = np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
            writer.write_tensor_data(np.ascontiguousarray(_encode(values.reshape(shape), out_type)))
        writer.close()
    return target


def _encode(values: np.ndarray, ggml_type: gguf.GGMLQuantizationType) -> np.ndarray:
    """float32 values as the raw bytes of `ggml_type`."""
    if ggml_type == T.F32:
        return values.view(np.uint8)
    if ggml_type == T.F16:
        return values.astype(np.float16).view(np.uint8)
    return gguf.quants.quantize(values, ggml_type)
