"""Exports on the real models: bake vs runtime on the quantized files, LoRA vs runtime on their float copies.

Agreement is measured teacher-forced: the runtime generates 100 greedy tokens per prompt, then every
variant scores that same sequence, and the argmax of each step is compared. The first steered node agrees to
fp16 rounding (2.7e-5 relative on SmolLM2); each later quantized matmul re-quantizes its slightly different
input (Q8), so the difference grows through the layers (1-4% by the last layer) and the logits move by up to
~1. Steps whose top-1 margin is clear must agree; near-ties (measured: margins 0.06-0.15) may flip.
"""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import Profile, SteeredLlama, Unit, models
from austeer_gguf.exports.bake import bake
from austeer_gguf.exports.lora import export_lora

from conftest import open_plain, open_steered

PROMPTS = ["The best way to spend a rainy afternoon is", "Dear neighbour, about the noise last night,"]
STEPS = 100


def spread(site: str, width: int, n_layers: int) -> Profile:
    rng = np.random.default_rng(7)
    units = [Unit(layer, site, int(dim), float(rng.choice([-0.6, 0.6])))
             for layer in range(1, n_layers, 2) for dim in rng.choice(width, 2, replace=False)]
    return Profile(f"{site}-real", 4.0, units)


def sequences(runtime: SteeredLlama) -> list[list[int]]:
    out = []
    for prompt in PROMPTS:
        prompt_tokens = runtime.tokenize(prompt.encode(), add_bos=True)
        completion = runtime.create_completion(prompt, max_tokens=STEPS, temperature=0.0)
        text_tokens = runtime.tokenize((prompt + completion["choices"][0]["text"]).encode(), add_bos=True)
        out.append((len(prompt_tokens), text_tokens))
    return out


CLEAR_MARGIN = 0.5  # logits between the runtime's first and second choice


def scored(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], copy=True)


def assert_top1_agree(runtime: SteeredLlama, other, label: str) -> None:
    for start, tokens in sequences(runtime):
        expected_logits = scored(runtime, tokens)[start - 1: -1]
        actual = scored(other, tokens)[start - 1: -1].argmax(axis=1)
        expected = expected_logits.argmax(axis=1)
        top2 = np.sort(expected_logits, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > CLEAR_MARGIN
        agree = float(np.mean(expected == actual))
        assert np.all(expected[clear] == actual[clear]), f"{label}: a clear top-1 choice differs"
        assert agree >= 0.95, f"{label}: top-1 agreement {agree:.2%} over {len(expected)} steps"


@pytest.fixture(params=["smollm2", "gemma3"])
def model_name(request):
    request.getfixturevalue(request.param)
    return request.param


def test_bake_matches_the_runtime_on_the_quantized_file(model_name, tmp_path):
    path = models.fetch(model_name)
    runtime = open_steered(path)
    profile = spread("ffn", runtime.shape.widths["ffn"], runtime.shape.n_layers)
    runtime.steering.set_profile(profile)
    baked = open_plain(bake(path, profile, tmp_path / "baked.gguf").target)
    assert_top1_agree(runtime, baked, f"{model_name} bake")


@pytest.mark.parametrize("site", ["attn", "ffn"])
def test_lora_matches_the_runtime_on_the_float_copy(model_name, site, tmp_path):
    path = models.float_copy(model_name)
    runtime = open_steered(path)
    profile = spread(site, runtime.shape.widths[site], runtime.shape.n_layers)
    runtime.steering.set_profile(profile)
    adapter = export_lora(path, profile, tmp_path / "adapter.gguf").target
    lora = open_plain(path, lora_path=str(adapter), lora_scale=1.0)
    assert_top1_agree(runtime, lora, f"{model_name} {site} LoRA")
