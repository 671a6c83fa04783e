#!/usr/bin/env python3
"""Where a server's time goes under load, side by side in one run: our batched server with the requests mixing
4 steering settings, and llama-server with the plain model, each started as scripts/bench_server.py starts
them, N concurrent `openai` clients, 32-token greedy replies, rounds in rotating order.

Per server: completion tokens/s, and CPU milliseconds per completion token of each of its threads (from
/proc/<pid>/task/*/stat: ours names its decoding threads `austeer-decode`, the scheduler's own thread first and
then its OpenMP team; the main thread runs the HTTP event loop), of the load's own process (the clients), and of
the whole machine, with the share of the 2 cores that sat idle. A thread's CPU time includes its spinning at
ggml's barriers, so the decoding threads' figure is an upper bound on the compute.

    .venv/bin/python scripts/profile_server.py --models smollm2 --clients 8 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench_server import MIXED, PROMPTS, ROOT, commands, load, server, steered_model
from benchlib import rotated

from austeer_gguf import models

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Usage:
    """CPU seconds: per thread of the server (tid -> (name, seconds)), of this process, of the machine (busy,
    idle)."""

    threads: dict[int, tuple[str, float]] = field(default_factory=dict)
    clients: float = 0.0
    busy: float = 0.0
    idle: float = 0.0

    @classmethod
    def now(cls, pid: int) -> Usage:
        usage = cls()
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            except FileNotFoundError:  # a thread that ended meanwhile
                continue
            name = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2:].split()
            usage.threads[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / TICKS)  # utime, stime
        own = resource.getrusage(resource.RUSAGE_SELF)
        usage.clients = own.ru_utime + own.ru_stime
        cpu = [int(value) / TICKS for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        usage.idle = cpu[3] + cpu[4]  # idle, iowait
        usage.busy = sum(cpu[:8]) - usage.idle
        return usage

    def minus(self, before: Usage) -> Usage:
        threads = {tid: (name, seconds - before.threads.get(tid, (name, 0.0))[1])
                   for tid, (name, seconds) in self.threads.items()}
        return Usage(threads, self.clients - before.clients, self.busy - before.busy, self.idle - before.idle)


def server_pid(port: int) -> int:
    """The pid of the server started with `--port port` (its command line, not the Python that started it)."""
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        if any(a == b"--port" and b == str(port).encode() for a, b in zip(arguments, arguments[1:])):
            return int(entry.name)
    raise RuntimeError(f"no process listens with --port {port}")


def profile(name: str, clients: int, rounds: int, max_tokens: int, threads: int, llama_server: str) -> list[str]:
    path = models.fetch(name) if name in models.MODELS else Path(name)
    steered = steered_model(path)
    count = max(32, 2 * clients)
    mixed = [(PROMPTS[i % len(PROMPTS)], MIXED[i % len(MIXED)]) for i in range(count)]
    jobs = {"mixed": mixed, "llama": [(prompt, None) for prompt, _ in mixed]}
    started = commands(path, steered, clients, threads, llama_server)
    totals: dict[str, dict] = {mode: {"tokens": 0, "seconds": 0.0, "usage": []} for mode in jobs}
    with server(*started["batched"]) as ours, server(*started["llama"]) as llama:
        urls = {"mixed": ours, "llama": llama}
        pids = {"mixed": server_pid(started["batched"][1]), "llama": server_pid(started["llama"][1])}
        for mode in urls:  # warm-up
            load(urls[mode], jobs[mode][:clients], clients, max_tokens)
        for index in range(rounds):
            for mode in rotated(list(urls), index):
                before, start = Usage.now(pids[mode]), time.perf_counter()
                measured = load(urls[mode], jobs[mode], clients, max_tokens)
                seconds = time.perf_counter() - start
                totals[mode]["usage"].append(Usage.now(pids[mode]).minus(before))
                totals[mode]["tokens"] += round(measured["tokens_per_s"] * seconds)
                totals[mode]["seconds"] += seconds
                print(f"{path.name} round {index + 1} {mode}: {measured['tokens_per_s']:.1f} tok/s "
                      f"({measured['errors']} errors)", flush=True)
    lines = [f"\nmodel {path.name}; {clients} concurrent clients, {count} requests a round, {max_tokens} tokens "
             f"greedy, {threads} threads, {rounds} rounds; CPU ms per completion token"]
    for mode, total in totals.items():
        lines += report(mode, total)
    print("\n".join(lines), flush=True)
    return lines


def report(mode: str, total: dict) -> list[str]:
    tokens = total["tokens"]
    per_token = 1000.0 / tokens
    threads: dict[int, list] = {}
    for usage in total["usage"]:
        for tid, (name, seconds) in usage.threads.items():
            threads.setdefault(tid, [name, 0.0])[1] += seconds
    busy = sum(u.busy for u in total["usage"])
    idle = sum(u.idle for u in total["usage"])
    own = sum(seconds for _, seconds in threads.values())
    clients = sum(u.clients for u in total["usage"])
    lines = [f"{mode:6} {tokens / total['seconds']:6.1f} tok/s; server {own * per_token:5.2f} ms, clients "
             f"{clients * per_token:5.2f} ms, machine busy {busy * per_token:5.2f} ms, idle "
             f"{idle / (busy + idle):.0%} of the cores' time"]
    first = min(threads)
    for tid, (name, seconds) in sorted(threads.items(), key=lambda item: -item[1][1]):
        if seconds * per_token >= 0.05:
            role = "main" if tid == first else f"+{tid - first}"
            lines.append(f"       thread {role:>5} {name:16} {seconds * per_token:5.2f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    llama_server = subprocess.run([str(ROOT / "scripts" / "build_llama_server")], capture_output=True, text=True,
                                  check=True).stdout.strip()
    lines = []
    for name in args.models.split(","):
        lines += profile(name, args.clients, args.rounds, args.max_tokens, args.threads, llama_server)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
