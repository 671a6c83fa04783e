"""Conditional steering: a gate on the prompt's last-token residual stream (fitted on dev prompts to fire on at
most 5% of the harmless ones) turns a setting on, in scope "generation", only for the replies it fires on."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import SteeredLlama, SteeringSetting
from austeer_gguf.control_vector import ControlVector
from austeer_gguf.evaluation.conditional import Gate, fit_gate, last_prompt_residuals
from austeer_gguf.evaluation.evaluate import Prompt, prompt_tokens
from austeer_gguf.evaluation.tasks import GenerationTask
from austeer_gguf.setting import OFF

from conftest import THREADS, profile_on, relative_error
from reference import ReferenceModel


def test_the_gate_fires_on_at_most_five_percent_of_harmless_prompts_and_on_most_that_call_for_it():
    rng = np.random.default_rng(0)
    layers, width = 4, 8
    harmless = rng.normal(size=(60, layers, width))
    wanted = rng.normal(size=(40, layers, width))
    direction = np.zeros(width)
    direction[2] = 1.0
    wanted[:, 2] -= 3.0 * direction  # layer 2 separates them, on the negative side of its CAA direction
    control = ControlVector({layer: (direction if layer == 2 else rng.normal(size=width)).astype(np.float32)
                             for layer in range(1, layers)}, "llama", 10)
    gate = fit_gate(wanted, harmless, control)
    assert gate.layer == 2 and gate.direction[2] == pytest.approx(-1.0)  # oriented so that larger means "steer"
    assert gate.fires(harmless).mean() <= 0.05
    assert gate.fires(wanted).mean() > 0.8
    assert gate.fires(harmless).sum() == 3  # floor(5% of 60): the threshold is the 4th largest harmless score
    with pytest.raises(ValueError, match="harmless"):
        fit_gate(wanted, harmless[:0], control)


def test_last_prompt_residuals_are_the_references_residual_stream(tiny_f32):
    reference = ReferenceModel(tiny_f32)
    llm = SteeredLlama.for_evaluation(tiny_f32, n_ctx=512, n_batch=256, verbose=False, n_threads=THREADS,
                                      n_threads_batch=THREADS)
    prompts = [Prompt("the cat is", " very"), Prompt("you hate the dog"), Prompt("the cat is happy")]
    tokens = prompt_tokens(llm, prompts, chat=False)
    residuals = last_prompt_residuals(llm, tokens)
    for index, sequence in enumerate(tokens):
        expected = reference.forward(sequence).activations
        for layer in range(reference.n_layers):
            assert relative_error(residuals[index, layer], expected[("layer", layer)][-1]) < 1e-4


def test_a_gated_setting_steers_only_the_replies_its_gate_fires_on_in_generation_scope(tiny_f32):
    llm = SteeredLlama.for_evaluation(tiny_f32, n_ctx=512, n_batch=256, verbose=False, n_threads=THREADS,
                                      n_threads_batch=THREADS)
    prompts = [Prompt("the cat is", " very"), Prompt("you hate the dog"), Prompt("a dog was"),
               Prompt("I like this")]
    side = ["the day is", "it was a"]
    task = GenerationTask("tiny", [], prompts, prompts, "test fixture", side_dev=side)
    setting = SteeringSetting.make(llm.shape, profiles=[(profile_on("attn", llm.shape.widths["attn"],
                                                                     llm.shape.n_layers, seed=3), 1.0)], strength=4.0)
    residuals = last_prompt_residuals(llm, prompt_tokens(llm, prompts, chat=False))
    direction = np.random.default_rng(1).normal(size=llm.shape.widths["layer"])
    direction /= np.linalg.norm(direction)
    scores = residuals[:, 2] @ direction
    gate = Gate(2, tuple(float(v) for v in direction), float(np.median(scores)))  # fires on half the prompts
    fires = gate.fires(residuals)
    assert 0 < fires.sum() < len(prompts)

    (gated,) = task.evaluate_settings(llm, "dev", [setting], max_tokens=8, gates=[gate])
    replies_only = task.evaluate(llm, "dev", setting=SteeringSetting.make(
        llm.shape, profiles=[(setting.profile, 1.0)], strength=4.0, scope="generation"), max_tokens=8)
    off = task.evaluate(llm, "dev", setting=OFF, max_tokens=8)
    assert [item["fired"] for item in gated.items] == fires.tolist()
    for item, steered, plain, on in zip(gated.items, replies_only.items, off.items, fires):
        assert item["reply"] == (steered if on else plain)["reply"]
    assert gated.trigger_rate == fires.mean()
    side_fires = gate.fires(last_prompt_residuals(llm, prompt_tokens(llm, side, chat=False)))
    assert gated.side_trigger_rate == side_fires.mean()
    assert [item["reply"] for item in replies_only.items] != [item["reply"] for item in off.items]  # it steers
