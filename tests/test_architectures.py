"""Every architecture of tests/architectures.py (ten graphs: dense, post-norm, fused weights, biases, scaled
residuals, two mixtures of experts): llama.cpp loads it, every site of every layer is in its compute graph,
steering acts on its unit and on nothing computed before it, baked and LoRA-exported profiles give the runtime's
logits or are refused with the reason, and localization and embed work on it."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import InputError, Profile, SteeringSetting, Unit, sites
from austeer_gguf.engine.decoder import forward
from austeer_gguf.engine.hooked import HookedLlama
from austeer_gguf.exports.bake import bake
from austeer_gguf.exports.lora import export_lora
from austeer_gguf.formats.embedded import embed_profiles, read_profiles
from austeer_gguf.localization.capture import ActivationCapture
from austeer_gguf.localization.localize import localize
from austeer_gguf.localization.pairs import Pair

from architectures import BLUEPRINTS, N_EMBD, N_LAYERS, write_architecture
from conftest import THREADS, logits_of, open_plain, open_steered, relative_error

TOKENS = [262, 270, 290, 300, 265, 300, 280, 3, 41, 99, 150, 284, 291, 276, 277]
# Where each graph's FFN output meets the residual: "plain" = l_out is the residual plus the FFN output as is.
POST_NORM = {"gemma2", "olmo2"}  # a norm between the FFN output and the residual add
RESIDUAL_SCALE = {"granite": 0.5}  # the FFN output is scaled before the add


@pytest.fixture(scope="module", params=list(BLUEPRINTS))
def arch(request, tmp_path_factory):
    name = request.param
    return name, write_architecture(tmp_path_factory.mktemp(name) / f"{name}.gguf", name)


def captured(path, profile: Profile | None = None) -> dict[str, np.ndarray]:
    """Last-token activations of TOKENS at every site and layer: site -> [layers, width]."""
    with ActivationCapture(path, batch_tokens=64, n_ctx=128, n_threads=THREADS) as capture:
        setting = SteeringSetting.make(capture.shape, profiles=[(profile, 1.0)]) if profile else None
        values = capture.last_tokens([TOKENS], sites.names(), **({"setting": setting} if setting else {}))
        return {site: v[0] for site, v in values.items()}


def test_llama_cpp_loads_it_and_every_site_of_every_layer_is_in_its_graph(arch):
    name, path = arch
    llm = HookedLlama(path, n_ctx=128, n_threads=THREADS, verbose=False)
    assert llm.shape.missing == {}
    assert llm.shape.widths == {"attn": N_EMBD, "ffn": N_EMBD, "layer": N_EMBD}
    assert llm.shape.experts == (4 if BLUEPRINTS[name].experts else 0)
    assert llm.shape.tensor("ffn", 1) == ("ffn_moe_out-1" if BLUEPRINTS[name].experts else "ffn_out-1")
    before = captured(path)
    # The ffn site is the FFN's output, not the residual sum llama.cpp also names ffn_out in some graphs.
    for layer in range(N_LAYERS):
        assert not np.allclose(before["ffn"][layer], before["layer"][layer], atol=1e-3)


@pytest.mark.parametrize("site", sites.SITES)
def test_steering_scales_its_unit_and_leaves_everything_computed_before_it(arch, site):
    name, path = arch
    dim, factor = 5, 3.0
    profile = Profile("one", 2.0, [Unit(1, site, dim, 1.0)])  # factor 1 + 2 * 1
    before, after = captured(path), captured(path, profile)
    for other in sites.SITES:  # layer 0, and the sites of layer 1 before this one, are untouched
        np.testing.assert_array_equal(after[other][0], before[other][0])
        if sites.code(other) < sites.code(site):
            np.testing.assert_array_equal(after[other][1], before[other][1])
    expected = before[site][1].copy()
    expected[dim] *= factor
    np.testing.assert_allclose(after[site][1], expected, rtol=1e-6, atol=1e-6)
    if site == "ffn" and name not in POST_NORM:  # the steered FFN output reaches the residual as it is
        change = after["layer"][1] - before["layer"][1]
        scale = RESIDUAL_SCALE.get(name, 1.0)
        assert change[dim] == pytest.approx(scale * (factor - 1) * before["ffn"][1][dim], rel=1e-4, abs=1e-5)
        assert np.abs(np.delete(change, dim)).max() < 1e-5
    assert not np.allclose(after["layer"][2], before["layer"][2])  # and the layers after it
    llm = HookedLlama(path, n_ctx=128, n_threads=THREADS, verbose=False)
    unsteered, steered = (forward(llm, [TOKENS], [range(len(TOKENS))], setting=setting)[0]
                          for setting in (None, SteeringSetting.make(llm.shape, profiles=[(profile, 1.0)])))
    assert relative_error(steered, unsteered) > 1e-3


def spread(site: str, seed: int = 1) -> Profile:
    rng = np.random.default_rng(seed)
    return Profile(f"{site}-spread", 3.0, [Unit(layer, site, int(dim), float(rng.choice([-0.8, 0.5, 0.9])))
                                          for layer in range(N_LAYERS) for dim in rng.choice(N_EMBD, 4, replace=False)])


@pytest.mark.parametrize("site", ["attn", "ffn"])
def test_bake_and_lora_give_the_runtime_logits_or_say_why_not(arch, site, tmp_path):
    name, path = arch
    blueprint = BLUEPRINTS[name]
    profile = spread(site)
    runtime = logits_of(open_steered(path, profile=profile), TOKENS)
    assert relative_error(runtime, logits_of(open_plain(path), TOKENS)) > 1e-2
    ffn_bias = site == "ffn" and blueprint.out_bias
    if ffn_bias:
        with pytest.raises(InputError, match="blk.0.ffn_down.bias exists: the FFN output includes a bias"):
            bake(path, profile, tmp_path / "baked.gguf")
    else:
        baked = bake(path, profile, tmp_path / "baked.gguf").target
        assert relative_error(logits_of(open_plain(baked), TOKENS), runtime) < 2e-4
    if site == "ffn" and blueprint.experts:
        with pytest.raises(InputError, match="mixture of 4 experts: a LoRA adapter cannot scale one output row"):
            export_lora(path, profile, tmp_path / "adapter.gguf")
    elif ffn_bias:
        with pytest.raises(InputError, match="blk.0.ffn_down.bias exists: the output includes a bias"):
            export_lora(path, profile, tmp_path / "adapter.gguf")
    else:
        adapter = export_lora(path, profile, tmp_path / "adapter.gguf").target
        lora = logits_of(open_plain(path, lora_path=str(adapter), lora_scale=1.0), TOKENS)
        assert relative_error(lora, runtime) < 2e-4


def test_localization_and_embed_work_on_it(arch, tmp_path):
    _, path = arch
    pairs = [Pair(prompt, " good", " bad") for prompt in ("the cat is", "a dog was", "I like this", "you hate it")]
    profile = localize(path, pairs, sites="all", k=12, alpha=4.0, name="mood", n_threads=THREADS).profile
    assert len(profile.units) == 12 and set(profile.sites) <= set(sites.SITES)
    embedded = embed_profiles(path, [profile], tmp_path / "with-profile.gguf")
    assert read_profiles(embedded) == {"mood": profile}
    llm = open_steered(embedded, profile="mood")
    assert relative_error(logits_of(llm, TOKENS), logits_of(open_plain(path), TOKENS)) > 0


def test_inspect_names_each_sites_graph_tensor(tmp_path):
    import subprocess
    import sys

    path = write_architecture(tmp_path / "mixtral.gguf", "mixtral")
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "inspect", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "graph tensors: attn = kqv_out-L, ffn = ffn_moe_out-L, layer = l_out-L (4 experts per FFN)" in done.stdout


def test_build_measures_a_behaviour_on_a_mixture_of_experts_and_writes_its_card(tmp_path):
    """`build` on another architecture than the built-in models': every step runs on the MoE graph (its FFN
    site is the experts' summed output) and the card says what was measured."""
    import json
    import subprocess
    import sys

    from austeer_gguf.formats.model_file import ModelFile
    from austeer_gguf.formats.profiles import read_profile

    path = write_architecture(tmp_path / "qwen3moe.gguf", "qwen3moe")
    output = tmp_path / "moe.positive.json"
    done = subprocess.run([sys.executable, "-m", "austeer_gguf", "build", str(path), "positive", "--minutes", "1",
                           "--threads", str(THREADS), "-o", str(output)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    card = output.with_suffix(".md").read_text()
    assert card.startswith("# positive on qwen3moe.gguf") and "## Test" in card and "| caa-range" in card
    record = json.loads(output.with_suffix(".build.json").read_text())
    assert record["build"]["pairs"] > 0 and record["build"]["test_items"]["unsteered"]
    if output.exists():
        model = ModelFile.open(path)
        read_profile(output).check_model(model.shape, model.fingerprint)
    else:  # the winner may steer nothing on random weights; the build says so
        assert "no profile written" in done.stderr
