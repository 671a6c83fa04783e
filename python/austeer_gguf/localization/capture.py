"""Last-token activations of the site tensors at every layer, many sequences per decode.

The engine's decoder (`engine.decoder.Decoder`) does the decoding: the two texts of a pair go into one group,
one after the other, so their shared prompt is held in shared KV cells and computed once; the native callback
records the last position of each text at every layer of the chosen sites. Groups are kept small (a few
hundred cells): llama.cpp attends densely over every used cell of the unified cache, so small groups keep
attention cheap (measured on SmolLM2, float32, 2 threads: 256 cells ran 1.5x faster than 1024).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from .. import conversation
from ..engine import limits
from ..engine.decoder import Decoder
from ..engine.hooked import HookedLlama
from ..errors import InputError
from ..formats.model_file import ModelFile
from ..setting import OFF, SteeringSetting
from .pairs import Pair, TokenPair, tokenize_pairs
from .weights import MEASURED_TYPES

MAX_PAIR_TOKENS = 2048  # one pair's text; its two tails go through one decode


@dataclass(frozen=True)
class PairActivations:
    indices: list[int]  # positions of these pairs in the input sequence
    positive: dict[str, np.ndarray]  # site -> [pairs, layers, width]
    negative: dict[str, np.ndarray]
    # With pooling: the mean over each text's own tail (its positions after the prefix both texts share)
    positive_mean: dict[str, np.ndarray] | None = None
    negative_mean: dict[str, np.ndarray] | None = None


class ActivationCapture:
    """A model opened for capture (unsteered unless a capture is given a setting).

    `batch_tokens` bounds the tokens of one decode; `group_cells` the KV cells a group of pairs may fill (a
    pair larger than that gets a group of its own). Other keywords (rpc_servers, n_gpu_layers, ...) go to
    `HookedLlama`.
    """

    def __init__(self, model_path: str | Path | ModelFile, *, batch_tokens: int = 1024, group_cells: int = 256,
                 n_ctx: int = 4096, n_seq_max: int = 64, n_threads: int | None = None,
                 verbose: bool = False, **llama_kwargs: Any) -> None:
        model = model_path if isinstance(model_path, ModelFile) else ModelFile.open(model_path)
        threads = n_threads or os.cpu_count() or 1
        n_ctx = min(n_ctx, model.context_length or n_ctx)
        if not 0 < batch_tokens <= n_ctx:
            raise InputError(f"a capture batch of {batch_tokens} tokens does not fit the {n_ctx}-token context: "
                             f"pairs may have at most {n_ctx // 2} tokens")
        self.batch_tokens = batch_tokens
        self.group_cells = min(group_cells, n_ctx)
        self.llm = HookedLlama(model.path, model_file=model, n_ctx=n_ctx, n_batch=batch_tokens,
                               n_ubatch=batch_tokens, n_threads=threads, n_threads_batch=threads, swa_full=True,
                               verbose=verbose, sequences=min(n_seq_max, batch_tokens), **llama_kwargs)
        self.shape = self.llm.shape
        self._decoder = Decoder(self.llm, max_cells=self.group_cells)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        self.llm.close()

    def __enter__(self) -> ActivationCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        """As the model's own tokenizer settings say (BOS only where the model adds it)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    @property
    def max_pair_tokens(self) -> int:
        """The longest text a pair may have so that both texts of a pair fit one decode."""
        return self.batch_tokens // 2

    def pairs(self, pairs: Sequence[TokenPair], sites: Sequence[str], *, share_prefix: bool = True,
              setting: SteeringSetting = OFF, pooled: bool = False) -> Iterator[PairActivations]:
        """The activations of both texts of every pair, a group of pairs at a time: at the last token, and with
        `pooled` also the mean over each text's tail."""
        for index, pair in enumerate(pairs):
            cells = len(pair.positive) + len(pair.negative) - (len(pair.shared) if share_prefix else 0)
            if cells > self.batch_tokens:
                raise InputError(f"pair #{index} has {len(pair.positive)}/{len(pair.negative)} tokens; at most "
                                 f"{self.max_pair_tokens} fit (cut pairs with max_tokens)")
        texts = [tokens for pair in pairs for tokens in (pair.positive, pair.negative)]
        for group in self._decoder.groups(texts, bundle=2, share=share_prefix, settings=[setting] * len(texts)):
            indices = [member // 2 for member in group.members[0::2]]
            if not pooled:
                values = self._decoder.capture(group, sites)
                yield PairActivations(indices, {site: v[0::2] for site, v in values.items()},
                                      {site: v[1::2] for site, v in values.items()})
                continue
            starts = [len(pairs[member // 2].shared) for member in group.members]
            values, means = self._decoder.capture_pooled(group, sites, starts)
            yield PairActivations(indices, {site: v[0::2] for site, v in values.items()},
                                  {site: v[1::2] for site, v in values.items()},
                                  {site: v[0::2] for site, v in means.items()},
                                  {site: v[1::2] for site, v in means.items()})

    def last_tokens(self, sequences: Sequence[list[int]], sites: Sequence[str], *,
                    setting: SteeringSetting = OFF) -> dict[str, np.ndarray]:
        """Last-token activations of whole sequences, computed under `setting`: site -> [sequences, layers, width]."""
        groups = self._decoder.groups(sequences, share=False, settings=[setting] * len(sequences))
        parts = [self._decoder.capture(group, sites) for group in groups]
        return {site: np.concatenate([part[site] for part in parts]) for site in sites}


# ---- one capture pass over contrastive pairs, feeding reducers ------------------------------------------


class Reducer(Protocol):
    """Consumes the groups of one capture pass (see `reducers.py`)."""

    sites: tuple[str, ...]

    def add_group(self, group: PairActivations) -> None: ...


def warn_if_unmeasured(model: ModelFile) -> None:
    import warnings

    types = {tensor.ggml_type.name for tensor in model.layout.tensors if len(tensor.shape) >= 2}
    unmeasured = sorted(types - MEASURED_TYPES)
    if unmeasured:
        warnings.warn(f"{model.path} has {', '.join(unmeasured)} weights, whose effect on localization was not "
                      "measured (Q8_0 to Q4_1 files find 91-94% of the float model's top-100 units: README). Localize "
                      "with --weights f16 (in Python: on a copy written by `dequantize`) for units closer to the "
                      "float model.",
                      stacklevel=4)


class PairCapture:
    """One capture pass over contrastive pairs: last-token activations of both texts of every pair.

    Open it with `with`; then `shape`, `truncated` (pairs cut to max_tokens) and `skipped` (pairs whose sides
    render identically) are known, and `feed(*reducers)` runs the pass, giving every group of pairs to every
    reducer; `n_pairs` and `seconds` describe the pass afterwards.
    """

    def __init__(self, model: str | Path | ModelFile, pairs: Sequence[Pair], site_names: Sequence[str], *,
                 chat: bool = False, max_tokens: int = 512, share_prefix: bool = True, batch_tokens: int | None = None,
                 n_threads: int | None = None, progress: bool = True, description: str = "capturing",
                 pooled: bool = False) -> None:
        limits.check_count(max_tokens, "max_tokens", 1, MAX_PAIR_TOKENS, "one pair's text is decoded at once")
        self.model = model if isinstance(model, ModelFile) else ModelFile.open(model)
        self.pairs = list(pairs)
        self.sites = tuple(site_names)
        self.chat = chat
        self.max_tokens = max_tokens
        self.share_prefix = share_prefix
        self.pooled = pooled  # also the mean over each text's tail (`PairActivations.positive_mean`)
        self.batch_tokens = batch_tokens or 2 * max_tokens
        self.n_threads = limits.check_threads(n_threads)
        self.progress = progress
        self.description = description
        self.n_pairs = 0
        self.seconds = 0.0
        self._capture: ActivationCapture | None = None
        self._tokenized: list[TokenPair] = []

    def __enter__(self) -> PairCapture:
        warn_if_unmeasured(self.model)
        self._capture = ActivationCapture(self.model, batch_tokens=self.batch_tokens, n_threads=self.n_threads)
        try:
            render = conversation.user_turn_renderer(self._capture.llm) if self.chat else None
            tokenized = tokenize_pairs(self.pairs, self._capture.tokenize, render_prompt=render,
                                       render_messages=conversation.renderer(self._capture.llm),
                                       max_tokens=min(self.max_tokens, self._capture.max_pair_tokens))
        except BaseException:
            self._capture.close()
            raise
        if not tokenized.pairs:
            self._capture.close()
            raise InputError("every pair renders identically on both sides: nothing to compare")
        self._tokenized = tokenized.pairs
        self.truncated, self.skipped = tokenized.truncated, tokenized.identical + tokenized.uneven
        self.shape = self._capture.shape
        return self

    def __exit__(self, *exc: object) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None

    def feed(self, *reducers: Reducer, seconds: float | None = None) -> None:
        """Run the pass; every reducer gets every group (its `sites` must be among the captured ones). With
        `seconds`, the pass stops at the first group that ends after that long (`n_pairs` says how many were
        fed: the first ones, in order)."""
        assert self._capture is not None, "open the PairCapture with `with` first"
        missing = {site for reducer in reducers for site in reducer.sites} - set(self.sites)
        if missing:
            raise ValueError(f"a reducer needs sites {sorted(missing)} that this pass does not capture")
        start = time.perf_counter()
        with tqdm(total=len(self._tokenized), unit="pair", desc=self.description, disable=not self.progress) as bar:
            for group in self._capture.pairs(self._tokenized, self.sites, share_prefix=self.share_prefix,
                                                    pooled=self.pooled):
                for reducer in reducers:
                    reducer.add_group(group)
                self.n_pairs += len(group.indices)
                bar.update(len(group.indices))
                if seconds is not None and time.perf_counter() - start >= seconds:
                    break
        self.seconds += time.perf_counter() - start
