"""Many sequences per decode (engine/decoder.py) against the NumPy reference and against one at a time."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import SteeredLlama
from austeer_gguf.engine import decoder
from austeer_gguf.engine.decoder import Decoder, forward, generate_tokens, sample
from austeer_gguf.errors import InputError

from conftest import THREADS, profile_on, relative_error
from reference import ReferenceModel, steer_of

# Long enough that a group holds more than 32 positions; the first three share a prefix, as chat prompts do.
TEXTS = ["the cat is very happy and the dog was sad but I like this very much",
         "the cat is very happy and the dog is not good at all so the cat is sad",
         "the cat is very happy and the dog was sad but I like that",
         "you hate the dog",
         "a dog was"]


def open_batched(path, **kwargs):
    return SteeredLlama.for_evaluation(path, n_ctx=512, n_batch=256, verbose=False, n_threads=THREADS,
                               n_threads_batch=THREADS, **kwargs)


def tokens_of(llm, texts=TEXTS):
    return [llm.tokenize(text.encode(), add_bos=True, special=True) for text in texts]


def greedy_by_reference(reference, prompt, generated, steer=None, steer_from=0, tie=1e-2):
    """True when each generated token is the reference's argmax after what came before, or within `tie`
    of it (two float paths may order a near-tie differently)."""
    logits = reference.forward(prompt + generated, steer, steer_from=steer_from).logits
    return all(logits[len(prompt) + i - 1][token] >= logits[len(prompt) + i - 1].max() - tie
               for i, token in enumerate(generated))


def test_groups_share_prefixes_and_respect_the_limits(tiny_f32):
    llm = open_batched(tiny_f32)
    sequences = tokens_of(llm)
    with Decoder(llm) as decoder:
        groups = list(decoder.groups(sequences))
        assert [g.members for g in groups] == [[0, 1, 2, 3, 4]]
        (group,) = groups
        shared = next(i for i, (a, b) in enumerate(zip(sequences[0], sequences[1])) if a != b)
        assert shared > 5
        assert len(group.cells) < sum(map(len, sequences))  # the shared prefix is held once
        assert group.positions[1][:shared] == group.positions[0][:shared]
        assert [group.cells[c].token for c in group.positions[2]] == sequences[2]
    with Decoder(llm, max_sequences=2) as decoder:
        assert [g.members for g in decoder.groups(sequences)] == [[0, 1], [2, 3], [4]]
    with Decoder(llm) as decoder, pytest.raises(InputError, match="does not fit the context"):
        list(decoder.groups([sequences[0] * 20]))


def test_forward_rows_match_the_reference_and_one_at_a_time(tiny_f32):
    llm = open_batched(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    sequences = tokens_of(llm)
    rows = [range(len(s)) for s in sequences[:3]] + [range(2, 4), range(0)]
    together = forward(llm, sequences, rows)
    alone = forward(llm, sequences, rows, max_sequences=1)
    for tokens, wanted, a, b in zip(sequences, rows, together, alone):
        assert a.shape == (len(wanted), llm.n_vocab())
        if len(wanted):
            expected = reference.forward(tokens).logits[wanted.start: wanted.stop]
            assert relative_error(a, expected) < 1e-3
            assert np.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("site", ["attn", "layer"])
def test_steered_forward_and_generation_scope_match_the_reference(tiny_f32, site):
    llm = open_batched(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    profile = profile_on(site, llm.shape.widths[site], llm.shape.n_layers, seed=9)
    llm.steering.set_profile(profile)
    sequences = tokens_of(llm)
    for tokens, logits in zip(sequences, forward(llm, sequences, [range(len(s)) for s in sequences])):
        assert relative_error(logits, reference.forward(tokens, steer_of(profile)).logits) < 1e-3
    for scope in ("all", "generation"):
        llm.steering.scope = scope
        generated = generate_tokens(llm, sequences, max_tokens=5)
        for prompt, tokens in zip(sequences, generated):
            assert len(tokens) == 5
            steer_from = len(prompt) if scope == "generation" else 0
            assert greedy_by_reference(reference, prompt, tokens, steer_of(profile), steer_from)


def test_generation_is_the_same_in_groups_and_one_at_a_time_and_stops(tiny_f32):
    llm = open_batched(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    prompts = tokens_of(llm)
    greedy = generate_tokens(llm, prompts, max_tokens=6)
    assert greedy == generate_tokens(llm, prompts, max_tokens=6, max_sequences=1)
    assert all(greedy_by_reference(reference, p, g) for p, g in zip(prompts, greedy))
    seeds = [11, 12, 13, 14, 15]
    sampled = generate_tokens(llm, prompts, max_tokens=6, temperature=0.8, seeds=seeds)
    assert sampled == generate_tokens(llm, prompts, max_tokens=6, temperature=0.8, seeds=seeds, max_sequences=2)
    assert sampled != greedy
    stopped = generate_tokens(llm, prompts, max_tokens=6, stop=lambda tokens: len(tokens) == 2)
    assert stopped == [g[:2] for g in greedy]


def test_sampling_keeps_top_k_top_p_and_min_p():
    logits = np.log(np.array([0.5, 0.3, 0.12, 0.05, 0.03] + [1e-6] * 100))
    rng = np.random.default_rng(0)
    draws = [sample(logits, 1.0, rng) for _ in range(3000)]
    # top-p 0.95 keeps the first four (0.5 + 0.3 + 0.12 + 0.05 >= 0.95); min-p 0.05 drops 0.05 * 0.5 < 0.03 only
    assert set(draws) == {0, 1, 2, 3}
    shares = np.bincount(draws, minlength=4)[:4] / len(draws)
    assert np.allclose(shares, np.array([0.5, 0.3, 0.12, 0.05]) / 0.97, atol=0.03)
    assert sample(logits, 0.0, rng) == 0
    nearly_flat = -1e-3 * np.arange(100)  # top-k keeps tokens 0..39; top-p 0.95 of them about 38
    drawn = {sample(nearly_flat, 1.0, rng) for _ in range(2000)}
    assert decoder.TOP_K == 40 and drawn <= set(range(40)) and len(drawn) >= 36


def test_an_evaluation_under_several_settings_at_once_equals_one_setting_at_a_time(tiny_f32):
    """The build measures a method's trials together: each prompt once per setting in one decode, with the
    seeds it has alone. Replies and every score equal those of one setting at a time (greedy and sampled)."""
    from austeer_gguf import SteeringSetting
    from austeer_gguf.evaluation.evaluate import Prompt
    from austeer_gguf.evaluation.tasks import GenerationTask
    from austeer_gguf.setting import OFF

    llm = open_batched(tiny_f32)
    prompts = [Prompt("the cat is", " very"), Prompt("you hate the dog", ""), Prompt("a dog was", "")]
    task = GenerationTask("tiny", [], prompts, prompts, "test fixture", side_dev=["I like this"])
    settings = [OFF] + [SteeringSetting.make(llm.shape, profiles=[(profile_on(site, llm.shape.widths[site],
                                                                               llm.shape.n_layers, seed=3), 1.0)],
                                             scope=scope)
                        for site, scope in (("attn", "all"), ("layer", "generation"))]
    for temperature in (0.0, 0.8):
        together = task.evaluate_settings(llm, "dev", settings, max_tokens=8, temperature=temperature, seed=5)
        for setting, result in zip(settings, together):
            alone = task.evaluate(llm, "dev", setting=setting, max_tokens=8, temperature=temperature, seed=5)
            assert [item["reply"] for item in result.items] == [item["reply"] for item in alone.items]
            for a, b in zip(result.items, alone.items):  # the unsteered model's scores of the same texts
                assert {k: v for k, v in a.items() if k not in ("perplexity", "relevance")} == \
                    {k: v for k, v in b.items() if k not in ("perplexity", "relevance")}
                assert a["perplexity"] == pytest.approx(b["perplexity"], rel=1e-3)
                assert (a["relevance"] is None) == (b["relevance"] is None)
                assert a["relevance"] is None or a["relevance"] == pytest.approx(b["relevance"], abs=1e-3)
            assert (result.rude_rate, result.distinct2, result.side_refusal_rate, result.relevant_rate) == \
                (alone.rude_rate, alone.distinct2, alone.side_refusal_rate, alone.relevant_rate)
    assert len({tuple(item["reply"] for item in result.items) for result in together}) > 1  # they do differ


def test_a_prompt_given_many_times_is_computed_once_and_each_copy_answered_in_place(tiny_f32):
    """forward and generate_tokens decode in `sharing_order` (by prompt setting, then tokens) and answer in the
    caller's order: repeated prompts under one prompt setting become neighbours; rows and tokens are those of
    each sequence alone and the reference's."""
    from austeer_gguf import SteeringSetting
    from austeer_gguf.setting import OFF

    llm = open_batched(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    a, b, c = tokens_of(llm, ["the cat is very happy", "a dog was", "the cat is very sad"])
    profile = profile_on("attn", llm.shape.widths["attn"], llm.shape.n_layers, seed=4)
    steered = SteeringSetting.make(llm.shape, profiles=[(profile, 1.0)])
    later = SteeringSetting.make(llm.shape, profiles=[(profile, 1.0)], scope="generation")
    given = [b, a, a, c, b, b]  # under steered, OFF, later, OFF, steered, later: `later`'s prompt is OFF's
    order = decoder.sharing_order(given, [steered, OFF, later, OFF, steered, later])
    assert order == [0, 4] + sorted([1, 2, 3, 5], key=lambda i: given[i])
    sequences = [b, a, c, a, b]
    rows = [range(len(s)) for s in sequences]
    for tokens, logits in zip(sequences, forward(llm, sequences, rows)):
        assert relative_error(logits, reference.forward(tokens).logits) < 1e-3
    with Decoder(llm) as batch:
        order = decoder.sharing_order(sequences, [OFF] * 5)
        (group,) = batch.groups([sequences[i] for i in order])
        assert len(group.cells) == len({tuple(s[:end]) for s in sequences for end in range(1, len(s) + 1)})
    seeds = [7, 8, 9, 10, 11]
    sampled = generate_tokens(llm, sequences, max_tokens=5, temperature=0.9, seeds=seeds)
    for prompt, seed, tokens in zip(sequences, seeds, sampled):
        assert generate_tokens(llm, [prompt], max_tokens=5, temperature=0.9, seeds=[seed]) == [tokens]


def test_sampled_test_runs_in_one_decode_equal_one_seed_at_a_time(tiny_f32):
    """measure_test decodes its seeds together (one setting given once per seed); each run's replies equal
    that seed's run alone, and harmless refusals are measured on the first seed's run only."""
    from austeer_gguf.evaluation.evaluate import Prompt
    from austeer_gguf.evaluation.tasks import GenerationTask

    llm = open_batched(tiny_f32)
    prompts = [Prompt("the cat is", " very"), Prompt("you hate the dog", ""), Prompt("a dog was", "")]
    task = GenerationTask("tiny", [], prompts, prompts, "test fixture", side_test=["I like this", "the dog"])
    setting = setting_on(llm, "layer")
    measured = task.measure_test(llm, setting, prompted=False, limit=None, seeds=3, temperature=0.8, max_tokens=6)
    alone = [task.evaluate(llm, "test", setting=setting, max_tokens=6, temperature=0.8, seed=1000 * seed,
                           side=seed == 0) for seed in range(3)]
    assert [item["reply"] for item in measured["items"]] == [item["reply"] for run in alone for item in run.items]
    assert [item["seed"] for item in measured["items"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert measured["side_refusal_rate"] == alone[0].side_refusal_rate is not None
    assert len({tuple(item["reply"] for item in run.items) for run in alone}) > 1  # the seeds do differ


def setting_on(llm, site):
    from austeer_gguf import SteeringSetting

    profile = profile_on(site, llm.shape.widths[site], llm.shape.n_layers, seed=3)
    return SteeringSetting.make(llm.shape, profiles=[(profile, 1.0)])
