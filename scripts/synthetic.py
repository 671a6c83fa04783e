#!/usr/bin/env python3
"""Random-weight GGUF models of real shapes, for timing (nothing about their outputs is meaningful).

Writes an F16 model of a named shape with gguf-py, one tensor at a time, then quantizes it with llama.cpp's own
quantizer (`llama_model_quantize`, through llama-cpp-python) and removes the F16 file. The vocabulary is
SentencePiece-style (byte tokens and numbered pieces) of the shape's size, so the output matmul costs what it
costs in the real model.

    .venv/bin/python scripts/synthetic.py qwen2-1.5b            # ~/.cache/austeer-gguf/synthetic/qwen2-1.5b.Q4_K_M.gguf
    .venv/bin/python scripts/synthetic.py qwen2-7b --type Q4_K_M
"""

from __future__ import annotations

import argparse
import ctypes
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

CACHE = Path(os.environ.get("AUSTEER_CACHE", Path.home() / ".cache" / "austeer-gguf")) / "synthetic"


@dataclass(frozen=True)
class Shape:
    architecture: str
    n_layers: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    bias: bool  # q, k, v biases (qwen2)


SHAPES = {
    "qwen2-1.5b": Shape("qwen2", 28, 1536, 8960, 12, 2, 151_936, True),  # Qwen2.5-1.5B
    "qwen2-3b": Shape("qwen2", 36, 2048, 11008, 16, 2, 151_936, True),  # Qwen2.5-3B
    "qwen2-7b": Shape("qwen2", 28, 3584, 18944, 28, 4, 152_064, True),  # Qwen2.5-7B
}
QUANT_TYPES = {"Q4_K_M": 15, "Q4_1": 3, "Q8_0": 7, "F16": 1}  # llama_ftype


def write_f16(path: Path, shape: Shape, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    e, f, hd = shape.n_embd, shape.n_ff, shape.n_embd // shape.n_head
    kv = shape.n_head_kv * hd
    arch = shape.architecture
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(f"synthetic-{arch}")
    writer.add_context_length(32768)
    writer.add_embedding_length(e)
    writer.add_block_count(shape.n_layers)
    writer.add_feed_forward_length(f)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    tokens += [f"\u2581t{i}" for i in range(shape.n_vocab - len(tokens))]
    types += [gguf.TokenType.NORMAL] * (shape.n_vocab - len(types))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([int(t) for t in types])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def matrix(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in), dtype=np.float32) / np.sqrt(n_in)).astype(np.float16)

    planned: list[tuple[str, tuple[int, ...], object]] = [("token_embd.weight", (shape.n_vocab, e), np.float16)]
    for layer in range(shape.n_layers):
        p = f"blk.{layer}."
        planned += [(p + "attn_norm.weight", (e,), np.float32), (p + "attn_q.weight", (e, e), np.float16),
                    (p + "attn_k.weight", (kv, e), np.float16), (p + "attn_v.weight", (kv, e), np.float16),
                    (p + "attn_output.weight", (e, e), np.float16), (p + "ffn_norm.weight", (e,), np.float32),
                    (p + "ffn_gate.weight", (f, e), np.float16), (p + "ffn_up.weight", (f, e), np.float16),
                    (p + "ffn_down.weight", (e, f), np.float16)]
        if shape.bias:
            planned += [(p + "attn_q.bias", (e,), np.float32), (p + "attn_k.bias", (kv,), np.float32),
                        (p + "attn_v.bias", (kv,), np.float32)]
    planned += [("output_norm.weight", (e,), np.float32), ("output.weight", (shape.n_vocab, e), np.float16)]
    for name, dims, dtype in planned:
        writer.add_tensor_info(name, dims, np.dtype(dtype), int(np.prod(dims)) * np.dtype(dtype).itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for name, dims, _ in planned:
        if len(dims) == 1:
            values = (1.0 + 0.1 * rng.standard_normal(dims)).astype(np.float32) if name.endswith("norm.weight") \
                else (0.02 * rng.standard_normal(dims)).astype(np.float32)
        else:
            values = matrix(*dims)
        writer.write_tensor_data(values)
    writer.close()
    return path


def synthetic(name: str, quant: str = "Q4_K_M") -> Path:
    """The cached synthetic model `name` quantized to `quant` (written on first use)."""
    import llama_cpp

    target = CACHE / f"{name}.{quant}.gguf"
    if target.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        source = write_f16(Path(scratch) / f"{name}.f16.gguf", SHAPES[name])
        if quant == "F16":
            source.rename(target)
            return target
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = QUANT_TYPES[quant]
        params.nthread = os.cpu_count() or 1
        partial = Path(scratch) / target.name
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if status != 0:
            raise RuntimeError(f"llama_model_quantize failed ({status})")
        partial.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", choices=list(SHAPES))
    parser.add_argument("--type", default="Q4_K_M", choices=list(QUANT_TYPES))
    args = parser.parse_args()
    print(synthetic(args.shape, args.type))


if __name__ == "__main__":
    main()
