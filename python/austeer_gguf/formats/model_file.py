"""A model GGUF opened once: its layout, metadata, hyper-parameters, site shape and fingerprint.

Every stage that needs to know about a model file asks a `ModelFile` (the runtime, capture, localization,
embedding, the exports) instead of scanning the file again. Metadata keys are gguf-py's names (`gguf.Keys`).
Only the layout is read (`ggufio.layout.scan`); tensor data never is.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from ..errors import InputError
from ..fingerprint import ModelFingerprint, tensor_hash
from ..ggufio.layout import GgufLayout, scan
from ..sites import MAX_LAYERS, MAX_WIDTH, Hyperparameters, ModelShape

KV_BYTES = 2  # the KV cache is F16


@dataclass(frozen=True, eq=False)
class ModelFile:
    layout: GgufLayout

    @classmethod
    def open(cls, path: str | Path) -> ModelFile:
        """InputError (or FileNotFoundError) for anything that is not a readable GGUF."""
        return cls(scan(path))

    @property
    def path(self) -> Path:
        return self.layout.path

    @functools.cached_property
    def fields(self) -> dict[str, Any]:
        """Every metadata value (arrays of strings as None)."""
        return self.layout.values()

    @functools.cached_property
    def shape(self) -> ModelShape:
        return shape_from_fields(self.fields)

    @functools.cached_property
    def fingerprint(self) -> ModelFingerprint:
        shape = self.shape
        return ModelFingerprint(shape.architecture, shape.n_layers, dict(shape.widths),
                                tensor_hash([(tensor.name, tensor.shape) for tensor in self.layout.tensors]))

    @property
    def context_length(self) -> int | None:
        """The context length the model was trained with, when the file says."""
        value = self.fields.get(_key(gguf.Keys.LLM.CONTEXT_LENGTH, self.fields))
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of F16 KV cache one token takes over every layer."""
        def number(key: str, default: int) -> int:
            value = self.fields.get(_key(key, self.fields), default)
            value = value[0] if isinstance(value, list) and value else value
            return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

        n_embd = number(gguf.Keys.LLM.EMBEDDING_LENGTH, 1)
        n_head = number(gguf.Keys.Attention.HEAD_COUNT, 1)
        n_head_kv = number(gguf.Keys.Attention.HEAD_COUNT_KV, n_head)
        key_length = number(gguf.Keys.Attention.KEY_LENGTH, max(1, n_embd // n_head))
        value_length = number(gguf.Keys.Attention.VALUE_LENGTH, key_length)
        return self.shape.n_layers * n_head_kv * (key_length + value_length) * KV_BYTES

    @property
    def chat_template(self) -> str | None:
        template = self.fields.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE)
        return template if isinstance(template, str) and template else None


def _key(template: str, fields: Mapping[str, Any]) -> str:
    return template.format(arch=fields.get(gguf.Keys.General.ARCHITECTURE))


def hyperparameters(architecture: str, fields: Mapping[str, Any]) -> Hyperparameters:
    """The sizes site widths are computed from; InputError naming a missing or nonsensical key."""
    def number(template: str, default: Any = None) -> int:
        key = template.format(arch=architecture)
        value = fields.get(key, default)
        if value is None:
            raise InputError(f"the model metadata has no {key}")
        # Some architectures store a per-layer array; widths then vary per layer and layer 0's is used.
        value = value[0] if isinstance(value, (list, tuple)) and value else value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise InputError(f"the model metadata {key} is not a number: {value!r}")
        try:
            result = int(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"the model metadata {key} is not a number: {value!r}") from None
        if not 0 < result <= MAX_WIDTH:
            raise InputError(f"the model metadata {key} = {result} is outside 1..{MAX_WIDTH}")
        return result

    n_embd, n_head = number(gguf.Keys.LLM.EMBEDDING_LENGTH), number(gguf.Keys.Attention.HEAD_COUNT)
    has_value_length = fields.get(gguf.Keys.Attention.VALUE_LENGTH.format(arch=architecture)) is not None
    head_dim = number(gguf.Keys.Attention.VALUE_LENGTH) if has_value_length else max(1, n_embd // n_head)
    n_expert = fields.get(gguf.Keys.LLM.EXPERT_COUNT.format(arch=architecture)) or 0
    if isinstance(n_expert, bool) or not isinstance(n_expert, int) or not 0 <= n_expert <= MAX_WIDTH:
        raise InputError(f"the model metadata {gguf.Keys.LLM.EXPERT_COUNT.format(arch=architecture)} is "
                         f"{n_expert!r}; expected an expert count")
    return Hyperparameters(n_embd, n_head, head_dim, number(gguf.Keys.LLM.FEED_FORWARD_LENGTH, 0) or n_embd,
                           n_expert)


def shape_from_fields(fields: Mapping[str, Any]) -> ModelShape:
    """What a profile is checked against, from a GGUF's key/value metadata."""
    architecture = fields.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(architecture, str) or not architecture:
        raise InputError("the model metadata has no general.architecture: is this a model GGUF?")
    key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=architecture)
    n_layers = fields.get(key)
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 0 < n_layers <= MAX_LAYERS:
        raise InputError(f"the model metadata {key} is {n_layers!r}; expected a layer count in 1..{MAX_LAYERS}")
    return ModelShape.of(architecture, n_layers, hyperparameters(architecture, fields))
