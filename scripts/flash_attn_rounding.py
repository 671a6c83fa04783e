#!/usr/bin/env python3
"""How far flash attention moves a model's next-token distributions, beside the rounding that batching already
brings: every position of the 30 neutral texts the KL screen reads, decoded unsteered three ways: 16 sequences
per decode without flash attention (the evaluation's way), the same with flash attention (the server's way), and
one sequence per decode without it. Printed per model: mean KL of the first against each other way, and how
often their top tokens agree.

llama.cpp's CPU flash attention rounds each query to float16 and sums the attention-weighted values in float16;
the plain path multiplies and sums in float32.

    .venv/bin/python scripts/flash_attn_rounding.py               # both built-in models
"""

from __future__ import annotations

import argparse

import numpy as np

from austeer_gguf import datasets, models
from austeer_gguf.engine.decoder import forward
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.evaluation.metrics import kl_divergence


def logits(path: str, flash_attn: bool, max_sequences: int | None, threads: int) -> np.ndarray:
    llm = HookedLlama.for_evaluation(path, verbose=False, n_threads=threads, n_threads_batch=threads,
                                     flash_attn=flash_attn)
    texts = [llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
             for text in datasets.prompts("neutral", "train")[:30]]
    rows = forward(llm, texts, [range(len(tokens)) for tokens in texts], max_sequences=max_sequences)
    llm.close()
    return np.concatenate([np.asarray(row, dtype=np.float64) for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for name in args.models.split(","):
        path = str(models.fetch(name))
        batched = logits(path, False, None, args.threads)
        for label, other in (("flash attention", logits(path, True, None, args.threads)),
                             ("one sequence per decode", logits(path, False, 1, args.threads))):
            agree = float(np.mean(batched.argmax(-1) == other.argmax(-1)))
            print(f"{name}: {len(batched)} positions; against {label}: mean KL {kl_divergence(batched, other):.5f}, "
                  f"top token agrees at {agree:.1%}", flush=True)


if __name__ == "__main__":
    main()
