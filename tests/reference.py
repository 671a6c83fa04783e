"""An independent NumPy forward pass of a llama-architecture GGUF: the ground truth for steering.

It reads the weights back from the file with gguf-py and reproduces the roundings llama.cpp's CPU
backend applies on the way (an F16 KV cache, F16 operands of the attention matmuls, and Q8_0
quantization of activations entering a Q8_0/Q4_0 weight), so llama.cpp's logits can be compared tightly.
Steering scales chosen coordinates of activations, named here by what they are:
  attn  = attention output before attn_output (kqv_out), ffn = ffn_down output, layer = residual after layer,
  ffn_input = the residual after the attention block, which the FFN norm reads (llama.cpp's ffn_inp).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

Steer = dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]  # (site, layer) -> (dims, float32 factors)


@dataclass
class Forward:
    logits: np.ndarray  # [n_tokens, n_vocab]
    activations: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (site, layer) -> [n, w]


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def q8_0_roundtrip(x: np.ndarray) -> np.ndarray:
    """What ggml's CPU quantize_row_q8_0 makes of float activations (blocks of 32 along the last axis)."""
    shape = x.shape
    blocks = x.astype(np.float32).reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
    q = np.rint(blocks * inverse)
    d = (amax / np.float32(127.0)).astype(np.float16).astype(np.float32)
    return (q * d).reshape(shape).astype(np.float64)


class ReferenceModel:
    def __init__(self, path: Path) -> None:
        reader = gguf.GGUFReader(str(path))
        fields = {name: reader.fields[name] for name in reader.fields}

        def scalar(key: str) -> float:
            f = fields[key]
            return f.parts[f.data[0]][0]

        arch = "llama"
        self.n_layers = int(scalar(f"{arch}.block_count"))
        self.n_embd = int(scalar(f"{arch}.embedding_length"))
        self.n_head = int(scalar(f"{arch}.attention.head_count"))
        self.n_head_kv = int(scalar(f"{arch}.attention.head_count_kv"))
        self.eps = float(scalar(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.rope_base = float(scalar(f"{arch}.rope.freq_base"))
        self.head_dim = self.n_embd // self.n_head
        self.weights: dict[str, np.ndarray] = {}
        self.quantized_input: dict[str, bool] = {}
        for tensor in reader.tensors:
            values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            shape = tuple(int(n) for n in reversed(tensor.shape))
            self.weights[tensor.name] = np.asarray(values, dtype=np.float64).reshape(shape)
            self.quantized_input[tensor.name] = tensor.tensor_type in (
                gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0)

    def _matmul(self, name: str, x: np.ndarray) -> np.ndarray:
        if self.quantized_input[name]:
            x = q8_0_roundtrip(x)
        return x @ self.weights[name].T

    def _rms_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        x32 = x.astype(np.float32).astype(np.float64)
        scale = 1.0 / np.sqrt(np.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return x32 * scale * weight

    def _rope(self, x: np.ndarray) -> np.ndarray:
        """llama.cpp's NORM rope: rotate adjacent pairs (2i, 2i+1). x: [n, heads, head_dim]."""
        n, _, d = x.shape
        positions = np.arange(n, dtype=np.float64)[:, None]
        inv_freq = self.rope_base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
        theta = positions * inv_freq[None, :]
        cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
        even, odd = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = even * cos - odd * sin
        out[..., 1::2] = even * sin + odd * cos
        return out

    def _apply(self, steer: Steer, site: str, layer: int, x: np.ndarray) -> np.ndarray:
        """Scale the steered dims of the rows (token positions) from `self._steer_from` on."""
        if (site, layer) not in steer:
            return x
        dims, factors = steer[(site, layer)]
        x = x.astype(np.float32).astype(np.float64)  # the graph holds F32 values
        rows = slice(self._steer_from, None)
        x[rows, dims] = (x[rows, dims].astype(np.float32) * factors.astype(np.float32)).astype(np.float64)
        return x

    def forward(self, tokens: list[int], steer: Steer | None = None,
                residual_add: dict[int, np.ndarray] | None = None, steer_from: int = 0) -> Forward:
        """`residual_add`: layer -> vector added to the residual after the FFN (where llama.cpp adds a control
        vector, before the tensor is named l_out-L). `steer_from`: steer (scale and add) only positions from this
        one on."""
        steer = steer or {}
        self._steer_from = steer_from
        residual_add = residual_add or {}
        n = len(tokens)
        hd, nh, nkv = self.head_dim, self.n_head, self.n_head_kv
        result = Forward(logits=np.empty(0))
        x = self.weights["token_embd.weight"][tokens]
        mask = np.triu(np.full((n, n), -np.inf), k=1)
        for layer in range(self.n_layers):
            p = f"blk.{layer}."
            h = self._rms_norm(x, self.weights[p + "attn_norm.weight"])
            q = self._rope(self._matmul(p + "attn_q.weight", h).reshape(n, nh, hd))
            k = self._rope(self._matmul(p + "attn_k.weight", h).reshape(n, nkv, hd))
            v = self._matmul(p + "attn_v.weight", h).reshape(n, nkv, hd)
            k, v, q = _f16(k), _f16(v), _f16(q)  # F16 KV cache; Q converted to F16 for the K matmul
            heads = []
            for head in range(nh):
                kv_head = head // (nh // nkv)
                scores = (q[:, head, :] @ k[:, kv_head, :].T) / np.sqrt(hd) + mask
                scores = np.exp(scores - scores.max(axis=1, keepdims=True))
                probabilities = _f16(scores / scores.sum(axis=1, keepdims=True))
                heads.append(probabilities @ v[:, kv_head, :])
            attn = np.concatenate(heads, axis=1)  # [n, n_head * head_dim], index head * head_dim + d
            attn = self._apply(steer, "attn", layer, attn)
            result.activations[("attn", layer)] = attn
            x = x + self._matmul(p + "attn_output.weight", attn)
            x = self._apply(steer, "ffn_input", layer, x)
            result.activations[("ffn_input", layer)] = x

            h = self._rms_norm(x, self.weights[p + "ffn_norm.weight"])
            gate = self._matmul(p + "ffn_gate.weight", h)
            up = self._matmul(p + "ffn_up.weight", h)
            ffn = self._matmul(p + "ffn_down.weight", gate / (1.0 + np.exp(-gate)) * up)
            ffn = self._apply(steer, "ffn", layer, ffn)
            result.activations[("ffn", layer)] = ffn
            x = x + ffn
            if layer in residual_add:
                x = x.astype(np.float32).astype(np.float64)
                x[steer_from:] = x[steer_from:] + residual_add[layer].astype(np.float64)
            x = self._apply(steer, "layer", layer, x)
            result.activations[("layer", layer)] = x
        h = self._rms_norm(x, self.weights["output_norm.weight"])
        result.logits = self._matmul("output.weight", h)
        return result


def steer_of(profile, strength: float = 1.0, *also) -> Steer:
    """The AUSteer formula, stated here on its own: x_j <- x_j * (1 + strength * alpha * s_j) for every unit
    (layer, site, dim, s_j) of a profile, in float32 as the graph holds it. `also`: more (profile, weight)
    pairs active at the same time; a unit several profiles share is multiplied by each one's factor."""
    factors: dict = {}
    for each, weight in [(profile, strength), *also]:
        for unit in each.units:
            factor = np.float32(1.0) + np.float32(weight) * np.float32(each.alpha * unit.score)
            key = (unit.site, unit.layer, unit.dim)
            factors[key] = np.float32(factors.get(key, np.float32(1.0)) * factor)
    steer: dict = {}
    for (site, layer, dim), factor in factors.items():
        dims, values = steer.get((site, layer), ([], []))
        steer[(site, layer)] = (dims + [dim], values + [factor])
    return {key: (np.array(d), np.array(f, dtype=np.float32)) for key, (d, f) in steer.items()}
