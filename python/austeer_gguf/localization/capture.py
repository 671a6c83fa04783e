"""Last-token activations of the site tensors at every layer, many sequences per decode.

The two texts of a pair share their prompt: the shared prefix is decoded once on one sequence, copied to a
second sequence in the KV cache (`llama_memory_seq_cp`), and only the two tails are decoded after it, with
the native callback recording the last token of each tail. Groups of pairs go through one decode per
phase, on distinct sequence ids of a unified KV cache (which keeps the batch order, so rows are known).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import llama_cpp
import numpy as np
from tqdm import tqdm

from .. import sites
from ..errors import InputError
from ..ggufio.layout import scan
from ..runtime import limits
from ..runtime.steered_llama import SteeredLlama
from .pairs import Pair, TokenPair, chat_renderer, conversation_renderer, tokenize_pairs
from .weights import MEASURED_TYPES

MAX_PAIR_TOKENS = 2048  # one pair's text; its two tails go through one decode


@dataclass(frozen=True)
class PairActivations:
    indices: list[int]  # positions of these pairs in the input sequence
    positive: dict[str, np.ndarray]  # site -> [pairs, layers, width]
    negative: dict[str, np.ndarray]


class ActivationCapture:
    """A model opened for capture.

    `batch_tokens` bounds the tokens of one decode. `group_cells` bounds the KV cells a group of pairs may
    fill: llama.cpp attends densely over every used cell of the unified cache (other sequences masked), so
    small groups keep attention cheap; measured on SmolLM2 (float32, 2 threads), 256 cells ran 1.5x faster
    than 1024. A pair larger than the budget gets a group of its own. Other keywords (rpc_servers,
    n_gpu_layers, ...) go to `SteeredLlama`.
    """

    def __init__(self, model_path: str | Path, *, batch_tokens: int = 1024, group_cells: int = 256,
                 n_ctx: int = 4096, n_seq_max: int = 64, n_threads: int | None = None,
                 verbose: bool = False, **llama_kwargs: Any) -> None:
        threads = n_threads or os.cpu_count() or 1
        n_ctx = min(n_ctx, limits.context_length(scan(model_path).values()) or n_ctx)
        if not 0 < batch_tokens <= n_ctx:
            raise InputError(f"a capture batch of {batch_tokens} tokens does not fit the {n_ctx}-token context: "
                             f"pairs may have at most {n_ctx // 2} tokens")
        self.batch_tokens = batch_tokens
        self.group_cells = min(group_cells, n_ctx)
        self.n_ctx = n_ctx
        self.n_seq_max = min(n_seq_max, batch_tokens)  # llama.cpp aborts when n_seq_max > n_batch
        self.llm = SteeredLlama(
            str(model_path), n_ctx=n_ctx, n_batch=batch_tokens, n_ubatch=batch_tokens, n_threads=threads,
            n_threads_batch=threads, swa_full=True, verbose=verbose,
            _context_overrides={"n_seq_max": self.n_seq_max, "kv_unified": True}, **llama_kwargs,
        )
        self.shape = self.llm.shape
        self._state = self.llm._native_state
        self._batch = llama_cpp.llama_batch_init(batch_tokens, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self.llm.ctx)

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
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
        """The longest text a pair may have so that both tails of a pair fit one decode."""
        return self.batch_tokens // 2

    # ---- pairs ------------------------------------------------------------------------------------------

    def pairs(self, pairs: Sequence[TokenPair], sites: Sequence[str], *,
              share_prefix: bool = True) -> Iterator[PairActivations]:
        for group in self._groups(pairs, share_prefix):
            yield self._capture_group(pairs, group, sites, share_prefix)

    def _groups(self, pairs: Sequence[TokenPair], share_prefix: bool) -> Iterator[list[int]]:
        group: list[int] = []
        prefix_tokens = tail_tokens = cells = 0
        for index, pair in enumerate(pairs):
            prefix, tails = self._cost(pair, share_prefix)
            if max(prefix, tails) > self.batch_tokens or prefix + tails > self.n_ctx:
                raise InputError(f"pair #{index} has {len(pair.positive)}/{len(pair.negative)} tokens; at most "
                                 f"{self.max_pair_tokens} fit (cut pairs with max_tokens)")
            if group and (prefix_tokens + prefix > self.batch_tokens or tail_tokens + tails > self.batch_tokens
                          or cells + prefix + tails > self.group_cells or 2 * len(group) + 2 > self.n_seq_max):
                yield group
                group, prefix_tokens, tail_tokens, cells = [], 0, 0, 0
            group.append(index)
            prefix_tokens, tail_tokens, cells = prefix_tokens + prefix, tail_tokens + tails, cells + prefix + tails
        if group:
            yield group

    @staticmethod
    def _cost(pair: TokenPair, share_prefix: bool) -> tuple[int, int]:
        if share_prefix:
            return len(pair.shared), len(pair.positive_tail) + len(pair.negative_tail)
        return 0, len(pair.positive) + len(pair.negative)

    def _capture_group(self, pairs: Sequence[TokenPair], group: list[int], sites: Sequence[str],
                       share_prefix: bool) -> PairActivations:
        llama_cpp.llama_memory_clear(self._memory, False)
        tails: list[tuple[int, list[int], int]] = []
        if share_prefix:
            prefixes = [(2 * slot, pairs[i].shared, 0) for slot, i in enumerate(group) if pairs[i].shared]
            if prefixes:
                self._fill(prefixes, outputs=False)
                self._decode()
                for seq, _, _ in prefixes:
                    llama_cpp.llama_memory_seq_cp(self._memory, seq, seq + 1, -1, -1)
            for slot, i in enumerate(group):
                start = len(pairs[i].shared)
                tails += [(2 * slot, pairs[i].positive_tail, start), (2 * slot + 1, pairs[i].negative_tail, start)]
        else:
            for slot, i in enumerate(group):
                tails += [(2 * slot, pairs[i].positive, 0), (2 * slot + 1, pairs[i].negative, 0)]
        rows = self._fill(tails, outputs=True)
        values = self._capture(rows, sites)
        return PairActivations(
            indices=list(group),
            positive={site: v[0::2] for site, v in values.items()},
            negative={site: v[1::2] for site, v in values.items()},
        )

    # ---- plain sequences --------------------------------------------------------------------------------

    def last_tokens(self, sequences: Sequence[list[int]], sites: Sequence[str]) -> dict[str, np.ndarray]:
        """Last-token activations of whole sequences: site -> [sequences, layers, width]."""
        collected: dict[str, list[np.ndarray]] = {site: [] for site in sites}
        start = 0
        while start < len(sequences):
            end, tokens = start, 0
            while end < len(sequences) and (end == start or (tokens + len(sequences[end]) <= self.batch_tokens
                                                             and end - start < self.n_seq_max)):
                tokens += len(sequences[end])
                end += 1
            if tokens > self.batch_tokens:
                raise InputError(f"sequence #{start} has {tokens} tokens; at most {self.batch_tokens} fit")
            llama_cpp.llama_memory_clear(self._memory, False)
            rows = self._fill([(slot, sequences[i], 0) for slot, i in enumerate(range(start, end))], outputs=True)
            for site, values in self._capture(rows, sites).items():
                collected[site].append(values)
            start = end
        return {site: np.concatenate(parts) for site, parts in collected.items()}

    # ---- decoding ---------------------------------------------------------------------------------------

    def _fill(self, entries: list[tuple[int, list[int], int]], *, outputs: bool) -> list[int]:
        """Put (sequence id, tokens, first position) entries in the batch; returns each entry's last row."""
        batch = self._batch
        row, last_rows = 0, []
        for seq, tokens, start in entries:
            if not tokens:
                raise ValueError("an empty sequence has no last token to capture")
            for offset, token in enumerate(tokens):
                batch.token[row] = token
                batch.pos[row] = start + offset
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = seq
                batch.logits[row] = outputs and offset == len(tokens) - 1
                row += 1
            last_rows.append(row - 1)
        batch.n_tokens = row
        return last_rows

    def _decode(self) -> None:
        self.llm.apply_steering()  # captures run under the model's steering setting (off unless set)
        status = llama_cpp.llama_decode(self.llm.ctx, self._batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} (KV cache of {self.n_ctx} cells full?)")

    def _capture(self, rows: list[int], chosen: Sequence[str]) -> dict[str, np.ndarray]:
        widths = [self.shape.widths.get(name, 0) if name in chosen else 0 for name in sites.names()]
        self._state.begin_capture([sites.code(site) for site in chosen], self.shape.n_layers, widths, rows,
                                  int(self._batch.n_tokens))
        try:
            self._decode()
        finally:
            self._state.end_capture()
        values = {}
        for site in chosen:
            captured, filled = self._state.captured(sites.code(site))
            if not filled.all():
                missing = [layer for layer, ok in enumerate(filled) if not ok]
                raise RuntimeError(f"no {site} activations were captured at layers {missing}: this llama.cpp "
                                   "graph does not name its tensors as llama-cpp-python 0.3.36 does")
            values[site] = np.ascontiguousarray(captured.transpose(1, 0, 2))
        return values


# ---- one capture pass over contrastive pairs, feeding reducers ------------------------------------------


class Reducer(Protocol):
    """Consumes the groups of one capture pass (see `reducers.py`)."""

    sites: tuple[str, ...]

    def add_group(self, group: PairActivations) -> None: ...


def warn_if_unmeasured(model_path: str | Path) -> None:
    import warnings

    types = {tensor.ggml_type.name for tensor in scan(model_path).tensors if len(tensor.shape) >= 2}
    unmeasured = sorted(types - MEASURED_TYPES)
    if unmeasured:
        warnings.warn(f"{model_path} has {', '.join(unmeasured)} weights, whose effect on localization was not "
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

    def __init__(self, model_path: str | Path, pairs: Sequence[Pair], site_names: Sequence[str], *, chat: bool = False,
                 max_tokens: int = 512, share_prefix: bool = True, batch_tokens: int | None = None,
                 n_threads: int | None = None, progress: bool = True, description: str = "capturing") -> None:
        limits.check_count(max_tokens, "max_tokens", 1, MAX_PAIR_TOKENS, "one pair's text is decoded at once")
        self.model_path = Path(model_path)
        self.pairs = list(pairs)
        self.sites = tuple(site_names)
        self.chat = chat
        self.max_tokens = max_tokens
        self.share_prefix = share_prefix
        self.batch_tokens = batch_tokens or 2 * max_tokens
        self.n_threads = limits.check_threads(n_threads)
        self.progress = progress
        self.description = description
        self.n_pairs = 0
        self.seconds = 0.0
        self._capture: ActivationCapture | None = None
        self._tokenized: list[TokenPair] = []

    def __enter__(self) -> PairCapture:
        warn_if_unmeasured(self.model_path)
        self._capture = ActivationCapture(self.model_path, batch_tokens=self.batch_tokens, n_threads=self.n_threads)
        try:
            render = chat_renderer(self._capture.llm) if self.chat else None
            tokenized = tokenize_pairs(self.pairs, self._capture.tokenize, render_prompt=render,
                                       render_messages=conversation_renderer(self._capture.llm),
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

    def feed(self, *reducers: Reducer) -> None:
        """Run the pass; every reducer gets every group (its `sites` must be among the captured ones)."""
        assert self._capture is not None, "open the PairCapture with `with` first"
        missing = {site for reducer in reducers for site in reducer.sites} - set(self.sites)
        if missing:
            raise ValueError(f"a reducer needs sites {sorted(missing)} that this pass does not capture")
        start = time.perf_counter()
        with tqdm(total=len(self._tokenized), unit="pair", desc=self.description, disable=not self.progress) as bar:
            for group in self._capture.pairs(self._tokenized, self.sites, share_prefix=self.share_prefix):
                for reducer in reducers:
                    reducer.add_group(group)
                self.n_pairs += len(group.indices)
                bar.update(len(group.indices))
        self.seconds += time.perf_counter() - start
