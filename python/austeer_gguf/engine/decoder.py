"""The one multi-sequence decoder: many sequences per llama_decode, for logits rows, generation and captures.

A decode of many positions costs much less per position than one of a few on a CPU (the weights are read
once per decode), so a group of sequences goes into each decode, each on its own sequence id of a unified KV
cache. A sequence that starts with the same tokens as the one before it shares their cells (a cell carries
several sequence ids): a chat template's prefix, a choice item's prompt, or the prompt of a contrastive
pair is computed once. `forward` and `generate_tokens` decode their sequences sorted by prompt setting and
tokens (`sharing_order`), so that a prompt given many times (the seeds of a sampled item, the settings of a
generation-scope sweep, several replies scored after one request) is computed once wherever it comes in the
caller's list. Only the rows a caller reads get outputs: logits rows (`forward`), the last row of each
sequence during generation (`generate_tokens`), or the last row of each sequence captured at the site tensors
(`Decoder.capture`). The cache is cleared before each group.

Every sequence runs under a `SteeringSetting` handed in (one for all, `setting`, default the model's
`current_setting()`; or one per sequence, `settings`): its prompt positions under `setting.for_prompt()`, its
generated ones under the setting. Sequences of different settings go into one decode, each row steered as its
own sequence's setting says (`HookedLlama.install_rows`); cells are shared only between sequences whose
prompts are computed under the same setting, so the KV cache never mixes settings. How many sequences go into
a group is the context's `n_seq_max` (`HookedLlama(..., sequences=N)`); a plain context decodes one at a time
through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from .. import sites
from ..errors import InputError
from ..setting import OFF, SteeringSetting
from .hooked import HookedLlama

# llama-cpp-python's default sampling chain in `Llama.generate`, which sampled evaluation keeps
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many tokens two sequences share from their start."""
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return length


@dataclass
class _Cell:
    token: int
    position: int
    sequences: list[int]  # slots in the group
    setting: SteeringSetting  # what the position is computed under (its sequences' prompt setting)
    output: bool = False


@dataclass
class Group:
    """Sequences decoded together: each position of each sequence points at a cell; a sequence that starts
    as the one before it does points at that one's cells for the shared part."""

    cells: list[_Cell] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # sequence indices, in slot order
    positions: list[list[int]] = field(default_factory=list)  # per slot: the cell of each position
    settings: list[SteeringSetting] = field(default_factory=list)  # per slot: its sequence's setting

    def add(self, index: int, tokens: Sequence[int], shared: int, setting: SteeringSetting) -> None:
        """Add a sequence whose first `shared` tokens are those of the group's last sequence (computed under
        the same prompt setting)."""
        slot = len(self.members)
        own = self.positions[-1][:shared] if shared else []
        for cell in own:
            self.cells[cell].sequences.append(slot)
        for position in range(shared, len(tokens)):
            own.append(len(self.cells))
            self.cells.append(_Cell(tokens[position], position, [slot], setting.for_prompt()))
        self.members.append(index)
        self.positions.append(own)
        self.settings.append(setting)

    def last_cells(self) -> list[int]:
        return [positions[-1] for positions in self.positions]


class Decoder:
    """Decodes groups of sequences through a hooked model's context.

    `max_sequences` caps the sequences per decode (default: the context's `n_seq_max`; 1 decodes one at a
    time); `max_cells` caps the KV cells a group fills (llama.cpp attends densely over every used cell of the
    unified cache, other sequences masked, so small groups keep attention cheap), except that a sequence (or
    bundle) larger than that gets a group of its own.
    """

    def __init__(self, llm: HookedLlama, max_sequences: int | None = None, max_cells: int | None = None) -> None:
        self.llm = llm
        self.ctx = llm.ctx
        limit = int(llama_cpp.llama_n_seq_max(self.ctx))
        self.max_sequences = max(1, min(max_sequences or limit, limit))
        self.n_batch = int(llama_cpp.llama_n_batch(self.ctx))
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx))
        self.max_cells = min(max_cells or self.n_batch, self.n_batch)
        # Cells are shared between sequences on a unified cache only (a stream per sequence holds its own).
        self.shares_cells = bool(llm.context_params.kv_unified) or self.max_sequences == 1
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

    def groups(self, sequences: Sequence[Sequence[int]], extra_cells: int = 0, *, bundle: int = 1,
               share: bool = True, settings: Sequence[SteeringSetting] | None = None) -> Iterator[Group]:
        """Consecutive sequences in groups that fit one decode (and `extra_cells` more cells per sequence).
        `bundle` consecutive sequences always go into one group (a contrastive pair: 2); `share`: whether a
        sequence shares the cells of the prefix it has in common with the one before it (only when both
        prompts are computed under the same setting); `settings`: each sequence's (default OFF)."""
        settings = list(settings) if settings is not None else [OFF] * len(sequences)
        share = share and self.shares_cells
        group, previous = Group(), None
        for start in range(0, len(sequences), bundle):
            members = list(zip(sequences[start:start + bundle], settings[start:start + bundle]))
            for offset, (tokens, _) in enumerate(members):
                if not tokens:
                    raise ValueError(f"sequence #{start + offset} is empty")
            fresh = _shares(members, None, share)
            alone = sum(len(tokens) for tokens, _ in members) - sum(fresh)
            if alone > self.n_batch or alone + extra_cells * len(members) > self.n_ctx:
                longest = max(len(tokens) for tokens, _ in members)
                raise InputError(f"a text of {longest} tokens (+{extra_cells} to generate) does not fit the "
                                 f"context ({self.n_batch}-token batches, {self.n_ctx} cells): shorten it, or "
                                 "open the model with a larger n_ctx and n_batch")
            shares = _shares(members, previous, share) if group.members else fresh
            cells = len(group.cells) + sum(len(tokens) for tokens, _ in members) - sum(shares)
            count = len(group.members) + len(members)
            if group.members and (count > self.max_sequences or cells > self.max_cells
                                  or cells + extra_cells * count > self.n_ctx):
                yield group
                group, shares = Group(), fresh
            for offset, ((tokens, setting), shared) in enumerate(zip(members, shares)):
                group.add(start + offset, tokens, shared, setting)
            previous = members[-1]
        if group.members:
            yield group

    # ---- decoding -------------------------------------------------------------------------------------

    def decode(self, entries: Sequence[tuple[int, int, Sequence[int], bool, SteeringSetting]]) -> None:
        """Decode (token, position, slots, wants output, setting) entries as one batch (row i: entry i), each
        row steered as its setting says."""
        self.llm.install_batch([entry[4] for entry in entries], [row for row, entry in enumerate(entries) if entry[3]],
                               [entry[2][0] for entry in entries])
        batch = self._batch
        for row, (token, position, slots, output, _) in enumerate(entries):
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

    def decode_group(self, group: Group) -> None:
        """Decode a group on an empty cache (batch row i: cell i), every position a prompt position of its
        sequences' setting."""
        llama_cpp.llama_memory_clear(self._memory, False)
        self.decode([(c.token, c.position, c.sequences, c.output, c.setting) for c in group.cells])

    def capture(self, group: Group, site_names: Sequence[str]) -> dict[str, np.ndarray]:
        """Decode a group and capture the last position of each of its sequences at every layer of the chosen
        sites: site -> [members, layers, width]."""
        last = group.last_cells()
        rows = sorted(set(last))  # a sequence that ends inside the next one's prefix shares its last cell
        captured = self._capture_rows(group, site_names, rows)
        order = [rows.index(cell) for cell in last]
        return {site: np.ascontiguousarray(values[order]) for site, values in captured.items()}

    def capture_pooled(self, group: Group, site_names: Sequence[str],
                       starts: Sequence[int]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Decode a group and capture, at every layer of the chosen sites, the last position of each sequence
        and the mean over its positions from `starts[slot]` to its end: (last, mean), each site ->
        [members, layers, width]."""
        pooled = [positions[start:] or positions[-1:] for positions, start in zip(group.positions, starts)]
        rows = sorted({cell for cells in pooled for cell in cells} | set(group.last_cells()))
        captured = self._capture_rows(group, site_names, rows)
        index = {cell: i for i, cell in enumerate(rows)}
        last_order = [index[cell] for cell in group.last_cells()]
        last = {site: np.ascontiguousarray(values[last_order]) for site, values in captured.items()}
        mean = {site: np.stack([values[[index[cell] for cell in cells]].mean(axis=0) for cells in pooled])
                for site, values in captured.items()}
        return last, mean

    def _capture_rows(self, group: Group, site_names: Sequence[str], rows: list[int]) -> dict[str, np.ndarray]:
        """Decode a group, capturing the cells `rows` (sorted; made output rows, as llama.cpp keeps only those
        at the last layer): site -> [rows, layers, width]."""
        state, shape = self.llm._native_state, self.llm.shape
        for site in site_names:
            shape.check_present(site)
        for row in rows:
            group.cells[row].output = True
        widths = [shape.widths.get(name, 0) if name in site_names else 0 for name in sites.names()]
        state.begin_capture([sites.code(site) for site in site_names], shape.n_layers, widths, rows,
                            len(group.cells))
        try:
            self.decode_group(group)
        finally:
            state.end_capture()
        values = {}
        for site in site_names:
            captured, filled = state.captured(sites.code(site))
            if not filled.all():
                missing = [layer for layer, ok in enumerate(filled) if not ok]
                raise RuntimeError(f"no {site} activations were captured at layers {missing}: this llama.cpp "
                                   "graph does not name its tensors as llama-cpp-python 0.3.36 does")
            values[site] = captured.transpose(1, 0, 2)
        return values


def _shares(members: Sequence[tuple[Sequence[int], SteeringSetting]], previous, share: bool) -> list[int]:
    """How many leading tokens each (tokens, setting) member shares with the one before it (`previous` before the
    first): none when sharing is off or the two prompts are computed under different settings."""
    shares = []
    for tokens, setting in members:
        same = share and previous is not None and previous[1].for_prompt() == setting.for_prompt()
        shares.append(common_prefix(tokens, previous[0]) if same else 0)
        previous = (tokens, setting)
    return shares


def sharing_order(sequences: Sequence[Sequence[int]], settings: Sequence[SteeringSetting]) -> list[int]:
    """The order to decode sequences in so that each shares the longest prefix it can with the one before it:
    grouped by prompt setting (in order of first appearance; cells are shared only within one), then sorted
    by tokens, so that every sequence starting with the same prompt (the seeds of a sampled item, the
    settings of a generation-scope sweep, several replies scored after one request) is computed once."""
    kinds: list[SteeringSetting] = []
    kind_of: dict[int, int] = {}  # id(setting) -> its prompt setting's place in `kinds`

    def kind(setting: SteeringSetting) -> int:
        if id(setting) not in kind_of:
            prompt = setting.for_prompt()
            if not any(known == prompt for known in kinds):
                kinds.append(prompt)
            kind_of[id(setting)] = next(index for index, known in enumerate(kinds) if known == prompt)
        return kind_of[id(setting)]

    keys = [(kind(setting), list(tokens)) for tokens, setting in zip(sequences, settings)]
    return sorted(range(len(sequences)), key=keys.__getitem__)


def _settings(llm: HookedLlama, count: int, setting: SteeringSetting | None,
              settings: Sequence[SteeringSetting] | None) -> list[SteeringSetting]:
    """One setting per sequence: `settings` as given, else `setting` (default: the model's current) for all."""
    if settings is not None:
        if len(settings) != count:
            raise ValueError(f"{len(settings)} settings for {count} sequences")
        return list(settings)
    return [llm.current_setting() if setting is None else setting] * count


def forward(llm: HookedLlama, sequences: Sequence[Sequence[int]], rows: Sequence[range], *,
            setting: SteeringSetting | None = None, settings: Sequence[SteeringSetting] | None = None,
            max_sequences: int | None = None) -> list[np.ndarray]:
    """The logits rows `rows[i]` of each sequence (row r predicts token r + 1; [len(rows[i]), n_vocab]),
    every position a prompt position of its setting (`settings[i]`, or `setting` for all; default: the model's
    current setting)."""
    settings = _settings(llm, len(sequences), setting, settings)
    order = sharing_order(sequences, settings)
    out: list[np.ndarray] = [np.empty((0, llm.n_vocab()), dtype=np.float32)] * len(sequences)
    with Decoder(llm, max_sequences) as decoder:
        for group in decoder.groups([sequences[i] for i in order], settings=[settings[i] for i in order]):
            indices = [order[member] for member in group.members]  # slot -> the caller's sequence
            wanted = {slot: [group.positions[slot][r] for r in rows[index]] for slot, index in enumerate(indices)}
            for cells in wanted.values():
                for cell in cells:
                    group.cells[cell].output = True
            decoder.decode_group(group)
            for slot, cells in wanted.items():
                if cells:
                    out[indices[slot]] = np.stack([decoder.logits(cell) for cell in cells])
    return out


def generate_tokens(llm: HookedLlama, prompts: Sequence[Sequence[int]], *, max_tokens: int,
                    setting: SteeringSetting | None = None, settings: Sequence[SteeringSetting] | None = None,
                    temperature: float = 0.0, seeds: Sequence[int] | None = None,
                    stop: Callable[[list[int]], bool] | None = None,
                    max_sequences: int | None = None) -> list[list[int]]:
    """Up to `max_tokens` tokens after each prompt: greedy at temperature 0, else sampled as llama-cpp-python's
    `Llama.generate` does by default (top-k 40, top-p 0.95, min-p 0.05, then temperature) from a NumPy generator
    seeded with `seeds[i]`. A sequence ends at an end-of-generation token (not kept) or when `stop(tokens)` says.
    Each prompt runs under its setting (`settings[i]`, or `setting` for all): prompt positions steered as
    `setting.for_prompt()`, generated ones as the setting (its scope)."""
    settings = _settings(llm, len(prompts), setting, settings)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    seeds = list(seeds) if seeds is not None else [0] * len(prompts)
    order = sharing_order(prompts, settings)
    out: list[list[int]] = [[] for _ in prompts]
    with Decoder(llm, max_sequences) as decoder:
        for group in decoder.groups([prompts[i] for i in order], extra_cells=max_tokens,
                                    settings=[settings[i] for i in order]):
            indices = [order[member] for member in group.members]  # slot -> the caller's prompt
            last = group.last_cells()
            for cell in last:
                group.cells[cell].output = True
            decoder.decode_group(group)
            rows = {slot: decoder.logits(cell) for slot, cell in enumerate(last)}  # slot -> its next logits
            generators = {slot: np.random.default_rng(seeds[index]) for slot, index in enumerate(indices)}
            while rows:
                entries, running = [], []
                for slot, next_logits in rows.items():
                    index = indices[slot]
                    token = sample(next_logits, temperature, generators[slot])
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        continue
                    out[index].append(token)
                    if len(out[index]) >= max_tokens or (stop is not None and stop(out[index])):
                        continue
                    position = len(prompts[index]) + len(out[index]) - 1
                    entries.append((token, position, [slot], True, group.settings[slot]))
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
