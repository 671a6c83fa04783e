#!/usr/bin/env python3
"""Why a model is decoded from one thread only (engine/threads.py): single-token decode speed of a thread that
is the only one with an OpenMP team, against a thread that decodes while another thread's team is alive (what
the server did before: the model's site probe decoded on the main thread, then the scheduler thread, or
one anyio worker thread after another, decoded every request).

Every measurement runs on a fresh thread that ends after it (a team ends with its thread), the two ways in
rotating order, `--rounds` rounds. Printed: tokens/s of each way per round, and the median of the per-round
ratios alone / beside another team.

    .venv/bin/python scripts/bench_decode_threads.py                 # both built-in models, 5 rounds
"""

from __future__ import annotations

import argparse
import statistics
import threading

import llama_cpp
import numpy as np
from benchlib import median_ratio, random_tokens, rotated, time_decode

from austeer_gguf import models


def on_fresh_thread(llm: llama_cpp.Llama, context: list[int], tokens: list[int], other_team: bool) -> float:
    """Decode tokens/s on a new thread; with `other_team`, while another thread that has decoded stays alive."""
    result: list[float] = []
    release = threading.Event()
    started = threading.Event()

    def hold_a_team() -> None:
        llm.reset()
        llm.eval(context[:1])  # this thread now owns a team, which lives until the thread ends
        started.set()
        release.wait()

    holder = threading.Thread(target=hold_a_team) if other_team else None
    if holder is not None:
        holder.start()
        started.wait()
    worker = threading.Thread(target=lambda: result.append(time_decode(llm, context, tokens)))
    worker.start()
    worker.join()
    release.set()
    if holder is not None:
        holder.join()
    return result[0]


def bench(name: str, rounds: int, threads: int, count: int) -> list[str]:
    path = models.fetch(name)
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    rng = np.random.default_rng(0)
    context, tokens = random_tokens(llm, 32, rng), random_tokens(llm, count, rng)
    speeds: dict[str, list[float]] = {"alone": [], "beside": []}
    lines = []
    for round_index in range(rounds):
        for way in rotated(list(speeds), round_index):
            speeds[way].append(on_fresh_thread(llm, context, tokens, other_team=way == "beside"))
        line = f"{path.name} round {round_index + 1}: " + ", ".join(f"{w} {s[-1]:.1f} tok/s" for w, s in speeds.items())
        print(line, flush=True)
        lines.append(line)
    llm.close()
    summary = (f"{path.name}: {threads} threads, {count} single-token decodes a way, {rounds} rounds; decode tok/s "
               f"alone {statistics.median(speeds['alone']):.1f}, beside another thread's team "
               f"{statistics.median(speeds['beside']):.1f}; alone / beside "
               f"{median_ratio(speeds['alone'], speeds['beside']):.2f}x (median of per-round ratios)")
    print(summary, flush=True)
    return lines + [summary]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    for name in args.models.split(","):
        bench(name, args.rounds, args.threads, args.tokens)


if __name__ == "__main__":
    main()
