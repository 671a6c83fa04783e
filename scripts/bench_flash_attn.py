#!/usr/bin/env python3
"""Why the server turns flash attention on (`serve --flash-attn`, default on): the time of one decode step of the
batched server's shape, with llama.cpp's flash attention and without.

The batched server decodes its slots on one unified KV cache (per-row steering needs the batch's rows in order),
so each row's attention spans every slot's cells, those of other sequences masked out. The plain path multiplies
and softmaxes every cell; flash attention on the CPU skips the masked ones. Each way is a model opened as the
server opens it (`sequences`=8, n_ctx 2048 per slot), 8 slots holding a prompt of `--prompt` tokens each, then
`--steps` steps of 1 or 8 rows (one token per generating slot); the ways alternate in rotating order for
`--rounds` rounds. Printed: median ms per step of each way per round, and the median of per-round ratios.

    .venv/bin/python scripts/bench_flash_attn.py                  # both built-in models, 3 rounds
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp
import numpy as np
from benchlib import median_ratio, random_tokens, rotated

from austeer_gguf import SteeredLlama, models

SLOTS = 8
N_CTX = 2048


class Slots:
    """One model opened as the batched server opens it, and a batch to decode its slots with."""

    def __init__(self, path, flash_attn: bool, threads: int) -> None:
        self.llm = SteeredLlama(str(path), n_ctx=N_CTX * SLOTS, n_batch=512, sequences=SLOTS, n_threads=threads,
                                n_threads_batch=threads, flash_attn=flash_attn, verbose=False)
        self.batch = llama_cpp.llama_batch_init(512, 0, SLOTS)

    def decode(self, rows: list[tuple[int, int, int]]) -> None:
        """Rows of (token, position, sequence), each asking for logits."""
        self.batch.n_tokens = len(rows)
        for i, (token, position, sequence) in enumerate(rows):
            self.batch.token[i], self.batch.pos[i], self.batch.logits[i] = token, position, True
            self.batch.n_seq_id[i], self.batch.seq_id[i][0] = 1, sequence
        status = llama_cpp.llama_decode(self.llm.ctx, self.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status})")

    def step_ms(self, prompt: list[int], generated: list[int], rows: int) -> float:
        """Fill every slot with `prompt`, then the median ms of a step of `rows` generating slots."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.llm.ctx), True)
        for sequence in range(SLOTS):
            self.decode([(token, position, sequence) for position, token in enumerate(prompt)])
        times = []
        for offset, token in enumerate(generated):
            start = time.perf_counter()
            self.decode([(token, len(prompt) + offset, sequence) for sequence in range(rows)])
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000


def bench(name: str, rounds: int, threads: int, prompt_length: int, steps: int) -> list[str]:
    path = models.fetch(name)
    ways = {"plain": Slots(path, False, threads), "flash": Slots(path, True, threads)}
    rng = np.random.default_rng(0)
    llm = ways["plain"].llm
    prompt, generated = random_tokens(llm, prompt_length, rng), random_tokens(llm, steps, rng)
    lines = []
    for rows in (1, SLOTS):
        ms: dict[str, list[float]] = {way: [] for way in ways}
        for round_index in range(rounds):
            for way in rotated(list(ways), round_index):
                ms[way].append(ways[way].step_ms(prompt, generated, rows))
        lines.append(f"{path.name}: {rows} row(s) a step, {SLOTS} slots of {prompt_length} prompt tokens, {threads} "
                     f"threads: plain {' '.join(f'{v:.1f}' for v in ms['plain'])} ms, flash "
                     f"{' '.join(f'{v:.1f}' for v in ms['flash'])} ms; plain / flash "
                     f"{median_ratio(ms['plain'], ms['flash']):.2f}x")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=120, help="prompt tokens in each slot")
    parser.add_argument("--steps", type=int, default=32, help="generation steps timed")
    parser.add_argument("--output", help="also write the lines here")
    args = parser.parse_args()
    lines = [line for name in args.models.split(",")
             for line in bench(name, args.rounds, args.threads, args.prompt, args.steps)]
    if args.output:
        with open(args.output, "w") as out:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
