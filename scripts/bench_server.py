#!/usr/bin/env python3
"""Load test of `serve`: N concurrent clients (the official `openai` client) with mixed steering settings,
against llama-cpp-python's own server with the plain model on the same load, alternated round by round.

Checks and prints:
  - errors (must be 0) and whether every greedy reply equals the reply computed alone under its setting;
  - p50 / p95 latency and completion tokens/s of each server, per round and as medians;
  - the throughput ratio ours / llama-cpp-python's (median of per-round ratios; target >= 0.95).

    .venv/bin/python scripts/bench_server.py              # SmolLM2-135M-Instruct Q4_1, 8 clients, 3 rounds
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import openai

from austeer_gguf import Profile, Unit, models
from austeer_gguf.engine.rpc import free_port
from austeer_gguf.formats.embedded import embed_profiles

PROMPTS = ["Tell me about your day.", "What should I cook tonight?", "My neighbour is loud. Any advice?",
           "Describe the sea in one sentence.", "Why is the sky blue?", "Give me a tip for sleeping well."]
SETTINGS = [None, {"enabled": False}, {"profiles": {"polite": 0.5}}, {"apply": "generation"}]


@contextlib.contextmanager
def server(command: list[str], port: int):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[:4]} did not start")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def request(client: openai.OpenAI, prompt: str, steering, max_tokens: int) -> tuple[str, float, int]:
    extra = {} if steering is None else {"extra_body": {"steering": steering}}
    start = time.perf_counter()
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}],
                                           max_tokens=max_tokens, temperature=0, **extra)
    return reply.choices[0].message.content, time.perf_counter() - start, reply.usage.completion_tokens


def load(url: str, jobs: list, clients: int, max_tokens: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    errors, results = 0, []
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
        futures = [pool.submit(request, client, prompt, steering, max_tokens) for prompt, steering in jobs]
        for future in futures:
            try:
                results.append(future.result())
            except openai.OpenAIError:
                errors += 1
                results.append(None)
    wall = time.perf_counter() - start
    latencies = [r[1] for r in results if r]
    return {"errors": errors, "texts": [r[0] if r else None for r in results], "p50": float(np.median(latencies)),
            "p95": float(np.percentile(latencies, 95)), "tokens_per_s": sum(r[2] for r in results if r) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    source = models.fetch(args.model) if args.model in models.MODELS else Path(args.model)
    scratch = Path(tempfile.mkdtemp(prefix="austeer-bench-"))
    rng = np.random.default_rng(0)
    units = [Unit(layer, "attn", int(dim), 0.6) for layer in range(0, 30, 3) for dim in rng.choice(576, 2, False)]
    steered = embed_profiles(source, [Profile("polite", 8.0, units)], scratch / "model.gguf")
    ours_port, theirs_port = free_port(), free_port()
    ours_cmd = [sys.executable, "-m", "austeer_gguf", "serve", str(steered), "--port", str(ours_port), "--threads",
                str(args.threads), "--n-ctx", "2048"]
    theirs_cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(source), "--port", str(theirs_port),
                  "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "2048",
                  "--logits_all", "False"]  # its default (True) computes every prompt position's logits: not ours
    jobs = [(PROMPTS[i % len(PROMPTS)], SETTINGS[i % len(SETTINGS)]) for i in range(args.requests)]
    plain_jobs = [(prompt, None) for prompt, _ in jobs]

    with server(ours_cmd, ours_port) as ours, server(theirs_cmd, theirs_port) as theirs:
        alone = {}
        solo = openai.OpenAI(base_url=ours, api_key="unused", max_retries=0, timeout=600)
        for prompt, steering in jobs:
            key = json.dumps([prompt, steering])
            if key not in alone:
                alone[key] = request(solo, prompt, steering, args.max_tokens)[0]
        load(ours, jobs[: args.clients], args.clients, args.max_tokens)  # warm-up
        load(theirs, plain_jobs[: args.clients], args.clients, args.max_tokens)
        rounds = []
        for index in range(args.rounds):
            order = [("ours", ours, jobs), ("theirs", theirs, plain_jobs)]
            measured = {name: load(url, batch, args.clients, args.max_tokens)
                        for name, url, batch in (order if index % 2 == 0 else order[::-1])}
            mismatches = sum(text != alone[json.dumps([prompt, steering])]
                             for text, (prompt, steering) in zip(measured["ours"]["texts"], jobs))
            rounds.append((measured, mismatches))
            print(f"round {index + 1}: ours {measured['ours']['tokens_per_s']:.1f} tok/s (p50 "
                  f"{measured['ours']['p50']:.2f} s, p95 {measured['ours']['p95']:.2f} s, errors "
                  f"{measured['ours']['errors']}, replies differing from alone {mismatches}); llama-cpp-python "
                  f"{measured['theirs']['tokens_per_s']:.1f} tok/s (p50 {measured['theirs']['p50']:.2f} s, p95 "
                  f"{measured['theirs']['p95']:.2f} s, errors {measured['theirs']['errors']})", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(m[name][key] for m, _ in rounds)

    ratio = statistics.median(m["ours"]["tokens_per_s"] / m["theirs"]["tokens_per_s"] for m, _ in rounds)
    print(f"\nmodel {source.name}; {args.clients} concurrent clients, {args.requests} requests a round "
          f"({len(SETTINGS)} steering settings mixed), {args.max_tokens} tokens greedy, {args.threads} threads, "
          f"{args.rounds} rounds")
    print(f"ours:             {median('ours', 'tokens_per_s'):7.1f} tok/s  p50 {median('ours', 'p50'):.2f} s  "
          f"p95 {median('ours', 'p95'):.2f} s  errors {sum(m['ours']['errors'] for m, _ in rounds)}  "
          f"replies differing from alone {sum(x for _, x in rounds)}")
    print(f"llama-cpp-python: {median('theirs', 'tokens_per_s'):7.1f} tok/s  p50 {median('theirs', 'p50'):.2f} s  "
          f"p95 {median('theirs', 'p95'):.2f} s  errors {sum(m['theirs']['errors'] for m, _ in rounds)}")
    print(f"throughput ratio ours / llama-cpp-python (median of rounds): {ratio:.3f}")


if __name__ == "__main__":
    main()
