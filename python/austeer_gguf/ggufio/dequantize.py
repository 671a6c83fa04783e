"""Write a float (F16 or F32) copy of a quantized GGUF with gguf-py, one tensor at a time.

Localization runs on float weights. Users who only have the quantized file get its float copy here: every
quantized tensor is dequantized with gguf-py; 1-D tensors (norms, biases) are kept in F32 as llama.cpp's
converters write them. Metadata is copied unchanged except `general.file_type`.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from .atomic import atomic_output
from .layout import open_reader

FLOAT_TARGETS = {"f16": (gguf.GGMLQuantizationType.F16, np.float16, gguf.LlamaFileType.MOSTLY_F16),
                 "f32": (gguf.GGMLQuantizationType.F32, np.float32, gguf.LlamaFileType.ALL_F32)}
_SKIPPED_KEYS = {"general.architecture", "general.file_type", "general.alignment"}


def dequantize(source: str | Path, target: str | Path, *, dtype: str = "f16") -> Path:
    """Write `target` (atomically) as the float copy of `source`; returns target."""
    if dtype not in FLOAT_TARGETS:
        raise ValueError(f"unknown float type {dtype!r}; choose f16 or f32")
    source, target = Path(source), Path(target)
    if source.resolve() == target.resolve():
        raise ValueError("dequantize writes a new file: choose an output path other than the source")
    reader = open_reader(source)
    ggml_type, numpy_type, file_type = FLOAT_TARGETS[dtype]
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
            keep_f32 = len(tensor.shape) == 1 or tensor.tensor_type == gguf.GGMLQuantizationType.F32
            out_type, out_numpy = (gguf.GGMLQuantizationType.F32, np.float32) if keep_f32 else (ggml_type, numpy_type)
            shape = tuple(int(n) for n in reversed(tensor.shape))
            writer.add_tensor_info(tensor.name, shape, np.dtype(out_numpy),
                                   int(np.prod(shape)) * np.dtype(out_numpy).itemsize, raw_dtype=out_type)
            plans.append((tensor, shape, out_numpy))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor, shape, out_numpy in plans:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            writer.write_tensor_data(np.ascontiguousarray(values.reshape(shape).astype(out_numpy, copy=False)))
        writer.close()
    return target
