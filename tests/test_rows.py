"""Per-row steering: sequences of different settings in one decode, each row steered as its own setting says.

On the tiny float32 model every row of a mixed batch must equal the NumPy reference under that row's setting
(units of every site, units several profiles share, control vectors, both token scopes); on the real models
each row of a mixed batch must equal the same batch decoded with that row's setting applied to every row
(the same kernels and shapes: equal up to float rounding).
"""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import OFF, ControlVector, Profile, SteeredLlama, Unit
from austeer_gguf.engine import micro_batches
from austeer_gguf.engine.decoder import Decoder, forward, generate_tokens

from conftest import THREADS, profile_on, relative_error
from reference import ReferenceModel, steer_of

TEXTS = ["the cat is very happy and the dog", "a dog was sad but I like this", "you hate the world and it",
         "I love this day very much", "hello world the cat"]
TOLERANCE = 2e-4  # as for one setting alone (test_tiny_reference.py)
FLASH_TOLERANCE = 1e-3  # flash attention on the CPU rounds queries, and sums values, in float16


def open_mixed(path, **kwargs) -> SteeredLlama:
    return SteeredLlama.for_evaluation(path, n_ctx=512, n_batch=256, verbose=False, n_threads=THREADS,
                                      n_threads_batch=THREADS, **kwargs)


def vector_of(llm, seed: int) -> ControlVector:
    rng = np.random.default_rng(seed)
    width = llm.shape.widths["layer"]
    return ControlVector({layer: rng.standard_normal(width).astype(np.float32) * 0.5
                          for layer in range(1, llm.shape.n_layers)}, "llama")


def settings_and_references(llm):
    """(setting, steer for the reference, residual additions for the reference) of several kinds."""
    n_layers, widths = llm.shape.n_layers, llm.shape.widths
    attn, ffn, layer = (profile_on(site, widths[site], n_layers, seed) for site, seed in
                        (("attn", 1), ("ffn", 2), ("layer", 3)))
    overlapping = Profile("overlap", 2.0, [Unit(u.layer, u.site, u.dim, 0.5) for u in attn.units[::2]])
    vector = vector_of(llm, 4)
    caa = Profile("caa", 1.0, [], control=vector)
    cases = [
        (llm.steering.setting([(attn, 1.0)]), steer_of(attn), {}),
        (llm.steering.setting([(attn, 1.0), (overlapping, 0.5)], strength=2.0), steer_of(attn, 2.0, (overlapping, 1.0)),
         {}),
        (OFF, {}, {}),
        (llm.steering.setting([(ffn, 1.0), (caa, 0.5)]), steer_of(ffn),
         {layer_: 0.5 * v for layer_, v in vector.directions.items()}),
        (llm.steering.setting([(layer, 1.0)], control=vector, multiplier=-0.3), steer_of(layer),
         {layer_: -0.3 * v for layer_, v in vector.directions.items()}),
    ]
    return cases


def test_micro_batches_are_llama_cpps_splits():
    # One stream: the batch in order, n_ubatch rows at a time.
    assert micro_batches.split([0, 1, 0, 2, 1], 2, one_stream=True) == [[0, 1], [2, 3], [4]]
    # A stream per sequence: runs of consecutive sequence ids, the same number of rows from each, sequence after
    # sequence. Sequence 3 does not follow 1; a prompt beside one-token rows is finished in a micro-batch alone.
    assert micro_batches.split([0, 1, 3, 3, 3, 2], 512, one_stream=False) == [[0, 1, 5], [2, 3, 4]]
    assert micro_batches.split([0, 0, 0, 0, 1, 1, 1, 1], 4, one_stream=False) == [[0, 1, 4, 5], [2, 3, 6, 7]]


@pytest.mark.parametrize("flash_attn", [False, True], ids=["plain-attention", "flash-attention"])
@pytest.mark.parametrize("kv_unified, n_ubatch", [(True, 256), (True, 16), (False, 256)],
                         ids=["unified-cache", "unified-cache-16-row-micro-batches", "stream-per-sequence"])
def test_a_mixed_batch_matches_the_reference_row_by_row(tiny_f32, flash_attn, kv_unified, n_ubatch):
    llm = open_mixed(tiny_f32, flash_attn=flash_attn, kv_unified=kv_unified, n_ubatch=n_ubatch)
    tolerance = FLASH_TOLERANCE if flash_attn else TOLERANCE
    reference = ReferenceModel(tiny_f32)
    cases = settings_and_references(llm)
    sequences = [llm.tokenize(text.encode(), add_bos=True, special=True) for text in TEXTS]
    settings = [setting for setting, _, _ in cases]
    with Decoder(llm) as decoder:  # all five in one decode
        (group,) = decoder.groups(sequences, settings=settings)
    splits = micro_batches.split([cell.sequences[0] for cell in group.cells], n_ubatch, one_stream=kv_unified)
    if n_ubatch < 256 or not kv_unified:  # llama.cpp computes the decode as several micro-batches
        assert len(splits) > 1
    if not kv_unified:  # ... with rows in an order of its own
        assert [row for rows in splits for row in rows] != list(range(len(group.cells)))
    logits = forward(llm, sequences, [range(len(s)) for s in sequences], settings=settings)
    assert llm.native_counters()["skipped_rows"] == 0
    for (setting, steer, added), tokens, actual in zip(cases, sequences, logits):
        expected = reference.forward(tokens, steer, residual_add=added).logits
        assert relative_error(actual, expected) < tolerance, setting.describe()
    unsteered = reference.forward(sequences[2]).logits
    assert relative_error(logits[2], unsteered) < tolerance
    assert all(relative_error(logits[i], reference.forward(sequences[i]).logits) > 4 * FLASH_TOLERANCE
               for i in (0, 1, 3, 4))


def test_a_mixed_batch_generates_each_sequence_under_its_own_scope(tiny_f32):
    llm = open_mixed(tiny_f32)
    reference = ReferenceModel(tiny_f32)
    cases = settings_and_references(llm)
    prompts = [llm.tokenize(text.encode(), add_bos=True, special=True) for text in TEXTS]
    scoped = [llm.steering.setting(setting.profiles, strength=setting.strength,
                                   control=setting.control.vector if setting.control else None,
                                   multiplier=setting.control.multiplier if setting.control else 1.0,
                                   scope="generation") if setting.active and i % 2 else setting
              for i, (setting, _, _) in enumerate(cases)]
    generated = generate_tokens(llm, prompts, max_tokens=5, settings=scoped)
    for (_, steer, added), scope_setting, prompt, tokens in zip(cases, scoped, prompts, generated):
        steer_from = len(prompt) if scope_setting.scope == "generation" else 0
        logits = reference.forward(prompt + tokens, steer, residual_add=added, steer_from=steer_from).logits
        for i, token in enumerate(tokens):
            row = logits[len(prompt) + i - 1]
            assert row[token] >= row.max() - 1e-2, (scope_setting.describe(), i)
    alone = [generate_tokens(llm, [prompt], max_tokens=5, setting=setting)[0]
             for prompt, setting in zip(prompts, scoped)]
    assert generated == alone


def test_sequences_share_prefix_cells_only_under_the_same_prompt_setting(tiny_f32):
    llm = open_mixed(tiny_f32)
    steered = llm.steering.setting([(profile_on("attn", 64, 3, 1), 1.0)])
    only_generated = llm.steering.setting([(profile_on("attn", 64, 3, 1), 1.0)], scope="generation")
    prompt = llm.tokenize(b"the cat is very happy", add_bos=True, special=True)
    sequences = [prompt + [300], prompt + [301], prompt + [302], prompt + [303]]
    with Decoder(llm) as decoder:
        (group,) = decoder.groups(sequences, settings=[OFF, only_generated, steered, steered])
    shared = [len(set(group.positions[i]) & set(group.positions[i - 1])) for i in range(1, 4)]
    assert shared == [len(prompt), 0, len(prompt)]  # OFF and a generation-scoped prompt are the same computation
    assert {group.cells[c].setting.active for c in group.positions[2]} == {True}


@pytest.mark.real_model
@pytest.mark.parametrize("flash_attn, kv_unified", [(False, True), (True, True), (True, False)],  # last: the server's
                         ids=["plain-attention", "flash-attention", "flash-attention-stream-per-sequence"])
@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_each_row_of_a_mixed_batch_equals_the_batch_under_that_rows_setting(name, flash_attn, kv_unified, request):
    path = request.getfixturevalue(name)
    llm = open_mixed(path, flash_attn=flash_attn, kv_unified=kv_unified)
    n_layers, widths = llm.shape.n_layers, llm.shape.widths
    vector = vector_of(llm, 7)
    scale = 0.2 / np.mean([np.linalg.norm(v) for v in vector.directions.values()])
    settings = [llm.steering.setting([(profile_on("attn", widths["attn"], n_layers, 1), 1.0)]),
                OFF,
                llm.steering.setting([(profile_on("ffn", widths["ffn"], n_layers, 2), 1.0)], control=vector,
                                     multiplier=float(scale)),
                llm.steering.setting([(profile_on("layer", widths["layer"], n_layers, 3), 0.5)])]
    sequences = [llm.tokenize(text.encode(), add_bos=True, special=True) for text in TEXTS[:4]]
    rows = [range(len(s)) for s in sequences]

    def batch(row_settings):
        out = []
        with Decoder(llm) as decoder:
            (group,) = decoder.groups(sequences, share=False, settings=row_settings)
            for cell in group.cells:
                cell.output = True
            decoder.decode_group(group)
            for slot in range(len(sequences)):
                out.append(np.stack([decoder.logits(group.positions[slot][r]) for r in rows[slot]]))
        return out

    mixed = batch(settings)
    for index, setting in enumerate(settings):
        uniform = batch([setting] * len(settings))
        assert relative_error(mixed[index], uniform[index]) < 1e-5, setting.describe()
    assert relative_error(mixed[0], batch([OFF] * 4)[0]) > 1e-3  # the attn row is steered
    assert llm.native_counters()["skipped_rows"] == 0
