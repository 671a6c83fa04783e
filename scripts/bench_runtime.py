#!/usr/bin/env python3
"""Runtime cost of steering: prefill and decode tokens/s, unsteered vs steered, alternated in one run.

Configurations, measured in rotating order in every round:
  plain       llama_cpp.Llama, no callback at all
  off         SteeredLlama with steering disabled (callback installed, claims nothing)
  attn/ffn/layer  SteeredLlama with k units spread over all layers at that site
  lora        llama_cpp.Llama with the ffn profile exported as a LoRA adapter (stock llama.cpp)
  bake        llama_cpp.Llama on a copy with the ffn profile baked into the weights
  cvec        SteeredLlama with a control vector on every layer (llama.cpp's own control-vector add)
Each round measures prefill (one batch of --prefill tokens) and decode (--decode single-token evals).
Printed: median tokens/s and the median of the per-round ratios to `plain` and to `off`. --models takes
built-in names, GGUF paths, and the random-weight shapes of scripts/synthetic.py (`qwen2-1.5b`, `qwen2-3b`, ...,
written and quantized to Q4_K_M on first use: timing only).

    .venv/bin/python scripts/bench_runtime.py            # SmolLM2-135M-Instruct Q4_1, 5 rounds
    .venv/bin/python scripts/bench_runtime.py --models qwen2-1.5b,qwen2-3b --configs plain,off,attn,ffn,layer \\
        --prefill 256 --decode 32 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import llama_cpp
import numpy as np
from benchlib import median_ratio, random_tokens, rotated, spread_profile, time_decode, time_prefill
from synthetic import SHAPES, synthetic

from austeer_gguf import OFF, SteeredLlama, models
from austeer_gguf.control_vector import ControlVector
from austeer_gguf.exports.bake import bake
from austeer_gguf.exports.lora import export_lora

CONFIGS = ["plain", "off", "attn", "ffn", "layer", "lora", "bake", "cvec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=models.DEFAULT_MODEL,
                        help="built-in names, GGUF paths or synthetic shapes, comma separated")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which configurations, comma separated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--decode", type=int, default=128)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    for model in args.models.split(","):
        bench_model(model, args)


def bench_model(model: str, args: argparse.Namespace) -> None:
    if model in models.MODELS:
        path = str(models.fetch(model))
    elif model in SHAPES:
        path = str(synthetic(model))
    else:
        path = model
    options = dict(n_ctx=args.prefill + args.decode + 64, n_batch=args.prefill, n_ubatch=args.prefill,
                   n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    plain = llama_cpp.Llama(path, **options)
    steered = SteeredLlama(path, **options)
    shape = steered.shape
    rng = np.random.default_rng(1)
    prompt = random_tokens(plain, args.prefill, rng)
    decode_tokens = random_tokens(plain, args.decode, rng)
    decode_context = prompt[:32]

    profiles = {site: spread_profile(site, args.k, shape.n_layers, shape.widths[site])
                for site in ("attn", "ffn", "layer")}
    configs = [config for config in CONFIGS if config in args.configs.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="austeer-bench-"))
    exported = {}
    if "lora" in configs:
        adapter = export_lora(path, profiles["ffn"], scratch / "ffn-lora.gguf").target
        exported["lora"] = llama_cpp.Llama(path, lora_path=str(adapter), **options)
    if "bake" in configs:
        exported["bake"] = llama_cpp.Llama(str(bake(path, profiles["ffn"], scratch / "baked.gguf").target), **options)
    control = ControlVector({layer: rng.standard_normal(shape.widths["layer"]).astype(np.float32) * 0.01
                             for layer in range(1, shape.n_layers)}, shape.architecture)

    settings = {"off": OFF, "cvec": steered.steering.setting(control=control),
                **{site: steered.steering.setting([(profile, 1.0)]) for site, profile in profiles.items()}}

    def measure(config: str, run) -> float:
        if config == "plain":
            return run(plain)
        if config in exported:
            return run(exported[config])
        with steered.steering.using(settings[config]):
            return run(steered)

    for config in configs:  # warm-up: page in weights, build graphs
        measure(config, lambda llm: time_prefill(llm, prompt[:64]))
        measure(config, lambda llm: time_decode(llm, decode_context, decode_tokens[:4]))

    prefill: dict[str, list[float]] = {c: [] for c in configs}
    decode: dict[str, list[float]] = {c: [] for c in configs}
    for round_index in range(args.rounds):
        for config in rotated(configs, round_index):
            prefill[config].append(measure(config, lambda llm: time_prefill(llm, prompt)))
            decode[config].append(measure(config, lambda llm: time_decode(llm, decode_context, decode_tokens)))
        print(f"round {round_index + 1}/{args.rounds}: " + ", ".join(
            f"{c} {prefill[c][-1]:.0f}/{decode[c][-1]:.1f}" for c in configs), flush=True)

    def ratio(values: dict[str, list[float]], config: str, base: str) -> float:
        return median_ratio(values[config], values[base])

    print(f"\nmodel {path}\nk={args.k} units spread over {shape.n_layers} layers; {args.rounds} rounds; "
          f"prefill {args.prefill} tokens, decode {args.decode} tokens; {args.threads} threads")
    print(f"{'config':8} {'prefill t/s':>12} {'/plain':>8} {'/off':>8} {'decode t/s':>11} {'/plain':>8} {'/off':>8}")
    for config in configs:
        print(f"{config:8} {statistics.median(prefill[config]):12.1f} {ratio(prefill, config, 'plain'):8.3f} "
              f"{ratio(prefill, config, 'off'):8.3f} {statistics.median(decode[config]):11.2f} "
              f"{ratio(decode, config, 'plain'):8.3f} {ratio(decode, config, 'off'):8.3f}")


if __name__ == "__main__":
    main()
