"""SteeredLlama as llama-cpp-python users drive it: completions, toggles, prompt reuse, states, threads."""

from __future__ import annotations

import random
import threading
import time

import llama_cpp
import numpy as np

from austeer_gguf import Profile, Unit
from austeer_gguf.engine import context_hook
from austeer_gguf.setting import OFF

from conftest import logits_of, open_plain, open_steered
from ggml_ctypes import tensor_name

PROMPT = "hello world the cat is"


def strong_profile(name: str, site: str, seed: int) -> Profile:
    rng = np.random.default_rng(seed)
    units = [Unit(layer, site, int(dim), 0.8) for layer in range(3) for dim in rng.choice(64, 6, replace=False)]
    return Profile(name, alpha=4.0, units=units)


def complete(llm, prompt: str = PROMPT, max_tokens: int = 8) -> str:
    return llm.create_completion(prompt, max_tokens=max_tokens, temperature=0.0)["choices"][0]["text"]


def test_plain_llama_objects_are_untouched(tiny_f32):
    steered = open_steered(tiny_f32)
    plain = open_plain(tiny_f32)
    assert context_hook.installed_callback(steered.context_params)[0] != 0
    assert context_hook.installed_callback(plain.context_params) == (0, 0)


def test_the_hook_changes_only_the_requesting_threads_parameters():
    seen = {}

    def other_thread():
        seen["other"] = context_hook.installed_callback(llama_cpp.llama_cpp.llama_context_default_params())

    with context_hook.callback_for_next_context(1234, 5678):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        seen["mine"] = context_hook.installed_callback(llama_cpp.llama_cpp.llama_context_default_params())
        seen["mine_again"] = context_hook.installed_callback(llama_cpp.llama_cpp.llama_context_default_params())
    assert seen == {"other": (0, 0), "mine": (1234, 5678), "mine_again": (0, 0)}


def test_disabled_steering_equals_a_plain_llama_bit_for_bit(tiny_f32):
    tokens = open_plain(tiny_f32).tokenize(PROMPT.encode(), add_bos=False)
    expected = logits_of(open_plain(tiny_f32), tokens)
    llm = open_steered(tiny_f32, profile=strong_profile("a", "attn", 1))
    assert not np.array_equal(logits_of(llm, tokens), expected)
    llm.steering.disable()
    assert np.array_equal(logits_of(llm, tokens), expected)


def test_a_toggle_drops_the_reused_prompt_so_the_next_completion_is_fresh(tiny_f32):
    plain = open_plain(tiny_f32)
    fresh_text = complete(plain)
    fresh_prompt_logits = np.array(plain.scores[: plain.n_tokens], copy=True)

    llm = open_steered(tiny_f32, profile=strong_profile("a", "attn", 1))
    steered_text = complete(llm)
    assert steered_text != fresh_text
    llm.steering.disable()
    assert complete(llm) == fresh_text
    assert np.array_equal(llm.scores[: llm.n_tokens], fresh_prompt_logits)
    assert llm.steering_in_effect == OFF

    llm.steering.enable()
    assert complete(llm) == steered_text
    llm.steering.strength = 0.0
    assert complete(llm) == fresh_text


def test_eval_after_a_toggle_recomputes_the_cached_prefix(tiny_f32):
    llm = open_steered(tiny_f32, profile=strong_profile("a", "ffn", 2))
    tokens = llm.tokenize(PROMPT.encode(), add_bos=False)
    llm.reset()
    llm.eval(tokens[:3])
    llm.steering.disable()
    llm.eval(tokens[3:])  # the first three tokens were computed with steering on
    expected = logits_of(open_plain(tiny_f32), tokens)
    assert np.array_equal(llm.scores[: len(tokens)], expected)


def test_saved_states_and_the_prompt_cache_respect_the_setting(tiny_f32):
    expected_off = complete(open_plain(tiny_f32))
    llm = open_steered(tiny_f32, profile=strong_profile("a", "layer", 3))
    steered_text = complete(llm)
    state = llm.save_state()
    llm.steering.disable()
    llm.load_state(state)  # KV computed with steering on
    assert complete(llm) == expected_off

    llm.set_cache(llama_cpp.LlamaRAMCache())
    llm.steering.enable()
    assert complete(llm) == steered_text  # fills the cache under steering
    llm.steering.disable()
    assert complete(llm) == expected_off


def test_a_chained_python_callback_still_runs(tiny_f32):
    names: list[str] = []

    def mine(tensor: int, ask: bool) -> bool:
        if ask:
            names.append(tensor_name(tensor))
        return False

    profile = strong_profile("a", "attn", 1)
    tokens = open_plain(tiny_f32).tokenize(PROMPT.encode(), add_bos=False)
    expected = logits_of(open_steered(tiny_f32, profile=profile), tokens)
    llm = open_steered(tiny_f32, profile=profile, eval_callback=mine)
    assert np.array_equal(logits_of(llm, tokens), expected)
    assert {"kqv_out-0", "ffn_out-2", "l_out-1", "result_output"} <= set(names)


def test_toggling_from_another_thread_keeps_every_completion_consistent(tiny_f32):
    llm = open_steered(tiny_f32)
    profiles = {"A": strong_profile("A", "attn", 5), "B": strong_profile("B", "ffn", 6)}

    def key(setting):
        return None if not setting.active else (setting.profile.name, setting.strength)

    expected = {}
    for name, profile in profiles.items():
        llm.steering.set_profile(profile)
        for strength in (1.0, 2.0):
            llm.steering.strength = strength
            expected[(name, strength)] = complete(llm)
    llm.steering.disable()
    expected[None] = complete(llm)
    assert len(set(expected.values())) == len(expected), "settings must give distinct completions"

    changes = 1000
    done = threading.Event()
    errors: list[BaseException] = []

    def toggler() -> None:
        rng = random.Random(0)
        try:
            for _ in range(changes):
                action = rng.randrange(4)
                if action == 0:
                    llm.steering.enabled = not llm.steering.enabled
                elif action == 1:
                    llm.steering.strength = rng.choice([1.0, 2.0])
                else:
                    llm.steering.set_profile(profiles[rng.choice("AB")])
                time.sleep(0.0002)
        except BaseException as error:  # reported by the main thread
            errors.append(error)
        finally:
            done.set()

    thread = threading.Thread(target=toggler)
    thread.start()
    completions, seen = 0, set()
    while not done.is_set() or completions < 20:
        text = complete(llm)
        setting = key(llm.steering_in_effect)
        assert text == expected[setting], f"completion under {setting} differs from its reference"
        completions += 1
        seen.add(setting)
    thread.join()
    assert not errors
    assert len(seen) >= 3, f"only {seen} were exercised in {completions} completions"


def test_prefix_reuse_follows_the_token_scope(tiny_f32):
    """Under scope "generation" the cached prompt is unsteered and the cached reply steered: a follow-up whose
    prompt contains the reply may reuse only the first part, and every mix of scopes equals a fresh context."""
    profile = strong_profile("a", "attn", 1)

    def fresh(prompt: str, scope: str) -> str:
        llm = open_steered(tiny_f32, profile=profile)
        llm.steering.scope = scope
        return complete(llm, prompt)

    llm = open_steered(tiny_f32, profile=profile)
    llm.steering.scope = "generation"
    first = complete(llm)
    follow_up = PROMPT + first + " and"
    assert complete(llm, follow_up) == fresh(follow_up, "generation")
    llm.steering.scope = "all"
    assert complete(llm, follow_up) == fresh(follow_up, "all")
    llm.steering.scope = "generation"
    assert complete(llm, follow_up) == fresh(follow_up, "generation")
    assert complete(llm) == first
    assert fresh(PROMPT, "all") != first  # the scopes differ on this prompt


def test_a_generation_scoped_prompt_is_shared_with_unsteered_requests(tiny_f32):
    llm = open_steered(tiny_f32, profile=strong_profile("a", "ffn", 2))
    llm.steering.scope = "generation"
    complete(llm)
    llm.steering.disable()
    tokens = llm.tokenize(PROMPT.encode(), add_bos=False)
    assert llm._kv.reusable(llm.steering.requested.for_prompt(), llm.n_tokens) >= len(tokens)
    assert complete(llm) == complete(open_plain(tiny_f32))
