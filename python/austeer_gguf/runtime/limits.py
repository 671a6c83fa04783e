"""Bounds on resource requests (threads, context, batch, tokens), from what the model and machine allow.

Checked before llama.cpp sees a request: llama.cpp aborts or allocates without asking (20,000 threads
crash it; an n_ctx of 1e9 asks for tens of GB). Every refusal names the limit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import InputError

KV_BYTES = 2  # the KV cache is F16
MEMORY_SHARE = 0.5  # a context may take at most half the machine's memory


def cpu_count() -> int:
    return os.cpu_count() or 1


def machine_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 34


def check_count(value: Any, name: str, low: int, high: int, why: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InputError(f"{name} = {value} is outside {low}..{high} ({why})")
    return value


def check_threads(value: int | None, name: str = "threads") -> int | None:
    if value is None:
        return None
    return check_count(value, name, 1, cpu_count(), f"this machine has {cpu_count()} CPU cores")


def context_length(fields: Mapping[str, Any]) -> int | None:
    architecture = fields.get("general.architecture")
    value = fields.get(f"{architecture}.context_length")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def kv_bytes_per_token(fields: Mapping[str, Any], n_layers: int) -> int:
    architecture = fields.get("general.architecture")

    def number(key: str, default: int) -> int:
        value = fields.get(f"{architecture}.{key}", default)
        value = value[0] if isinstance(value, list) and value else value
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default

    n_embd = number("embedding_length", 1)
    n_head = number("attention.head_count", 1)
    n_head_kv = number("attention.head_count_kv", n_head)
    key_length = number("attention.key_length", max(1, n_embd // n_head))
    value_length = number("attention.value_length", key_length)
    return n_layers * n_head_kv * (key_length + value_length) * KV_BYTES


def check_context(n_ctx: Any, fields: Mapping[str, Any], n_layers: int) -> int:
    """n_ctx for a model: 0 means the model's own context length (llama-cpp-python's convention)."""
    trained = context_length(fields)
    if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx == 0 and trained:
        n_ctx = trained
    limit = trained or 1 << 20
    n_ctx = check_count(n_ctx, "n_ctx", 1, limit, f"the model's context length is {limit}")
    needed = n_ctx * kv_bytes_per_token(fields, n_layers)
    budget = int(machine_memory() * MEMORY_SHARE)
    if needed > budget:
        raise InputError(f"n_ctx = {n_ctx} needs a {needed / 2**30:.1f} GiB KV cache; at most {budget / 2**30:.1f} GiB "
                         f"(half this machine's memory) is allowed: choose a smaller n_ctx")
    return n_ctx


def check_batch(n_batch: Any, n_ctx: int, name: str = "n_batch") -> int:
    return check_count(n_batch, name, 1, n_ctx, f"a batch cannot exceed the context of {n_ctx} tokens")


def check_max_tokens(max_tokens: Any, n_ctx: int) -> int:
    return check_count(max_tokens, "max_tokens", 1, n_ctx, f"the context holds {n_ctx} tokens")
