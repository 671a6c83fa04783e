"""Captured last-token activations against the NumPy reference, for every site and layer."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf.localization.capture import ActivationCapture
from austeer_gguf.localization.pairs import TokenPair
from austeer_gguf.sites import SITES

from conftest import relative_error
from reference import ReferenceModel

# Relative L2 error of one activation vector. The typical error is 1e-7 (every rounding emulated); a value
# tipped across an F16 or Q8_0 rounding boundary by float32-level differences moves a vector by up to 4e-4
# (F32 weights) or 1e-2 (Q8_0 weights, where a whole block of 32 inputs is re-scaled). So: the median must
# be tiny, and no vector may be off by more than the rare-flip bound. A wrong row, layer or site is off by ~1.
MEDIAN_TOLERANCE = 1e-5
MAX_TOLERANCE = {"F32": 1e-3, "Q8_0": 3e-2}


def random_pairs(n: int, seed: int) -> list[TokenPair]:
    rng = np.random.default_rng(seed)

    def tokens(count: int) -> list[int]:
        return [int(t) for t in rng.integers(3, 300, count)]

    # Shared prefixes of 0-20 tokens (0: the two texts differ from the first token), tails of 1-6.
    return [TokenPair(tokens(int(rng.integers(0, 21))), tokens(int(rng.integers(1, 7))),
                      tokens(int(rng.integers(1, 7)))) for _ in range(n)]


@pytest.fixture(params=["F32", "Q8_0"])
def tiny(request, tiny_f32, tiny_q8):
    path = tiny_f32 if request.param == "F32" else tiny_q8
    return request.param, path, ReferenceModel(path)


class Errors:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.errors: list[tuple[float, str]] = []

    def add(self, actual: np.ndarray, expected: np.ndarray, what: str) -> None:
        self.errors.append((relative_error(actual, expected), what))

    def check(self) -> None:
        values = np.array([error for error, _ in self.errors])
        worst, where = max(self.errors)
        assert np.median(values) < MEDIAN_TOLERANCE, f"median relative error {np.median(values):.2e}"
        assert worst < MAX_TOLERANCE[self.kind], f"{where}: relative error {worst:.2e}"


@pytest.mark.parametrize("share_prefix", [True, False])
def test_pair_capture_matches_the_reference(tiny, share_prefix):
    kind, path, reference = tiny
    pairs = random_pairs(11, seed=4)
    # A small batch budget forces several groups per call.
    with ActivationCapture(path, batch_tokens=64, n_ctx=256, n_seq_max=8, n_threads=2) as capture:
        groups = list(capture.pairs(pairs, SITES, share_prefix=share_prefix))
    assert len(groups) > 1
    assert sorted(i for g in groups for i in g.indices) == list(range(len(pairs)))
    errors = Errors(kind)
    for group in groups:
        for slot, index in enumerate(group.indices):
            for side, tokens in (("positive", pairs[index].positive), ("negative", pairs[index].negative)):
                expected = reference.forward(tokens).activations
                captured = getattr(group, side)
                for site in SITES:
                    for layer in range(reference.n_layers):
                        errors.add(captured[site][slot, layer], expected[(site, layer)][-1],
                                   f"pair {index} {side} {site} layer {layer}")
    errors.check()


@pytest.mark.parametrize("share_prefix", [True, False])
def test_pooled_capture_is_the_mean_over_each_tail_and_keeps_the_last_token(tiny, share_prefix):
    """Position-pooled momentum's input: per text, the mean of every position after the prefix the two texts
    share (the reference averages its own per-position activations), beside the last token as before."""
    kind, path, reference = tiny
    pairs = random_pairs(9, seed=6)
    with ActivationCapture(path, batch_tokens=64, n_ctx=256, n_seq_max=8, n_threads=2) as capture:
        groups = list(capture.pairs(pairs, SITES, share_prefix=share_prefix, pooled=True))
    assert len(groups) > 1
    errors = Errors(kind)
    for group in groups:
        for slot, index in enumerate(group.indices):
            pair = pairs[index]
            for side, tokens in (("positive", pair.positive), ("negative", pair.negative)):
                expected = reference.forward(tokens).activations
                for site in SITES:
                    for layer in range(reference.n_layers):
                        where = f"pair {index} {side} {site} layer {layer}"
                        errors.add(getattr(group, f"{side}_mean")[site][slot, layer],
                                   expected[(site, layer)][len(pair.shared):].mean(axis=0), f"mean of {where}")
                        errors.add(getattr(group, side)[site][slot, layer], expected[(site, layer)][-1],
                                   f"last of {where}")
    errors.check()


def test_pairs_that_share_a_preamble_share_its_cells_and_match_the_reference(tiny):
    """Consecutive pairs with a common preamble (a chat template, an instruction) hold it once per group."""
    kind, path, reference = tiny
    rng = np.random.default_rng(5)
    preamble = [int(t) for t in rng.integers(3, 300, 24)]
    pairs = [TokenPair(preamble + [int(t) for t in rng.integers(3, 300, int(rng.integers(0, 5)))],
                       [int(t) for t in rng.integers(3, 300, 2)], [int(t) for t in rng.integers(3, 300, 3)])
             for _ in range(6)]
    with ActivationCapture(path, batch_tokens=128, n_ctx=256, n_seq_max=16, group_cells=128, n_threads=2) as capture:
        groups = list(capture.pairs(pairs, SITES))
        held = [len(group.cells) for group in capture._decoder.groups(
            [t for p in pairs for t in (p.positive, p.negative)], bundle=2)]
    assert sum(held) < sum(len(p.positive) + len(p.negative) - len(p.shared) for p in pairs) - 24
    errors = Errors(kind)
    for group in groups:
        for slot, index in enumerate(group.indices):
            for side, tokens in (("positive", pairs[index].positive), ("negative", pairs[index].negative)):
                expected = reference.forward(tokens).activations
                for site in SITES:
                    for layer in range(reference.n_layers):
                        errors.add(getattr(group, side)[site][slot, layer], expected[(site, layer)][-1],
                                   f"pair {index} {side} {site} layer {layer}")
    errors.check()


def test_last_tokens_of_sequences_of_different_lengths(tiny):
    kind, path, reference = tiny
    rng = np.random.default_rng(2)
    sequences = [[int(t) for t in rng.integers(3, 300, length)] for length in (1, 17, 5, 30, 2, 9)]
    with ActivationCapture(path, batch_tokens=40, n_ctx=128, n_seq_max=4, n_threads=2) as capture:
        captured = capture.last_tokens(sequences, ["attn", "layer"])
    errors = Errors(kind)
    for index, tokens in enumerate(sequences):
        expected = reference.forward(tokens).activations
        for site in ("attn", "layer"):
            assert captured[site].shape == (len(sequences), reference.n_layers, capture.shape.widths[site])
            for layer in range(reference.n_layers):
                errors.add(captured[site][index, layer], expected[(site, layer)][-1],
                           f"sequence {index} {site} layer {layer}")
    errors.check()


def test_a_pair_too_long_for_one_decode_is_refused(tiny_f32):
    with ActivationCapture(tiny_f32, batch_tokens=16, n_ctx=64, n_threads=2) as capture:
        too_long = TokenPair(list(range(3, 20)), [5], [6])
        with pytest.raises(ValueError, match="at most 8 fit"):
            list(capture.pairs([too_long], ["attn"]))


def test_only_weights_outside_the_precision_measurement_get_a_warning(tiny_q8, tmp_path):
    import warnings

    from austeer_gguf.localization.capture import PairCapture
    from austeer_gguf.localization.pairs import Pair

    from tiny_model import write_tiny_llama

    pairs = [Pair("Tell me.", " yes", " no")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Q8_0 was measured: no warning
        with PairCapture(tiny_q8, pairs, ("attn",), n_threads=1, progress=False):
            pass
    q4_0 = write_tiny_llama(tmp_path / "tiny-q4_0.gguf", weight_type="Q4_0")
    with (pytest.warns(UserWarning, match=r"Q4_0 weights.*--weights f16"),
          PairCapture(q4_0, pairs, ("attn",), n_threads=1, progress=False)):
        pass
