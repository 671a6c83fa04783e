#!/usr/bin/env python3
"""Cost of steering on a non-host backend: every layer offloaded to one ggml-rpc-server on loopback.

On RPC buffers the callback reads and writes each claimed tensor through ggml_backend_tensor_get/_set (two
round trips), and every claimed node ends a graph split (one more). So the cost grows with the number of
(site, layer) tensors the profile touches, not with k. Measured side by side in one run, in rotating order:
  off      steering disabled (callback installed, claims nothing)
  few      k units on 3 layers of one site (attn)
  all      k units spread over every layer (attn)
Printed: median tokens/s and the median of per-round ratios to `off`, for prefill and decode, over RPC and,
for comparison, the same three on this CPU.

    .venv/bin/python scripts/bench_rpc.py              # SmolLM2-135M-Instruct Q4_1, 5 rounds
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from benchlib import median_ratio, random_tokens, rotated, spread_profile, time_decode, time_prefill

from austeer_gguf import OFF, Profile, SteeredLlama, models
from austeer_gguf.engine.rpc import RpcServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=models.DEFAULT_MODEL, help="built-in model name or a GGUF path")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=256)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    path = str(models.fetch(args.model)) if args.model in models.MODELS else args.model
    options = dict(n_ctx=args.prefill + args.decode + 64, n_batch=args.prefill, n_ubatch=args.prefill,
                   n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    with RpcServer(threads=args.threads) as server:
        models_ = {"cpu": SteeredLlama(path, **options), "rpc": SteeredLlama(path, rpc_servers=[server.endpoint],
                                                                             **options)}
        shape = models_["cpu"].shape
        every = spread_profile("attn", args.k, shape.n_layers, shape.widths["attn"])
        few = Profile("few", every.alpha, [u for u in every.units if u.layer < 3])
        profiles = {"off": None, "few": few, "all": every}
        rng = np.random.default_rng(1)
        prompt = random_tokens(models_["cpu"], args.prefill, rng)
        decode_tokens = random_tokens(models_["cpu"], args.decode, rng)
        configs = [(backend, name) for backend in models_ for name in profiles]
        settings = {(backend, name): OFF if profile is None else llm.steering.setting([(profile, 1.0)])
                    for backend, llm in models_.items() for name, profile in profiles.items()}

        def measure(config: tuple[str, str], run) -> float:
            llm = models_[config[0]]
            with llm.steering.using(settings[config]):
                return run(llm)

        for config in configs:
            measure(config, lambda llm: time_prefill(llm, prompt[:32]))
        prefill = {c: [] for c in configs}
        decode = {c: [] for c in configs}
        for index in range(args.rounds):
            for config in rotated(configs, index):
                prefill[config].append(measure(config, lambda llm: time_prefill(llm, prompt)))
                decode[config].append(measure(config, lambda llm: time_decode(llm, prompt[:16], decode_tokens)))
            print(f"round {index + 1}/{args.rounds}", flush=True)
        tensors = {name: len(profile.layers) if profile else 0 for name, profile in profiles.items()}
        for llm in models_.values():
            llm.close()  # before the server stops: freeing remote buffers of a gone server aborts the process

    def ratio(values, config) -> float:
        return median_ratio(values[config], values[(config[0], "off")])

    print(f"\nmodel {path}; k={args.k} attn units; {args.rounds} rounds; prefill {args.prefill} tokens, decode "
          f"{args.decode} tokens; {args.threads} threads (client and server)")
    print(f"{'backend':8} {'config':6} {'tensors':>7} {'prefill t/s':>12} {'/off':>7} {'decode t/s':>11} {'/off':>7}")
    for config in configs:
        print(f"{config[0]:8} {config[1]:6} {tensors[config[1]]:7d} {statistics.median(prefill[config]):12.1f} "
              f"{ratio(prefill, config):7.3f} {statistics.median(decode[config]):11.2f} {ratio(decode, config):7.3f}")


if __name__ == "__main__":
    main()
