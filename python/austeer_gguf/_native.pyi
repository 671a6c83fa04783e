"""austeer-gguf native core: a ggml eval callback that scales atomic units (cpp/, built by scikit-build-core).

The core knows sites only as graph tensor prefixes and units only as (layer, site code, dim, factor); every
policy (which units, which factor, when) lives in Python. What may be called from which thread is stated once,
in cpp/steering.hpp: the spec, capture and chaining calls only from the thread that decodes, between decodes
(`austeer_gguf.engine` makes them right before each llama_decode); the read-outs from any thread.
"""

import numpy as np
import numpy.typing as npt

def callback_address() -> int:
    """Address of the C eval callback ``bool (*)(ggml_tensor *, bool ask, void *user_data)``; pass a
    `SteeringState.user_data` as its user data."""

class SteeringState:
    """Steering and capture state read by the eval callback on every graph node.

    `sites` lists (graph tensor prefix, first_in_layer) pairs; site code i is the i-th pair. A tensor named
    exactly ``<prefix>-<layer>`` belongs to that site; with first_in_layer only the first such tensor of a
    layer in a graph does. The state resolves the ggml functions it calls from the already loaded
    libggml-base at `ggml_base_path` (RuntimeError when that library is not loaded).
    """

    def __init__(self, ggml_base_path: str, sites: list[tuple[str, bool]]) -> None: ...
    @property
    def user_data(self) -> int:
        """The address to pass as the callback's user data."""
    def parse_site_name(self, name: str) -> tuple[int, int] | None:
        """(site code, layer) of an exact site tensor name, else None."""
    def set_spec(self, n_layers: int, tables: list[tuple[npt.ArrayLike, ...]], row_tables: npt.ArrayLike | None = None,
                 output_rows: npt.ArrayLike | None = None, addition_site: int = -1,
                 micro_batches: list[list[int]] = ...) -> None:
        """What the next decodes apply: tables 1..n, each (layers, site codes, dims, factors) of the units it
        scales and, optionally, (addition layers, addition values [layers, width]) of the vectors it adds to the
        tensors of site code `addition_site` (before scaling its units there); and the table of every batch row
        (`row_tables`, int32, 0 = unsteered: the row is never touched; None: every row takes table 1).
        `output_rows` (int64) lists the batch rows that produce output, in order: a tensor holding only those
        rows (the last layer) is mapped through it; a tensor whose rows fit neither is left alone and counted
        (skipped_rows). `micro_batches` lists the batch rows of each micro-batch llama.cpp computes, in the order
        its tensors hold them (empty: one, the batch in order): the k-th tensor of a (site, layer) in a decode is
        mapped through the k-th. ValueError on a bad site code, layer, non-finite value, duplicate unit, table
        index, or micro-batches that do not hold every row once."""
    def clear_spec(self) -> None:
        """Steer nothing."""
    @property
    def n_units(self) -> int:
        """Units over all tables of the spec."""
    @property
    def n_tables(self) -> int: ...
    def set_chained(self, callback: int, user_data: int) -> None:
        """Another eval callback (address, user data) asked about every node before ours; 0 removes it."""
    def begin_capture(self, sites: list[int], n_layers: int, widths: list[int], rows: list[int],
                      n_batch_tokens: int) -> None:
        """Record rows `rows` of the chosen sites' tensors at every layer during the next decodes. `widths` has
        one entry per site code (0 for sites not captured)."""
    def end_capture(self) -> None: ...
    def captured(self, site: int) -> tuple[np.ndarray, np.ndarray]:
        """([n_layers, rows, width] float32 values, [n_layers] bool filled) for one site, read under one lock."""
    def counters(self) -> dict[str, int]:
        """What the callback did, one entry per counter of cpp/steering.hpp's AUSTEER_COUNTERS list: steered,
        captured, via_backend_api, skipped_* (tensors left alone, and why), capture_row_mismatch, errors."""
    def skipped_names(self) -> list[str]:
        """"tensor-name: reason" of claimed tensors that were left alone (at most 32, no repeats)."""
    def reset_counters(self) -> None:
        """Zero the counters and forget the skipped names."""
