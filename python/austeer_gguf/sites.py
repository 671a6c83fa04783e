"""The three steering sites, their llama.cpp graph tensors, and the shape of a model at each site."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SITES: tuple[str, ...] = ("attn", "ffn", "layer")
SITE_CODES: dict[str, int] = {"attn": 0, "ffn": 1, "layer": 2}
TENSOR_PREFIXES: dict[str, str] = {"attn": "kqv_out", "ffn": "ffn_out", "layer": "l_out"}


def tensor_name(site: str, layer: int) -> str:
    """The llama.cpp graph tensor that holds `site` of `layer`, e.g. ``kqv_out-3``."""
    return f"{TENSOR_PREFIXES[site]}-{layer}"


@dataclass(frozen=True)
class ModelShape:
    """What a profile is checked against: layer count and the row width of each site tensor."""

    architecture: str
    n_layers: int
    widths: dict[str, int]

    @classmethod
    def from_llama(cls, llm: Any) -> ModelShape:
        import llama_cpp

        metadata: dict[str, str] = getattr(llm, "metadata", {}) or {}
        architecture = metadata.get("general.architecture", "unknown")
        n_layers = int(llama_cpp.llama_model_n_layer(llm.model))
        n_embd = int(llama_cpp.llama_model_n_embd(llm.model))
        n_head = int(llama_cpp.llama_model_n_head(llm.model))
        return cls(architecture, n_layers, site_widths(metadata, architecture, n_embd, n_head))

    @classmethod
    def from_gguf_fields(cls, fields: dict[str, Any]) -> ModelShape:
        """From a GGUF's key/value metadata (as `austeer_gguf.gguf_meta.read_fields` returns it)."""
        architecture = str(fields["general.architecture"])
        n_layers = int(fields[f"{architecture}.block_count"])
        n_embd = int(fields[f"{architecture}.embedding_length"])
        n_head = _first_int(fields[f"{architecture}.attention.head_count"])
        return cls(architecture, n_layers, site_widths(fields, architecture, n_embd, n_head))

    def describe_range(self, site: str) -> str:
        return f"layers 0..{self.n_layers - 1}, dims 0..{self.widths[site] - 1} for site {site!r}"


def site_widths(metadata: dict[str, Any], architecture: str, n_embd: int, n_head: int) -> dict[str, int]:
    value_length = metadata.get(f"{architecture}.attention.value_length")
    head_dim = int(value_length) if value_length is not None else n_embd // n_head
    return {"attn": n_head * head_dim, "ffn": n_embd, "layer": n_embd}


def _first_int(value: Any) -> int:
    # Some architectures store a per-layer head count array; the attention width then varies per layer
    # and the first layer's is used.
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)
