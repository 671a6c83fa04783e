"""How llama.cpp splits a batch into the micro-batches (ubatches) it computes, row for row.

Per-row steering maps the rows of every site tensor to batch rows; a tensor holds one micro-batch's rows, in
the order llama.cpp put them there. This module states that order for llama-cpp-python==0.3.36
(llama-batch.cpp, as the KV caches call it):

- one KV stream (a unified cache, or a single sequence): the batch in order, n_ubatch rows at a time
  (`split_simple`);
- a stream per sequence (kv_unified off, llama-server's layout): `split_equal(n_ubatch, sequential=true)`.
  It scans the batch for sequences with consecutive ids, starting at the first unused row's, takes the same
  number of rows from each (in batch order, as many as all have, within n_ubatch), and lays them out sequence
  after sequence. Rows of idle sequence ids in between, or a long prompt beside one-token rows, make several
  micro-batches.

Each row belongs to one sequence (a stream per sequence refuses rows shared by several).
"""

from __future__ import annotations

from collections.abc import Sequence


def split(sequences: Sequence[int], n_ubatch: int, one_stream: bool) -> list[list[int]]:
    """The batch rows of each micro-batch, in computing order; `sequences[i]` is row i's sequence id."""
    n_rows = len(sequences)
    if one_stream:
        return [list(range(start, min(start + n_ubatch, n_rows))) for start in range(0, n_rows, n_ubatch)]
    rows_of: dict[int, list[int]] = {}
    for row, sequence in enumerate(sequences):
        rows_of.setdefault(sequence, []).append(row)
    taken_of = dict.fromkeys(rows_of, 0)  # per sequence: how many of its rows are in earlier micro-batches
    used = [False] * n_rows
    micro_batches: list[list[int]] = []
    while len(micro_batches) < n_rows and not all(used):
        chosen: list[int] = []
        for row, sequence in enumerate(sequences):
            if used[row] or sequence in chosen or (chosen and sequence != chosen[-1] + 1):
                continue
            chosen.append(sequence)
            if len(chosen) > n_ubatch:
                break
        per_sequence: list[list[int]] = [[] for _ in chosen]
        while all(taken_of[sequence] < len(rows_of[sequence]) for sequence in chosen):
            for rows, sequence in zip(per_sequence, chosen):
                row = rows_of[sequence][taken_of[sequence]]
                rows.append(row)
                used[row] = True
                taken_of[sequence] += 1
            if (len(per_sequence[0]) + 1) * len(chosen) > n_ubatch:
                break
        micro_batches.append([row for rows in per_sequence for row in rows])
    return micro_batches
