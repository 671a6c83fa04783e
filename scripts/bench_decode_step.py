#!/usr/bin/env python3
"""Where a batched server's decode step goes: the time of one step of the batched server's shape (8 slots on one
model), five ways side by side.

  plain      ours before this benchmark: SteeredLlama as `serve --parallel 8` opened it, flash attention off
  ours       SteeredLlama as `serve --parallel 8` opens it now: flash attention on (`serve --flash-attn`)
  steering   ours, the slots under bench_server's 4 mixed settings (polite, off, brisk, polite on replies only)
  bare       the same context without our eval callback (what steering's hook costs when it steers nothing)
  streams    llama-server's layout: no callback, a KV stream per sequence (kv_unified off), flash attention on

Per-row steering keeps every slot on one unified KV cache (the rows the callback sees are then the batch's rows,
in order), so each row's attention spans every slot's cells, those of other sequences masked out. The plain path
multiplies and softmaxes every cell; flash attention on the CPU skips the masked ones; separate streams never
see them. Each way holds 8 slots with a prompt of `--prompt` tokens each, then times `--steps` steps of 1 or 8
rows (one token per generating slot), unsteered but for `steering`; the ways run in rotating order for
`--rounds` rounds. Printed: median ms per step of each way per round, and the median of per-round ratios
against `ours`.

    .venv/bin/python scripts/bench_decode_step.py                 # both built-in models, 3 rounds
"""

from __future__ import annotations

import argparse
import statistics
import time

import llama_cpp
import numpy as np
from benchlib import median_ratio, random_tokens, rotated, server_profiles

from austeer_gguf import SteeredLlama, SteeringSetting, models
from austeer_gguf.setting import OFF

SLOTS = 8
N_CTX = 2048  # per slot, as `serve --n-ctx` by default
N_BATCH = 512


class Slots:
    """A context holding `SLOTS` sequences, and a batch to decode them with."""

    def __init__(self, ctx, keep_alive=None, settings: list[SteeringSetting] | None = None) -> None:
        self.ctx, self.keep_alive, self.settings = ctx, keep_alive, settings
        self.prompt_end = 0
        self.batch = llama_cpp.llama_batch_init(N_BATCH, 0, SLOTS)

    @classmethod
    def steered(cls, path, flash_attn: bool, threads: int, mixed: bool = False) -> Slots:
        """`mixed`: sequence i steered by the i-th of 4 settings in turn, as bench_server's mixed mode is."""
        llm = SteeredLlama(str(path), n_ctx=N_CTX * SLOTS, n_batch=N_BATCH, sequences=SLOTS, n_threads=threads,
                           n_threads_batch=threads, flash_attn=flash_attn, verbose=False)
        return cls(llm.ctx, keep_alive=llm, settings=mixed_settings(llm) if mixed else None)

    @classmethod
    def bare(cls, llm: SteeredLlama, unified: bool, threads: int) -> Slots:
        """A context of llm's model made with llama.cpp's own defaults and no callback."""
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = N_CTX * SLOTS, N_BATCH, N_BATCH
        params.n_seq_max, params.kv_unified = SLOTS, unified
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not ctx:
            raise RuntimeError("llama_init_from_model failed")
        return cls(ctx, keep_alive=llm)

    def decode(self, rows: list[tuple[int, int, int]]) -> None:
        """Rows of (token, position, sequence), each asking for logits; under `settings`, a row before the prompt's
        end is steered as its sequence's setting steers prompt positions."""
        if self.settings is not None:
            settings = [self.settings[sequence % len(self.settings)] for _, _, sequence in rows]
            self.keep_alive.install_batch([setting.for_prompt() if position < self.prompt_end else setting
                                           for setting, (_, position, _) in zip(settings, rows)],
                                          list(range(len(rows))))
        self.batch.n_tokens = len(rows)
        for i, (token, position, sequence) in enumerate(rows):
            self.batch.token[i], self.batch.pos[i], self.batch.logits[i] = token, position, True
            self.batch.n_seq_id[i], self.batch.seq_id[i][0] = 1, sequence
        status = llama_cpp.llama_decode(self.ctx, self.batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status})")

    def step_ms(self, prompt: list[int], generated: list[int], rows: int) -> float:
        """Fill every slot with `prompt`, then the median ms of a step of `rows` generating slots."""
        self.prompt_end = len(prompt)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        for sequence in range(SLOTS):
            self.decode([(token, position, sequence) for position, token in enumerate(prompt)])
        times = []
        for offset, token in enumerate(generated):
            start = time.perf_counter()
            self.decode([(token, len(prompt) + offset, sequence) for sequence in range(rows)])
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1000


def mixed_settings(llm: SteeredLlama) -> list[SteeringSetting]:
    """bench_server's profiles (`benchlib.server_profiles`) as its 4 mixed settings."""
    shape = llm.shape
    polite, brisk = server_profiles(shape)
    return [SteeringSetting.make(shape, profiles=[(polite, 1.0)]), OFF,
            SteeringSetting.make(shape, profiles=[(brisk, 1.0)]),
            SteeringSetting.make(shape, profiles=[(polite, 1.0)], scope="generation")]


def bench(name: str, rounds: int, threads: int, prompt_length: int, steps: int) -> list[str]:
    path = models.fetch(name)
    ours = Slots.steered(path, True, threads)
    ways = {"plain": Slots.steered(path, False, threads), "ours": ours,
            "steering": Slots.steered(path, True, threads, mixed=True),
            "bare": Slots.bare(ours.keep_alive, True, threads), "streams": Slots.bare(ours.keep_alive, False, threads)}
    rng = np.random.default_rng(0)
    llm = ours.keep_alive
    prompt, generated = random_tokens(llm, prompt_length, rng), random_tokens(llm, steps, rng)
    lines = []
    for rows in (1, SLOTS):
        ms: dict[str, list[float]] = {way: [] for way in ways}
        for round_index in range(rounds):
            for way in rotated(list(ways), round_index):
                ms[way].append(ways[way].step_ms(prompt, generated, rows))
        lines.append(f"{path.name}: {rows} row(s) a step, {SLOTS} slots of {prompt_length} prompt tokens, "
                     f"{threads} threads, ms per step by round:")
        lines += [f"  {way:8s} {' '.join(f'{v:6.1f}' for v in values)}   {median_ratio(values, ms['ours']):.2f}x "
                  "ours" for way, values in ms.items()]
        print("\n".join(lines[-len(ways) - 1:]), flush=True)
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
