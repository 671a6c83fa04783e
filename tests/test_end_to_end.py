"""The main job on SmolLM2: localize on the float copy, embed into the Q4_1 file, steer with SteeredLlama."""

from __future__ import annotations

import numpy as np

from austeer_gguf import SteeredLlama, datasets, models
from austeer_gguf.evaluation.scoring import answer_logprob
from austeer_gguf.formats.embedded import embed_profiles
from austeer_gguf.formats.model_file import ModelFile
from austeer_gguf.localization.localize import localize
from austeer_gguf.localization.pairs import load_pairs

from conftest import THREADS


def test_held_out_margin_rises_with_the_embedded_profile(smollm2, tmp_path):
    float_model = models.float_copy("smollm2")
    result = localize(float_model, datasets.pairs_path("polite", "train"), sites="attn", k=20, alpha=10.0,
                      name="polite", n_threads=THREADS, progress=False)
    assert result.n_pairs == 170 and result.profile.k == 20
    assert result.profile.model == ModelFile.open(smollm2).fingerprint  # float and quantized files share it

    steered_path = embed_profiles(smollm2, [result.profile], tmp_path / "smollm2.steered.gguf")
    llm = SteeredLlama(str(steered_path), profile="polite", n_ctx=512, logits_all=True, verbose=False,
                       n_threads=THREADS, n_threads_batch=THREADS)
    test_pairs = load_pairs(datasets.pairs_path("polite", "test"))

    def mean_margin() -> float:
        return float(np.mean([answer_logprob(llm, p.prompt, p.positive) - answer_logprob(llm, p.prompt, p.negative)
                              for p in test_pairs]))

    llm.steering.disable()
    off = mean_margin()
    llm.steering.enable()
    on = mean_margin()
    assert on > off + 1.0, f"margin off {off:.2f}, on {on:.2f}"


def test_the_demo_embeds_the_shipped_detox_profile_and_flips_the_toggle(smollm2):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "austeer_gguf.apps.demo", "--limit", "12", "--harmless", "3",
                             "--show", "1", "--threads", str(THREADS)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "profile 'detox'" in result.stdout and "[detox off]" in result.stdout and "[detox on ]" in result.stdout
    assert "Held-out detox items (12, greedy" in result.stdout and "95% CI" in result.stdout
    assert "rude (rudeness judge)" in result.stdout and "offensive (profanity detector)" in result.stdout
