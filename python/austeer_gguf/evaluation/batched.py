"""Many sequences per llama_decode: the logits rows a measurement reads, and greedy or sampled generation.

A decode of many positions costs much less per position than one of a few on a CPU (the weights are read
once per decode), so the evaluation puts a group of sequences into each decode, each on its own sequence id
of a unified KV cache. A sequence that starts with the same tokens as the one before it shares their cells
(a cell carries several sequence ids): a chat template's prefix, or a choice item's prompt, is computed once.
Only the rows a caller reads get logits. The cache is cleared before each group, and the model's own record of
cached positions is dropped (`SteeredLlama.apply_steering`).

How many sequences go into a group is the context's `n_seq_max` (`open_for_evaluation` makes it
`SEQUENCES`); a plain context decodes one sequence at a time through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import numpy as np

from ..errors import InputError
from .scoring import common_prefix

SEQUENCES = 16  # sequences per decode of an evaluation context (scripts/bench_evaluation.py measures the gain)
EVALUATION_CONTEXT = 2048  # KV cells of an evaluation context: room for a group of prompts and their replies
# llama-cpp-python's default sampling chain in `Llama.generate`, which sampled evaluation keeps
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05


def open_for_evaluation(model_path: str, **llama_kwargs: Any):
    """A `SteeredLlama` whose context decodes `SEQUENCES` sequences together."""
    from ..runtime.steered_llama import SteeredLlama

    llama_kwargs.setdefault("n_ctx", EVALUATION_CONTEXT)
    llama_kwargs.setdefault("n_batch", 512)
    return SteeredLlama(str(model_path), _context_overrides=sequence_overrides(llama_kwargs["n_batch"]),
                        **llama_kwargs)


def sequence_overrides(n_batch: int) -> dict[str, Any]:
    """Context parameters for `SEQUENCES` sequences on one unified KV cache (llama.cpp aborts when n_seq_max
    exceeds n_batch)."""
    return {"n_seq_max": min(SEQUENCES, n_batch), "kv_unified": True}


@dataclass
class _Cell:
    token: int
    position: int
    sequences: list[int]  # slots in the group
    output: bool = False


@dataclass
class _Group:
    """Sequences decoded together: each position of each sequence points at a cell; a sequence that starts
    as the one before it does points at that one's cells for the shared part."""

    cells: list[_Cell] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # sequence indices, in slot order
    positions: list[list[int]] = field(default_factory=list)  # per slot: the cell of each position

    def add(self, index: int, tokens: Sequence[int], shared: int) -> None:
        """Add a sequence whose first `shared` tokens are those of the group's last sequence."""
        slot = len(self.members)
        own = self.positions[-1][:shared] if shared else []
        for cell in own:
            self.cells[cell].sequences.append(slot)
        for position in range(shared, len(tokens)):
            own.append(len(self.cells))
            self.cells.append(_Cell(tokens[position], position, [slot]))
        self.members.append(index)
        self.positions.append(own)


class Decoder:
    """Decodes groups of sequences through a steered model's context, under its current steering.

    `max_sequences` caps the sequences per decode (default: the context's `n_seq_max`; 1 decodes one at a time).
    """

    def __init__(self, llm, max_sequences: int | None = None) -> None:
        self.llm = llm
        self.ctx = llm.ctx
        limit = int(llama_cpp.llama_n_seq_max(self.ctx))
        self.max_sequences = max(1, min(max_sequences or limit, limit))
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.n_vocab = int(llm.n_vocab())
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, self.max_sequences)
        self._memory = llama_cpp.llama_get_memory(self.ctx)

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
            llama_cpp.llama_memory_clear(self._memory, False)
            self.llm.reset()

    def __enter__(self) -> Decoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- grouping -------------------------------------------------------------------------------------

    def groups(self, sequences: Sequence[Sequence[int]], extra_cells: int = 0) -> Iterator[_Group]:
        """Consecutive sequences in groups that fit one decode (and `extra_cells` more cells per sequence)."""
        group, previous = _Group(), ()
        for index, tokens in enumerate(sequences):
            if not tokens:
                raise ValueError(f"sequence #{index} is empty")
            if len(tokens) > self.n_batch or len(tokens) + extra_cells > self.n_ctx:
                raise InputError(f"a text of {len(tokens)} tokens (+{extra_cells} to generate) does not fit the "
                                 f"context ({self.n_batch}-token batches, {self.n_ctx} cells): shorten it, or "
                                 "open the model with a larger n_ctx and n_batch")
            shared = common_prefix(tokens, previous) if group.members else 0
            cells = len(group.cells) + len(tokens) - shared
            if group.members and (len(group.members) == self.max_sequences or cells > self.n_batch
                                  or cells + extra_cells * (len(group.members) + 1) > self.n_ctx):
                yield group
                group, shared = _Group(), 0
            group.add(index, tokens, shared)
            previous = tokens
        if group.members:
            yield group

    # ---- decoding -------------------------------------------------------------------------------------

    def decode(self, entries: Sequence[tuple[int, int, Sequence[int], bool]]) -> None:
        """Decode (token, position, slots, wants logits) entries as one batch (row i: entry i)."""
        batch = self._batch
        for row, (token, position, slots, output) in enumerate(entries):
            batch.token[row] = token
            batch.pos[row] = position
            batch.n_seq_id[row] = len(slots)
            for j, slot in enumerate(slots):
                batch.seq_id[row][j] = slot
            batch.logits[row] = output
        batch.n_tokens = len(entries)
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed with status {status} ({len(entries)} tokens, {self.n_ctx} cells)")

    def logits(self, row: int) -> np.ndarray:
        pointer = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def decode_group(self, group: _Group) -> None:
        """Decode a group on an empty cache (batch row i: cell i)."""
        llama_cpp.llama_memory_clear(self._memory, False)
        self.decode([(c.token, c.position, c.sequences, c.output) for c in group.cells])


def forward(llm, sequences: Sequence[Sequence[int]], rows: Sequence[range],
            max_sequences: int | None = None) -> list[np.ndarray]:
    """The logits rows `rows[i]` of each sequence (row r predicts token r + 1; [len(rows[i]), n_vocab]),
    computed under the model's current steering, every position a prompt position."""
    out: list[np.ndarray] = [np.empty((0, llm.n_vocab()), dtype=np.float32)] * len(sequences)
    with Decoder(llm, max_sequences) as decoder:
        for group in decoder.groups(sequences):
            llm.apply_steering()
            wanted = {slot: [group.positions[slot][r] for r in rows[index]] for slot, index in enumerate(group.members)}
            for cells in wanted.values():
                for cell in cells:
                    group.cells[cell].output = True
            decoder.decode_group(group)
            for slot, cells in wanted.items():
                if cells:
                    out[group.members[slot]] = np.stack([decoder.logits(cell) for cell in cells])
    return out


def generate_tokens(llm, prompts: Sequence[Sequence[int]], *, max_tokens: int, temperature: float = 0.0,
                    seeds: Sequence[int] | None = None, stop: Callable[[list[int]], bool] | None = None,
                    max_sequences: int | None = None) -> list[list[int]]:
    """Up to `max_tokens` tokens after each prompt: greedy at temperature 0, else sampled as llama-cpp-python's
    `Llama.generate` does by default (top-k 40, top-p 0.95, min-p 0.05, then temperature) from a NumPy generator
    seeded with `seeds[i]`. A sequence ends at an end-of-generation token (not kept) or when `stop(tokens)` says.
    Prompt positions are steered as the setting's prompt, generated ones as the setting (its scope)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    seeds = list(seeds) if seeds is not None else [0] * len(prompts)
    out: list[list[int]] = [[] for _ in prompts]
    with Decoder(llm, max_sequences) as decoder:
        for group in decoder.groups(prompts, extra_cells=max_tokens):
            setting = llm.apply_steering()
            last = [group.positions[slot][-1] for slot in range(len(group.members))]
            for cell in last:
                group.cells[cell].output = True
            decoder.decode_group(group)
            rows = {slot: decoder.logits(cell) for slot, cell in enumerate(last)}  # slot -> its next logits
            generators = {slot: np.random.default_rng(seeds[index]) for slot, index in enumerate(group.members)}
            llm.steer_generated(setting)
            while rows:
                entries, running = [], []
                for slot, next_logits in rows.items():
                    index = group.members[slot]
                    token = sample(next_logits, temperature, generators[slot])
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        continue
                    out[index].append(token)
                    if len(out[index]) >= max_tokens or (stop is not None and stop(out[index])):
                        continue
                    position = len(prompts[index]) + len(out[index]) - 1
                    entries.append((token, position, [slot], True))
                    running.append(slot)
                if not entries:
                    break
                decoder.decode(entries)
                rows = {slot: decoder.logits(row) for row, slot in enumerate(running)}
    return out


def sample(logits: np.ndarray, temperature: float, generator: np.random.Generator) -> int:
    """The argmax at temperature 0; else a draw after top-k, top-p and min-p (on the untempered
    distribution, as llama.cpp's chain orders them) from the tempered distribution of what is left."""
    if temperature <= 0:
        return int(np.argmax(logits))
    top = np.argpartition(logits, -TOP_K)[-TOP_K:] if logits.size > TOP_K else np.arange(logits.size)
    top = top[np.argsort(-logits[top], kind="stable")]
    chosen = logits[top].astype(np.float64)
    probabilities = np.exp(chosen - chosen[0])
    probabilities /= probabilities.sum()
    keep = int(np.searchsorted(np.cumsum(probabilities), TOP_P) + 1)  # the fewest whose mass reaches top-p
    keep = min(keep, int(np.sum(probabilities >= MIN_P * probabilities[0])))
    kept = chosen[: max(keep, 1)] / temperature
    weights = np.exp(kept - kept[0])
    return int(top[generator.choice(len(kept), p=weights / weights.sum())])

