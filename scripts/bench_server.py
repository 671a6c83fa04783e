#!/usr/bin/env python3
"""Load test of `serve`, side by side in one run: 1, 4, 8 and 16 concurrent clients (the official `openai`
client), 32-token greedy replies, 2 threads, against

  serial    our server one request at a time (`--parallel 1`, the server before continuous batching)
  batched   our server decoding the clients together (`--parallel N`), every request under one setting
  mixed     the same, the requests mixing 4 steering settings (default, off, another profile, reply only)
  streams   mixed on `--parallel N --kv-streams`: a KV stream per slot, llama-server's layout (not run unless
            named in --modes)
  llama     llama.cpp's own llama-server (built from the vendored sources by scripts/build_llama_server),
            `--parallel N`, the plain model

Per client count the modes run in rotating order, round by round. Printed per mode: completion tokens/s, p50
and p95 latency, errors, and (batched, mixed) how many greedy replies differ from the reply computed alone
under the same setting on the serial server (batch shapes change float rounding: near-ties may flip). Then the
time to first token of `--probes` short streamed requests (serial: at most 4) while N - 1 long replies stream
(p50 / p95), and the ratios mixed / serial and mixed / llama.

    .venv/bin/python scripts/bench_server.py                        # SmolLM2 Q4_1 and Gemma-3, 3 rounds
    .venv/bin/python scripts/bench_server.py --models smollm2 --clients 8 --rounds 1
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
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import openai
from benchlib import rotated, server_profiles

from austeer_gguf import models
from austeer_gguf.engine.rpc import free_port
from austeer_gguf.formats.embedded import embed_profiles
from austeer_gguf.formats.model_file import ModelFile

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["Tell me about your day.", "What should I cook tonight?", "My neighbour is loud. Any advice?",
           "Describe the sea in one sentence.", "Why is the sky blue?", "Give me a tip for sleeping well."]
MIXED = [None, {"enabled": False}, {"profiles": {"brisk": 1.0}}, {"apply": "generation"}]
N_CTX = 2048
SERIAL_PROBES = 4  # a serial probe waits for every long reply ahead of it (seconds each): a few show that


@contextlib.contextmanager
def server(command: list[str], port: int):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
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
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def first_token_times(url: str, clients: int, probes: int) -> list[float]:
    """Seconds to the first streamed text of short requests sent one after another while clients - 1 long
    replies (256 tokens) stream."""
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    stop = threading.Event()

    def long_reply(index: int) -> None:
        while not stop.is_set():
            stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": PROMPTS[index]}],
                                                    max_tokens=256, temperature=0, stream=True)
            for _ in stream:
                if stop.is_set():
                    break

    workers = [threading.Thread(target=long_reply, args=(i % len(PROMPTS),), daemon=True) for i in range(clients - 1)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)
    times = []
    for index in range(probes):
        start = time.perf_counter()
        stream = client.chat.completions.create(model="m", max_tokens=4, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                times.append(time.perf_counter() - start)
                break
        for _ in stream:
            pass
    stop.set()
    for worker in workers:
        worker.join(timeout=120)
    return times


def commands(path: Path, steered: Path, clients: int, threads: int, llama_server: str) -> dict[str, tuple]:
    ports = {name: free_port() for name in ("serial", "batched", "streams", "llama")}
    ours = [sys.executable, "-m", "austeer_gguf", "serve", str(steered), "--threads", str(threads), "--n-ctx",
            str(N_CTX)]
    return {
        "serial": (ours + ["--port", str(ports["serial"]), "--parallel", "1"], ports["serial"]),
        "batched": (ours + ["--port", str(ports["batched"]), "--parallel", str(max(clients, 2))], ports["batched"]),
        "streams": (ours + ["--port", str(ports["streams"]), "--parallel", str(max(clients, 2)), "--kv-streams"],
                    ports["streams"]),
        "llama": ([llama_server, "-m", str(path), "--port", str(ports["llama"]), "--host", "127.0.0.1", "-t",
                   str(threads), "-tb", str(threads), "-c", str(N_CTX * clients), "--parallel", str(clients),
                   "--no-webui"], ports["llama"]),
    }


def bench_model(name: str, clients_list: list[int], args, llama_server: str) -> list[str]:
    path = models.fetch(name) if name in models.MODELS else Path(name)
    steered = steered_model(path)
    lines = []
    for clients in clients_list:
        lines += bench_clients(path, steered, clients, args, llama_server)
    return lines


def steered_model(path: Path) -> Path:
    """A copy of the model with two profiles embedded (polite: the default; brisk), in a temporary folder."""
    return embed_profiles(path, list(server_profiles(ModelFile.open(path).shape)),
                          Path(tempfile.mkdtemp(prefix="austeer-bench-")) / "model.gguf")


def bench_clients(path: Path, steered: Path, clients: int, args, llama_server: str) -> list[str]:
    count = max(args.requests, 2 * clients)
    mixed = [(PROMPTS[i % len(PROMPTS)], MIXED[i % len(MIXED)]) for i in range(count)]
    single = [(prompt, None) for prompt, _ in mixed]
    jobs = {"serial": mixed, "batched": single, "mixed": mixed, "streams": mixed, "llama": single}
    started = commands(path, steered, clients, args.threads, llama_server)
    server_of = {"serial": "serial", "batched": "batched", "mixed": "batched", "streams": "streams", "llama": "llama"}
    with contextlib.ExitStack() as stack:
        needed = {"serial"} | {server_of[mode] for mode in args.modes}  # serial: the replies computed alone
        running = {name: stack.enter_context(server(*started[name])) for name in started if name in needed}
        urls = {mode: running[server_of[mode]] for mode in server_of if mode in args.modes}
        solo = openai.OpenAI(base_url=running["serial"], api_key="unused", max_retries=0, timeout=600)
        distinct = {json.dumps([prompt, steering]): (prompt, steering) for prompt, steering in mixed + single}
        alone = {key: request(solo, prompt, steering, args.max_tokens)[0]
                 for key, (prompt, steering) in distinct.items()}
        for mode in urls:  # warm-up
            load(urls[mode], jobs[mode][:clients], clients, args.max_tokens)
        results: dict[str, list[dict]] = {mode: [] for mode in urls}
        for index in range(args.rounds):
            for mode in rotated(list(urls), index):
                measured = load(urls[mode], jobs[mode], clients, args.max_tokens)
                if mode in ("batched", "mixed", "streams"):
                    measured["differing"] = sum(text != alone[json.dumps([prompt, steering])]
                                                for text, (prompt, steering) in zip(measured["texts"], jobs[mode]))
                results[mode].append(measured)
                print(f"{path.name} clients {clients} round {index + 1} {mode}: {measured['tokens_per_s']:.1f} tok/s",
                      flush=True)
        probed = [mode for mode in ("serial", "mixed", "streams", "llama") if mode in urls]
        first = ({mode: first_token_times(urls[mode], clients,
                                          min(args.probes, SERIAL_PROBES) if mode == "serial" else args.probes)
                  for mode in probed}
                 if clients > 1 and not args.no_first_token else {})

    lines = [f"\nmodel {path.name}; {clients} concurrent clients, {count} requests a round, {args.max_tokens} "
             f"tokens greedy, {args.threads} threads, {args.rounds} rounds",
             f"{'mode':8} {'tok/s':>7} {'p50 s':>7} {'p95 s':>7} {'errors':>6} {'differing':>9} "
             f"{'first token p50 / p95 s':>24}"]
    for mode, rounds in results.items():
        differing = str(sum(r.get("differing", 0) for r in rounds)) if mode in ("batched", "mixed", "streams") else "-"
        times = first.get(mode)
        ttft = f"{np.median(times):.2f} / {np.percentile(times, 95):.2f}" if times else "-"
        lines.append(f"{mode:8} {median(rounds, 'tokens_per_s'):7.1f} {median(rounds, 'p50'):7.2f} "
                     f"{median(rounds, 'p95'):7.2f} {sum(r['errors'] for r in rounds):6d} {differing:>9} {ttft:>24}")
    pairs = (("mixed", "serial"), ("mixed", "llama"), ("batched", "llama"), ("streams", "mixed"))
    ratios = [f"{a} / {b} {ratio(results, a, b):.2f}x" for a, b in pairs if a in results and b in results]
    lines.append(", ".join(ratios) + " (medians of per-round ratios)")
    print("\n".join(lines), flush=True)
    return lines


def median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def ratio(results: dict[str, list[dict]], mode: str, base: str) -> float:
    return statistics.median(a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(results[mode], results[base]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--clients", default="1,4,8,16")
    parser.add_argument("--requests", type=int, default=32, help="requests per round (at least 2 per client)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--modes", default="serial,batched,mixed,llama", help="which of the five to run")
    parser.add_argument("--no-first-token", action="store_true", help="skip the time-to-first-token probe")
    parser.add_argument("--probes", type=int, default=24, help="short requests the time-to-first-token probe sends")
    args = parser.parse_args()
    args.modes = args.modes.split(",")
    llama_server = subprocess.run([str(ROOT / "scripts" / "build_llama_server")], capture_output=True, text=True,
                                  check=True).stdout.strip()
    lines = []
    for name in args.models.split(","):
        lines += bench_model(name, [int(c) for c in args.clients.split(",")], args, llama_server)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
