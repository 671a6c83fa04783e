"""Bounds on resource requests (threads, context, batch, tokens), from what the model and machine allow.

Checked before llama.cpp sees a request: llama.cpp aborts or allocates without asking (20,000 threads
crash it; an n_ctx of 1e9 asks for tens of GB). Every refusal names the limit.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import InputError
from ..formats.model_file import ModelFile

MEMORY_SHARE = 0.5  # a context may take at most half the machine's memory
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
PARALLEL = 4  # requests a server decodes together by default (llama-server's default number of slots)


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


def check_context(n_ctx: Any, model: ModelFile, sequences: int = 1) -> int:
    """n_ctx for a model: 0 means the model's own context length (llama-cpp-python's convention). A context of
    several sequences may hold the model's context length for each."""
    trained = model.context_length
    if isinstance(n_ctx, int) and not isinstance(n_ctx, bool) and n_ctx == 0 and trained:
        n_ctx = trained
    limit = (trained or 1 << 20) * sequences
    why = f"the model's context length is {trained or 1 << 20}" + (f", for each of {sequences} sequences"
                                                                   if sequences > 1 else "")
    n_ctx = check_count(n_ctx, "n_ctx", 1, limit, why)
    needed = n_ctx * model.kv_bytes_per_token
    budget = int(machine_memory() * MEMORY_SHARE)
    if needed > budget:
        raise InputError(f"n_ctx = {n_ctx} needs a {needed / 2**30:.1f} GiB KV cache; at most {budget / 2**30:.1f} GiB "
                         f"(half this machine's memory) is allowed: choose a smaller n_ctx")
    return n_ctx


def check_batch(n_batch: Any, n_ctx: int, name: str = "n_batch") -> int:
    return check_count(n_batch, name, 1, n_ctx, f"a batch cannot exceed the context of {n_ctx} tokens")


def check_max_tokens(max_tokens: Any, n_ctx: int) -> int:
    return check_count(max_tokens, "max_tokens", 1, n_ctx, f"the context holds {n_ctx} tokens")


def check_resources(kwargs: dict[str, Any], model: ModelFile, sequences: int = 1) -> None:
    """Refuse resource requests the model or machine cannot take, before llama.cpp allocates anything."""
    for name in ("n_threads", "n_threads_batch"):
        check_threads(kwargs.get(name), name)
    n_ctx = check_context(kwargs.get("n_ctx", 512), model, sequences)
    for name in ("n_batch", "n_ubatch"):
        if kwargs.get(name) is not None:
            check_batch(kwargs[name], max(n_ctx, 1), name)
