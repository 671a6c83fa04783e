"""Exports that stock llama.cpp runs (LoRA adapter, baked weights, CAA control vector), each against the
runtime callback and the NumPy reference on the tiny model."""

from __future__ import annotations

from dataclasses import replace

import gguf
import llama_cpp
import numpy as np
import pytest

from austeer_gguf import OFF, Profile, SteeringSetting, Unit
from austeer_gguf.control_vector import ControlVector
from austeer_gguf.exports.bake import SCALE_FIELDS, bake, scale_rows
from austeer_gguf.exports.lora import export_lora
from austeer_gguf.formats.control_vectors import read_control_vector, write_control_vector
from austeer_gguf.formats.model_file import ModelFile
from austeer_gguf.formats.profiles import profile_json, read_profile
from austeer_gguf.ggufio.layout import TensorEntry, scan
from austeer_gguf.localization.capture import ActivationCapture
from austeer_gguf.localization.localize import compute_control_vector
from austeer_gguf.localization.pairs import Pair, tokenize_pairs

from conftest import THREADS, logits_of, open_plain, open_steered, relative_error
from reference import ReferenceModel
from tiny_model import TinyConfig, write_tiny_llama

TOKENS = [262, 270, 290, 300, 265, 300, 280, 3, 41, 99, 150, 284, 291, 276, 277]


def profile_for(site: str, seed: int = 1, alpha: float = 3.0) -> Profile:
    rng = np.random.default_rng(seed)
    units = [Unit(layer, site, int(dim), float(rng.choice([-0.8, -0.4, 0.5, 0.9])))
             for layer in range(3) for dim in rng.choice(64, 5, replace=False)]
    return Profile(f"{site}-export", alpha, units)


def runtime_logits(path, profile: Profile, strength: float = 1.0) -> np.ndarray:
    llm = open_steered(path, profile=profile)
    llm.steering.strength = strength
    return logits_of(llm, TOKENS)


# ---- float weights: runtime == LoRA == bake -----------------------------------------------------------------

@pytest.mark.parametrize("site", ["attn", "ffn"])
def test_runtime_lora_and_bake_agree_on_float_weights(tiny_f32, tmp_path, site):
    profile = profile_for(site)
    unsteered = logits_of(open_plain(tiny_f32), TOKENS)
    runtime = runtime_logits(tiny_f32, profile)
    adapter = export_lora(tiny_f32, profile, tmp_path / "adapter.gguf").target
    lora = logits_of(open_plain(tiny_f32, lora_path=str(adapter), lora_scale=1.0), TOKENS)
    baked = logits_of(open_plain(bake(tiny_f32, profile, tmp_path / "baked.gguf").target), TOKENS)

    effect = relative_error(runtime, unsteered)
    assert effect > 0.1
    # Float rounding differs (a scaled input vs a separate low-rank term); 2e-4 is the tiny model's rounding
    # bound against NumPy (see test_tiny_reference.py), far below the effect.
    assert relative_error(lora, runtime) < 2e-4
    assert relative_error(baked, runtime) < 2e-4

    switched_off = logits_of(open_plain(tiny_f32, lora_path=str(adapter), lora_scale=0.0), TOKENS)
    assert relative_error(switched_off, unsteered) < 1e-6
    lora_twice = logits_of(open_plain(tiny_f32, lora_path=str(adapter), lora_scale=2.0), TOKENS)
    assert relative_error(lora_twice, runtime_logits(tiny_f32, profile, strength=2.0)) < 2e-4


# ---- quantized weights -----------------------------------------------------------------------------------

def captured(path, sites: list[str], profile: Profile | None = None) -> dict[str, np.ndarray]:
    """Last-token activations of TOKENS at every layer: site -> [layers, width]."""
    with ActivationCapture(path, batch_tokens=64, n_ctx=128, n_threads=THREADS) as capture:
        setting = OFF if profile is None else SteeringSetting.make(capture.shape, profiles=[(profile, 1.0)])
        return {site: values[0] for site, values in capture.last_tokens([TOKENS], sites, setting=setting).items()}


def test_bake_equals_the_callback_on_quantized_weights(tiny_q8, tmp_path):
    profile = profile_for("ffn")
    baked_path = bake(tiny_q8, profile, tmp_path / "baked.gguf").target
    runtime, baked = captured(tiny_q8, ["ffn"], profile)["ffn"], captured(baked_path, ["ffn"])["ffn"]
    # At the first steered node only the fp16 rounding of the new block scales differs (2^-11 relative).
    assert relative_error(baked[0], runtime[0]) < 2 ** -10
    # Later layers quantize their (slightly different) inputs to Q8 again, and the random tiny model
    # amplifies each rounding step; measured 1.1% on the logits, against a steering effect of over 10%.
    runtime_logits_ = runtime_logits(tiny_q8, profile)
    assert relative_error(logits_of(open_plain(baked_path), TOKENS), runtime_logits_) < 3e-2
    assert relative_error(runtime_logits_, logits_of(open_plain(tiny_q8), TOKENS)) > 0.1


def test_lora_equals_the_callback_at_the_steered_node_within_activation_quantization(tiny_q8, tmp_path):
    profile = profile_for("ffn", alpha=1.0)
    adapter = export_lora(tiny_q8, profile, tmp_path / "adapter.gguf").target
    runtime = captured(tiny_q8, ["ffn"], profile)["ffn"]
    with ActivationCapture(tiny_q8, batch_tokens=64, n_ctx=128, n_threads=THREADS) as capture:
        handle = llama_cpp.llama_adapter_lora_init(capture.llm.model, str(adapter).encode())
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
        scales = (llama_cpp.ctypes.c_float * 1)(1.0)
        assert llama_cpp.llama_set_adapters_lora(capture.llm.ctx, adapters, 1, scales) == 0
        lora = capture.last_tokens([TOKENS], ["ffn"])["ffn"][0]
        llama_cpp.llama_adapter_lora_free(handle)
    # Layer 0 sees the same input in both: the difference is the Q8 rounding of the activation entering
    # ffn_down (the callback scales the quantized product; the LoRA term is computed in float).
    assert relative_error(lora[0], runtime[0]) < 1e-2
    assert relative_error(lora, runtime) < 5e-2


def test_attn_units_bake_through_attn_v_when_every_query_head_has_its_kv_head(tmp_path):
    model = write_tiny_llama(tmp_path / "mha-q8.gguf", weight_type="Q8_0", config=TinyConfig(n_head_kv=4))
    profile = profile_for("attn")
    report = bake(model, profile, tmp_path / "baked.gguf")
    assert report.via_attn_v
    runtime_attn, baked_attn = captured(model, ["attn"], profile)["attn"], captured(report.target, ["attn"])["attn"]
    # Scaled V goes through the fp16 block scales and the F16 KV cache; the callback scales in F32.
    assert relative_error(baked_attn[0], runtime_attn[0]) < 2e-3
    runtime = runtime_logits(model, profile)
    assert relative_error(logits_of(open_plain(report.target), TOKENS), runtime) < 3e-2
    assert relative_error(runtime, logits_of(open_plain(model), TOKENS)) > 0.1


def test_quantized_attn_with_shared_kv_heads_is_refused_or_approximated(tiny_q8, tmp_path):
    profile = profile_for("attn")
    with pytest.raises(ValueError, match="--approximate"):
        bake(tiny_q8, profile, tmp_path / "baked.gguf")
    assert not (tmp_path / "baked.gguf").exists()
    report = bake(tiny_q8, profile, tmp_path / "baked.gguf", approximate=True)
    assert report.approximate_max_error is not None and 0 < report.approximate_max_error < 0.05
    baked = logits_of(open_plain(report.target), TOKENS)
    assert relative_error(baked, runtime_logits(tiny_q8, profile)) < 2e-2


# ---- every quantization type -----------------------------------------------------------------------------

def random_blocks(ggml_type: gguf.GGMLQuantizationType, n_rows: int, n_in: int, seed: int) -> bytes:
    """Valid blocks of any type: random quants and sub-scales, sane fp16 scale fields."""
    rng = np.random.default_rng(seed)
    if ggml_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
        return gguf.quants.quantize(rng.standard_normal((n_rows, n_in)).astype(np.float32), ggml_type).tobytes()
    block_elements, block_bytes = gguf.GGML_QUANT_SIZES[ggml_type]
    blocks = rng.integers(0, 256, (n_rows * n_in // block_elements, block_bytes), dtype=np.uint8)
    for offset in SCALE_FIELDS[ggml_type]:
        scales = rng.uniform(0.01, 0.05, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.tobytes()


def dequantized(data: bytes, ggml_type, n_rows: int, n_in: int) -> np.ndarray:
    raw = np.frombuffer(data, dtype=np.uint8).reshape(n_rows, -1)
    if ggml_type == gguf.GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(n_rows, n_in)
    if ggml_type == gguf.GGMLQuantizationType.F16:
        return raw.view(np.float16).astype(np.float32).reshape(n_rows, n_in)
    return gguf.quants.dequantize(raw, ggml_type).reshape(n_rows, n_in)


TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
         "IQ4_NL", "IQ4_XS"]


@pytest.mark.parametrize("type_name", TYPES)
def test_baked_rows_are_scaled_within_fp16_scale_rounding(type_name):
    ggml_type = gguf.GGMLQuantizationType[type_name]
    n_rows, n_in = 6, 512
    data = random_blocks(ggml_type, n_rows, n_in, seed=3)
    tensor = TensorEntry("blk.0.ffn_down.weight", (n_in, n_rows), ggml_type, 0, len(data))
    factors = {1: 3.25, 4: -1.7}
    baked = scale_rows(data, tensor, factors)
    before, after = dequantized(data, ggml_type, n_rows, n_in), dequantized(baked, ggml_type, n_rows, n_in)
    row_bytes = len(data) // n_rows
    for row in range(n_rows):
        if row in factors:
            expected = factors[row] * before[row]
            # Each scale field is rounded to fp16 (relative 2^-11) after scaling; BF16 values to 2^-8.
            bound = (2 ** -7 if type_name == "BF16" else 2 ** -10) * np.abs(expected).max()
            assert np.abs(after[row] - expected).max() <= bound
        else:
            assert baked[row * row_bytes:(row + 1) * row_bytes] == data[row * row_bytes:(row + 1) * row_bytes]


def test_a_type_without_an_exact_fold_is_refused_by_name():
    data = bytes(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ2_XXS][1] * 2)
    tensor = TensorEntry("w", (512, 1), gguf.GGMLQuantizationType.IQ2_XXS, 0, len(data))
    with pytest.raises(ValueError, match="cannot fold a factor into IQ2_XXS blocks exactly"):
        scale_rows(data, tensor, {0: 2.0})


# ---- bake bookkeeping and refusals -------------------------------------------------------------------------

def test_bake_records_what_it_baked_and_refuses_to_bake_it_twice(tiny_q8, tmp_path):
    profile = profile_for("ffn")
    baked = bake(tiny_q8, profile, tmp_path / "baked.gguf", strength=0.5).target
    layout = scan(baked)
    assert '"profile":"ffn-export","strength":0.5' in layout.value("austeer.baked")
    source, output = scan(tiny_q8), layout
    changed = {t.name for t in source.tensors
               if tiny_q8.read_bytes()[source.data_offset + t.offset:][: t.nbytes]
               != baked.read_bytes()[output.data_offset + t.offset:][: t.nbytes]}
    assert changed == {f"blk.{layer}.ffn_down.weight" for layer in range(3)}
    with pytest.raises(ValueError, match="already baked"):
        bake(baked, profile, tmp_path / "twice.gguf")


def test_residual_units_and_foreign_profiles_are_refused(tiny_f32, tmp_path):
    residual = profile_for("layer")
    with pytest.raises(ValueError, match="'layer' .* units, which no weight can express"):
        bake(tiny_f32, residual, tmp_path / "b.gguf")
    with pytest.raises(ValueError, match="cannot express: steer them at run time"):
        export_lora(tiny_f32, residual, tmp_path / "a.gguf")
    mixed = Profile("mixed", 2.0, profile_for("attn").units + residual.units[:2])
    report = export_lora(tiny_f32, mixed, tmp_path / "a.gguf", skip_layer_units=True)
    assert report.skipped_layer_units == 2
    other_model = write_tiny_llama(tmp_path / "other.gguf", config=TinyConfig(n_ff=96))
    foreign = replace(profile_for("ffn"), model=ModelFile.open(other_model).fingerprint)
    with pytest.raises(ValueError, match="made for another model"):
        bake(tiny_f32, foreign, tmp_path / "c.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "other.gguf"]


# ---- CAA control vector ------------------------------------------------------------------------------------

def test_control_vector_matches_numpy_and_llama_cpp_applies_it(tiny_f32, tmp_path):
    words = ["the cat is", "a dog was", "I like this", "you love the", "it was a", "this day is"]
    pairs = [Pair(w, " very good happy", " not bad sad") for w in words] + \
        [Pair(w + " and", " yes", " no") for w in words]
    vector = compute_control_vector(tiny_f32, pairs, progress=False, n_threads=THREADS)
    path = write_control_vector(vector, tmp_path / "cvec.gguf")
    loaded = read_control_vector(path)
    assert loaded.layers == [1, 2] and loaded.model_hint == "llama"

    reference = ReferenceModel(tiny_f32)
    llm = open_steered(tiny_f32)
    tokenized = tokenize_pairs(pairs, lambda text: llm.tokenize(text.encode(), add_bos=True, special=True),
                               max_tokens=64).pairs
    for layer in (1, 2):
        differences = [reference.forward(p.positive).activations[("layer", layer)][-1]
                       - reference.forward(p.negative).activations[("layer", layer)][-1] for p in tokenized]
        assert relative_error(loaded.directions[layer], np.mean(differences, axis=0)) < 1e-3

    unsteered = logits_of(llm, TOKENS)
    llm.steering.set_control_vector(loaded, multiplier=2.0)
    steered = logits_of(llm, TOKENS)
    expected = reference.forward(TOKENS, residual_add={layer: 2.0 * loaded.directions[layer] for layer in (1, 2)})
    assert relative_error(steered, expected.logits) < 2e-4 < relative_error(steered, unsteered)
    llm.steering.set_control_vector(None)
    assert np.array_equal(logits_of(llm, TOKENS), unsteered)


def test_control_vector_files_are_checked(tmp_path, tiny_f32):
    with pytest.raises(ValueError, match="not a control-vector GGUF"):
        read_control_vector(tiny_f32)
    vector = ControlVector({1: np.ones(32, dtype=np.float32)}, "llama")
    llm = open_steered(tiny_f32)
    with pytest.raises(ValueError, match="does not fit this model"):
        llm.steering.set_control_vector(vector)


def test_a_profile_can_carry_a_control_vector_applied_by_the_same_toggle(tiny_f32, tmp_path):
    from austeer_gguf.formats.embedded import embed_profiles, read_profiles

    rng = np.random.default_rng(4)
    vector = ControlVector({layer: rng.standard_normal(64).astype(np.float32) * 0.5 for layer in (1, 2)}, "llama")
    units = profile_for("attn")
    both = Profile("both", units.alpha, units.units, control=vector)
    assert read_profile(profile_json(both)) == both
    assert read_profiles(embed_profiles(tiny_f32, [both], tmp_path / "m.gguf")) == {"both": both}

    reference = ReferenceModel(tiny_f32)
    llm = open_steered(tiny_f32, profile=both)
    llm.steering.strength = 0.5
    from reference import steer_of

    expected = reference.forward(TOKENS, steer_of(both, 0.5),
                                 residual_add={layer: 0.5 * vector.directions[layer] for layer in (1, 2)}).logits
    steered = logits_of(llm, TOKENS)
    assert relative_error(steered, expected) < 2e-4
    llm.steering.disable()  # the toggle switches the vector off too
    assert relative_error(logits_of(llm, TOKENS), reference.forward(TOKENS).logits) < 2e-4
    for export in (lambda: bake(tiny_f32, both, tmp_path / "b.gguf"),
                   lambda: export_lora(tiny_f32, both, tmp_path / "l.gguf")):
        with pytest.raises(ValueError, match="carries a control vector"):
            export()
