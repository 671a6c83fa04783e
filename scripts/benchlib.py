"""What the benchmark scripts share: profiles spread over a model, timing prefill and decode, rotating the order
of configurations round by round, and the median of per-round ratios (configurations measured side by side
in one run, never against numbers from another run)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import llama_cpp
import numpy as np

from austeer_gguf import Profile, Unit

T = TypeVar("T")


def spread_profile(site: str, k: int, n_layers: int, width: int, seed: int = 0) -> Profile:
    """k units of `site` spread round-robin over every layer, scores +-0.5, alpha 5."""
    rng = np.random.default_rng(seed)
    units, taken = [], set()
    while len(units) < k:
        layer, dim = len(units) % n_layers, int(rng.integers(width))
        if (layer, dim) not in taken:
            taken.add((layer, dim))
            units.append(Unit(layer, site, dim, float(rng.choice([-0.5, 0.5]))))
    return Profile(f"bench-{site}", alpha=5.0, units=units)


def server_profiles(shape) -> tuple[Profile, Profile]:
    """The profiles the server benchmarks steer with: polite (2 attn units on every third layer, the default)
    and brisk (2 ffn units on every fourth layer from layer 1)."""
    rng = np.random.default_rng(0)
    polite = Profile("polite", 8.0, [Unit(layer, "attn", int(dim), 0.6) for layer in range(0, shape.n_layers, 3)
                                     for dim in rng.choice(shape.widths["attn"], 2, False)])
    brisk = Profile("brisk", 6.0, [Unit(layer, "ffn", int(dim), -0.5) for layer in range(1, shape.n_layers, 4)
                                   for dim in rng.choice(shape.widths["ffn"], 2, False)])
    return polite, brisk


def random_tokens(llm: llama_cpp.Llama, count: int, rng: np.random.Generator) -> list[int]:
    """Ordinary tokens (not the first or last hundred ids, where special tokens live)."""
    vocabulary = llm.n_vocab()
    return [int(t) for t in rng.integers(100, vocabulary - 100, size=count)]


def time_prefill(llm: llama_cpp.Llama, tokens: list[int]) -> float:
    """Tokens/s of one batch, waiting for the backend (on RPC, llama_decode returns before the server is done)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    llama_cpp.llama_synchronize(llm.ctx)
    return len(tokens) / (time.perf_counter() - start)


def time_decode(llm: llama_cpp.Llama, context: list[int], tokens: list[int]) -> float:
    """Tokens/s of single-token evals after `context`."""
    llm.reset()
    llm.eval(context)
    llama_cpp.llama_synchronize(llm.ctx)
    start = time.perf_counter()
    for token in tokens:
        llm.eval([token])
        llama_cpp.llama_synchronize(llm.ctx)
    return len(tokens) / (time.perf_counter() - start)


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """The order of round `round_index`: each round starts one item later, so no item is always first."""
    shift = round_index % len(items)
    return list(items[shift:]) + list(items[:shift])


def median_ratio(values: Sequence[float], bases: Sequence[float]) -> float:
    """The median of per-round ratios value / base."""
    return statistics.median(a / b for a, b in zip(values, bases))


def alternate(ways: dict[str, Callable[[], T]], rounds: int) -> tuple[dict[str, list[float]], dict[str, T]]:
    """Each way run once per round, in rotating order: the seconds of each run, per way, and each way's result
    of the last round."""
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    results: dict[str, T] = {}
    for round_index in range(rounds):
        for name in rotated(list(ways), round_index):
            start = time.perf_counter()
            results[name] = ways[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds, results
