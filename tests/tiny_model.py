"""A tiny llama-architecture GGUF with random weights, written with gguf-py, that llama.cpp loads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class TinyConfig:
    n_embd: int = 64
    n_layers: int = 3
    n_head: int = 4
    n_head_kv: int = 2  # grouped-query attention
    n_ff: int = 128
    n_ctx: int = 4096  # the context length the file declares (bounds the n_ctx a test may ask for)
    rms_eps: float = 1e-5
    rope_base: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


WORDS = ["the", "a", "cat", "dog", "is", "was", "good", "bad", "happy", "sad", "yes", "no", "hello",
         "world", "very", "not", "and", "it", "I", "you", "like", "love", "hate", "this", "day"]


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece-style vocabulary: specials, 256 byte tokens, letters and a few words."""
    tokens = ["<unk>", "<s>", "</s>"]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581" + w for w in WORDS]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * 259 + [-float(len(p)) if len(p) == 1 else float(len(p)) for p in pieces]
    return tokens, scores, [int(t) for t in types]


LINEAR_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def add_vocabulary(writer: gguf.GGUFWriter) -> int:
    """The tiny byte-level vocabulary and its special tokens (no BOS added by the tokenizer); returns its size."""
    tokens, scores, types = vocabulary()
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)
    return len(tokens)


def random_weights(config: TinyConfig, n_vocab: int, seed: int) -> dict[str, np.ndarray]:
    """Float32 weights in numpy layout (rows = outputs), keyed by GGUF tensor name."""
    rng = np.random.default_rng(seed)
    e, f, hd = config.n_embd, config.n_ff, config.head_dim
    kv = config.n_head_kv * hd

    def linear(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    weights = {"token_embd.weight": rng.standard_normal((n_vocab, e)).astype(np.float32)}
    for layer in range(config.n_layers):
        prefix = f"blk.{layer}."
        weights[prefix + "attn_norm.weight"] = norm(e)
        weights[prefix + "attn_q.weight"] = linear(e, e)
        weights[prefix + "attn_k.weight"] = linear(kv, e)
        weights[prefix + "attn_v.weight"] = linear(kv, e)
        weights[prefix + "attn_output.weight"] = linear(e, e)
        weights[prefix + "ffn_norm.weight"] = norm(e)
        weights[prefix + "ffn_gate.weight"] = linear(f, e)
        weights[prefix + "ffn_up.weight"] = linear(f, e)
        weights[prefix + "ffn_down.weight"] = linear(e, f)
    weights["output_norm.weight"] = norm(e)
    weights["output.weight"] = linear(n_vocab, e) * 4.0
    return weights


def write_tiny_llama(path: Path, *, seed: int = 0, weight_type: str = "F32",
                     config: TinyConfig = TinyConfig(), extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the model; `weight_type` F32, F16, Q8_0 or Q4_0 applies to the linear weights and the output."""
    weights = random_weights(config, len(vocabulary()[0]), seed)
    quant = gguf.GGMLQuantizationType[weight_type]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama-test")
    writer.add_context_length(config.n_ctx)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layers)
    writer.add_feed_forward_length(config.n_ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head_kv)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_base)
    writer.add_layer_norm_rms_eps(config.rms_eps)
    add_vocabulary(writer)
    for key, value in (extra_metadata or {}).items():
        writer.add_string(key, value)
    for name, value in weights.items():
        is_linear = name == "output.weight" or any(f".{w}." in name for w in LINEAR_WEIGHTS)
        if is_linear and quant != gguf.GGMLQuantizationType.F32:
            data = gguf.quants.quantize(value, quant)
            writer.add_tensor(name, data, raw_dtype=quant)
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
