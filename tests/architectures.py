"""Tiny random-weight GGUFs of several llama.cpp architectures, written with gguf-py, that llama.cpp 0.3.36 loads.

Each architecture is a `Blueprint`: the features of its layers (how attention and the FFN are stored, which norms
and biases it has, whether its FFN is a mixture of experts) and the metadata llama.cpp requires of it, read from
llama.cpp's own loader (src/models/<arch>.cpp, `load_arch_hparams` and `load_arch_tensors`). Weights are random:
the tests check where steering acts, not what the model says. Shapes follow numpy's layout (rows = outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from tiny_model import add_vocabulary

N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYERS = 64, 4, 2, 128, 3
HEAD_DIM = N_EMBD // N_HEAD
N_EXPERT, N_EXPERT_USED = 4, 2


@dataclass(frozen=True)
class Blueprint:
    architecture: str
    fused_qkv: bool = False  # one attn_qkv weight (phi3)
    qkv_bias: bool = False  # attn_q/k/v biases (qwen2)
    qk_norm: str | None = None  # "head": norms of head_dim (qwen3); "full": of the whole q / k (olmo2)
    norm: str = "rms"  # "rms", "layer" (weight and bias: starcoder2) or "post" (olmo2: norms after the blocks only)
    post_norms: bool = False  # attn_post_norm and ffn_post_norm as well (gemma2)
    out_bias: bool = False  # attn_output and ffn biases (starcoder2)
    ffn: str = "gated"  # "gated" (gate, up, down), "fused" (phi3: up holds gate and up), "plain" (up, down)
    experts: bool = False  # a mixture-of-experts FFN (ffn_gate_inp, ffn_*_exps)
    expert_ff: int = N_FF  # each expert's FFN width
    tied_output: bool = False  # no output.weight: the token embedding is the output (gemma2)
    metadata: dict = field(default_factory=dict)  # "{arch}" in a key is the architecture


BLUEPRINTS = {
    "llama": Blueprint("llama"),
    "qwen2": Blueprint("qwen2", qkv_bias=True),
    "qwen3": Blueprint("qwen3", qk_norm="head"),
    "gemma2": Blueprint("gemma2", post_norms=True, tied_output=True,
                        metadata={"{arch}.attention.sliding_window": 4096,
                                  "{arch}.attn_logit_softcapping": 50.0, "{arch}.final_logit_softcapping": 30.0}),
    "phi3": Blueprint("phi3", fused_qkv=True, ffn="fused"),
    "granite": Blueprint("granite", metadata={"{arch}.logit_scale": 2.0, "{arch}.residual_scale": 0.5,
                                              "{arch}.embedding_scale": 4.0, "{arch}.attention.scale": 0.25}),
    "olmo2": Blueprint("olmo2", qk_norm="full", norm="post"),
    "starcoder2": Blueprint("starcoder2", norm="layer", out_bias=True, qkv_bias=True, ffn="plain"),
    "qwen3moe": Blueprint("qwen3moe", qk_norm="head", experts=True, expert_ff=N_FF // 2,
                          metadata={"{arch}.expert_feed_forward_length": N_FF // 2}),
    "mixtral": Blueprint("llama", experts=True),  # Mixtral: the llama architecture with expert FFNs
}


def write_architecture(path: Path, name: str, *, seed: int = 0) -> Path:
    """Write the tiny model of BLUEPRINTS[name] (F32 weights) to `path`."""
    blueprint = BLUEPRINTS[name]
    arch = blueprint.architecture
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny random-weight test model")  # llama.cpp reads vocab rules from names
    writer.add_context_length(4096)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    if blueprint.norm == "layer":
        writer.add_layer_norm_eps(1e-5)
    else:
        writer.add_layer_norm_rms_eps(1e-5)
    if blueprint.experts:
        writer.add_expert_count(N_EXPERT)
        writer.add_expert_used_count(N_EXPERT_USED)
    for key, value in blueprint.metadata.items():
        key = key.format(arch=arch)
        if isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, value)
    n_vocab = add_vocabulary(writer)
    for tensor_name, value in weights(blueprint, n_vocab, seed).items():
        writer.add_tensor(tensor_name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def weights(blueprint: Blueprint, n_vocab: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    e, f, kv = N_EMBD, N_FF, N_HEAD_KV * HEAD_DIM

    def linear(*shape: int) -> np.ndarray:  # (..., n_out, n_in)
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def vector(n: int, around: float = 0.0) -> np.ndarray:
        return (around + 0.1 * rng.standard_normal(n)).astype(np.float32)

    out = {"token_embd.weight": rng.standard_normal((n_vocab, e)).astype(np.float32)}
    for layer in range(N_LAYERS):
        w = {}
        if blueprint.norm in ("rms", "layer"):
            w["attn_norm.weight"] = vector(e, 1.0)
            w["ffn_norm.weight"] = vector(e, 1.0)
        if blueprint.norm == "layer":
            w["attn_norm.bias"] = vector(e)
            w["ffn_norm.bias"] = vector(e)
        if blueprint.post_norms or blueprint.norm == "post":
            w["post_attention_norm.weight"] = vector(e, 1.0)
            w["post_ffw_norm.weight"] = vector(e, 1.0)
        if blueprint.fused_qkv:
            w["attn_qkv.weight"] = linear(e + 2 * kv, e)
        else:
            w["attn_q.weight"], w["attn_k.weight"], w["attn_v.weight"] = linear(e, e), linear(kv, e), linear(kv, e)
        if blueprint.qkv_bias:
            w["attn_q.bias"], w["attn_k.bias"], w["attn_v.bias"] = vector(e), vector(kv), vector(kv)
        if blueprint.qk_norm == "head":
            w["attn_q_norm.weight"], w["attn_k_norm.weight"] = vector(HEAD_DIM, 1.0), vector(HEAD_DIM, 1.0)
        elif blueprint.qk_norm == "full":
            w["attn_q_norm.weight"], w["attn_k_norm.weight"] = vector(e, 1.0), vector(kv, 1.0)
        w["attn_output.weight"] = linear(e, e)
        if blueprint.out_bias:
            w["attn_output.bias"] = vector(e)
        if blueprint.experts:
            n_ff = blueprint.expert_ff
            w["ffn_gate_inp.weight"] = linear(N_EXPERT, e)
            w["ffn_gate_exps.weight"] = linear(N_EXPERT, n_ff, e)
            w["ffn_up_exps.weight"] = linear(N_EXPERT, n_ff, e)
            w["ffn_down_exps.weight"] = linear(N_EXPERT, e, n_ff)
        elif blueprint.ffn == "fused":
            w["ffn_up.weight"], w["ffn_down.weight"] = linear(2 * f, e), linear(e, f)
        else:
            if blueprint.ffn == "gated":
                w["ffn_gate.weight"] = linear(f, e)
            w["ffn_up.weight"], w["ffn_down.weight"] = linear(f, e), linear(e, f)
        if blueprint.out_bias and not blueprint.experts:
            w["ffn_up.bias"], w["ffn_down.bias"] = vector(f), vector(e)
        out.update({f"blk.{layer}.{name}": value for name, value in w.items()})
    out["output_norm.weight"] = vector(e, 1.0)
    if blueprint.norm == "layer":
        out["output_norm.bias"] = vector(e)
    if not blueprint.tied_output:
        out["output.weight"] = linear(n_vocab, e) * 4.0
    return out
