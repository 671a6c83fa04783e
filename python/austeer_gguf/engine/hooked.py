"""`HookedLlama`: a `llama_cpp.Llama` whose context runs our eval callback and decodes under a `SteeringSetting`.

It owns one native steering state and its context; `install(setting)` makes the decodes that follow steer as
the setting says (the native spec: one table for every row; llama.cpp's control vector for the residual
additions). It knows nothing of profiles by name, controls or scopes: capture, the evaluation and the runtime
(`SteeredLlama`) build on it. Its native calls follow the threading contract of cpp/steering.hpp: `install`
and the capture calls are made by the thread that decodes, between decodes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np

from .. import sites
from ..formats.model_file import ModelFile
from ..setting import OFF, SteeringSetting
from . import context_hook, limits, micro_batches, native, rpc
from .threads import on_own_thread

EvalCallback = Callable[[int, bool], bool]
_ROWS = object()  # what `_installed` holds after install_rows: a per-row spec
SEQUENCES = 16  # sequences per decode of an evaluation context (scripts/bench_evaluation.py measures the gain)
EVALUATION_OPTIONS = {"sequences": SEQUENCES, "n_ctx": 2048, "n_batch": 512}  # room for a group and its replies


class HookedLlama(llama_cpp.Llama):
    """A `llama_cpp.Llama` with our eval callback in its context.

    `eval_callback`, if given, is chained: it is asked about every node as llama.cpp would ask it, and its
    compute call sees the values after our scaling. `rpc_servers` (["host:port", ...]) registers llama.cpp RPC
    servers the way llama.cpp's `--rpc` does (process-wide, see `engine.rpc`) and offloads every layer to them
    unless `n_gpu_layers` says otherwise. `sequences` > 1 opens a context that decodes that many sequences
    together (n_ubatch = n_batch unless given): on one unified KV cache (`kv_unified`, the default: a cell may
    belong to several sequences, so a shared prefix is held once), or on a KV stream per sequence
    (`kv_unified=False`, llama-server's layout: each row attends over its own sequence's cells only, and no cell
    is shared). Every other keyword goes to `llama_cpp.Llama`, after the resource requests (threads, n_ctx,
    n_batch) are checked against the model and the machine.
    """

    def __init__(self, model_path: str | Path, *, model_file: ModelFile | None = None,
                 eval_callback: EvalCallback | Any | None = None, rpc_servers: Sequence[str] | None = None,
                 sequences: int = 1, kv_unified: bool = True, **llama_kwargs: Any) -> None:
        # Read the file ourselves first: a damaged file gets a message that says what is wrong with it.
        self.model_file = model_file or ModelFile.open(model_path)
        self.shape = self.model_file.shape
        self.fingerprint = self.model_file.fingerprint
        sequences = limits.check_count(sequences, "sequences", 1, limits.MAX_SEQUENCES, "llama.cpp's limit")
        limits.check_resources(llama_kwargs, self.model_file, sequences)
        rpc.check_registered()
        if rpc_servers is not None:
            rpc.add_servers(rpc_servers)
            llama_kwargs.setdefault("n_gpu_layers", -1)

        self._native_state = native.new_state(experts=self.shape.experts > 0)
        self._chained_callback = None
        self._warned_skips = False
        self._installed: tuple[Any, Any] = (None, None)  # what the native spec and the control vector hold
        if eval_callback is not None:
            self._chain(eval_callback)
        overrides = {}
        if sequences > 1:  # llama.cpp aborts when n_seq_max exceeds n_batch (which llama-cpp-python caps at n_ctx)
            n_batch = min(llama_kwargs.get("n_batch", 512), llama_kwargs.get("n_ctx", 512) or 512)
            overrides = {"n_seq_max": min(sequences, n_batch), "kv_unified": bool(kv_unified)}
            llama_kwargs.setdefault("n_ubatch", n_batch)  # a unified cache's decode is then one micro-batch
        callback_address = native.callback_address()
        with context_hook.callback_for_next_context(callback_address, self._native_state.user_data, overrides):
            super().__init__(str(model_path), **llama_kwargs)
        if context_hook.installed_callback(self.context_params) != (callback_address, self._native_state.user_data):
            raise RuntimeError("llama_cpp.Llama did not build its context from llama_context_default_params(): "
                               "austeer-gguf supports llama-cpp-python==0.3.36 only")
        # The probe decodes on a thread of its own, so that this thread keeps no OpenMP team (see engine.threads).
        self.shape = dataclasses.replace(self.shape, missing=on_own_thread(self._find_sites))
        if self.shape.missing:
            absent = "; ".join(f"{site} at layers {sites.layer_ranges(layers)}"
                               for site, layers in self.shape.missing.items())
            warnings.warn(f"this {self.shape.architecture} model's compute graph lacks some steering sites "
                          f"({absent}): profiles with units there are refused", RuntimeWarning, stacklevel=2)

    def _find_sites(self) -> dict[str, tuple[int, ...]]:
        """Decode one token capturing every site at every layer, and return the layers at which the compute
        graph has no tensor of a site's name and width. llama.cpp names graph tensors per architecture; a site
        it does not name would leave units silently unsteered, so they are refused instead."""
        state, shape, names = self._native_state, self.shape, sites.names()
        state.begin_capture(list(range(len(names))), shape.n_layers, [shape.widths[name] for name in names], [0], 1)
        try:
            token = (llama_cpp.llama_token * 1)(max(self.token_bos(), 0))
            status = llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(token, 1))
            if status != 0:
                raise RuntimeError(f"llama_decode failed ({status}) on the first token of {self.model_path}")
        finally:
            state.end_capture()
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        missing = {}
        for code, name in enumerate(names):
            _, filled = state.captured(code)
            absent = tuple(int(layer) for layer in np.flatnonzero(np.asarray(filled) == 0))
            if absent:
                missing[name] = absent
        state.reset_counters()  # the counters speak of the user's decodes
        return missing

    @classmethod
    def for_evaluation(cls, model_path: str | Path, **kwargs: Any):
        """A model whose context decodes `SEQUENCES` sequences together (`EVALUATION_OPTIONS`, unless given)."""
        return cls(model_path, **{**EVALUATION_OPTIONS, **kwargs})

    # ---- steering the decodes that follow --------------------------------------------------------------

    def current_setting(self) -> SteeringSetting:
        """The setting a decode runs under when none is given (SteeredLlama: the user's controls)."""
        return OFF

    def install(self, setting: SteeringSetting) -> None:
        """Steer the decodes that follow as `setting` says, every position alike (the caller chooses the
        setting per phase: `setting.for_prompt()` for prompt positions): units through the native spec, a
        control vector through llama.cpp's own (`install_rows` steers rows apart). Call it from the decoding
        thread, between decodes."""
        units, directions = setting.units, setting.control_directions
        installed_units, installed_directions = self._installed
        if units is not installed_units:
            if units is None:
                self._native_state.clear_spec()
            else:
                self._native_state.set_spec(self.shape.n_layers, [units])
        if directions is not installed_directions and (directions or installed_directions is None
                                                        or installed_directions):
            self._set_control_vector(directions)
        self._installed = (units, directions)

    def install_batch(self, row_settings: Sequence[SteeringSetting], output_rows: Sequence[int],
                      row_sequences: Sequence[int] | None = None) -> None:
        """Steer row i of the next decode as row_settings[i] says: `install` when every row has the same
        setting, else `install_rows` over the distinct ones (`row_sequences`: see there)."""
        distinct: list[SteeringSetting] = []
        index = []
        for setting in row_settings:
            found = next((i for i, known in enumerate(distinct) if known is setting or known == setting), None)
            if found is None:
                distinct.append(setting)
                found = len(distinct) - 1
            index.append(found)
        if len(distinct) == 1:
            self.install(distinct[0])
        else:
            self.install_rows(distinct, index, output_rows, row_sequences)

    def install_rows(self, settings: Sequence[SteeringSetting], row_settings: Sequence[int],
                     output_rows: Sequence[int], row_sequences: Sequence[int] | None = None) -> None:
        """Steer each row of the next decode as its own setting says: row i under settings[row_settings[i]]
        (an index into `settings`), `output_rows` the batch rows that produce output (the last layer keeps only
        those). Units and control vectors alike go through the native spec, so every row is steered on its own;
        a row whose setting is OFF is left exactly alone. On a KV stream per sequence, llama.cpp computes the
        rows in an order of its own, which `row_sequences` (each row's sequence id) determines
        (`micro_batches`). Call it from the decoding thread, between decodes."""
        one_stream = bool(self.context_params.kv_unified) or self.context_params.n_seq_max == 1
        if row_sequences is None and not one_stream:
            raise ValueError("steering rows apart on a KV stream per sequence needs each row's sequence id")
        sequences = row_sequences if row_sequences is not None else [0] * len(row_settings)
        splits = micro_batches.split(sequences, self.context_params.n_ubatch, one_stream)
        tables, index_of = [], []
        for setting in settings:
            table = setting.native_table
            if table is None:
                index_of.append(0)
            else:
                tables.append(table)
                index_of.append(len(tables))
        if self._installed[1]:  # llama.cpp's own control vector would add to every row
            self._set_control_vector({})
        if not tables:
            self._native_state.clear_spec()
        else:
            self._native_state.set_spec(self.shape.n_layers, tables,
                                        row_tables=np.array([index_of[i] for i in row_settings], dtype=np.int32),
                                        output_rows=np.array(output_rows, dtype=np.int64),
                                        addition_site=sites.code("layer"), micro_batches=splits)
        self._installed = (_ROWS, {})

    def _set_control_vector(self, directions: dict[int, np.ndarray]) -> None:
        """Set (or clear, when empty) the control vector of the context: direction L is added to layer L."""
        n_layers, n_embd = self.shape.n_layers, self.shape.widths["layer"]
        if not directions:
            status = llama_cpp.llama_set_adapter_cvec(self.ctx, None, 0, n_embd, -1, -1)
        else:
            data = np.zeros((n_layers - 1, n_embd), dtype=np.float32)  # llama.cpp's buffer starts at layer 1
            for layer, direction in directions.items():
                data[layer - 1] = direction
            pointer = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            status = llama_cpp.llama_set_adapter_cvec(self.ctx, pointer, data.size, n_embd, min(directions),
                                                      max(directions))
        if status != 0:
            raise RuntimeError(f"llama_set_adapter_cvec failed ({status})")

    # ---- what the callback did -------------------------------------------------------------------------

    def native_counters(self) -> dict[str, int]:
        """What the callback did: tensors steered/captured, and tensors it had to skip (not F32, ...)."""
        return dict(self._native_state.counters())

    def reset_counters(self) -> None:
        self._native_state.reset_counters()

    def warn_once_if_skipped(self) -> None:
        """Steering that silently does nothing is worse than none: say which tensors were left alone."""
        if self._warned_skips:
            return
        if any(count for name, count in self._native_state.counters().items() if native.is_skip(name)):
            self._warned_skips = True
            names = "; ".join(self._native_state.skipped_names()) or "unknown tensors"
            warnings.warn(f"steering left some site tensors alone, so part of the profile has no effect: {names}",
                          RuntimeWarning, stacklevel=3)

    def close(self) -> None:
        # A model refused in __init__ (bad input) never reached llama_cpp.Llama.__init__: nothing to close.
        if "_stack" in self.__dict__:
            super().close()

    def _chain(self, callback: EvalCallback | Any) -> None:
        if isinstance(callback, llama_cpp.ggml_backend_sched_eval_callback):
            pointer = callback
        elif callable(callback):
            def trampoline(tensor: int | None, ask: bool, _user_data: int | None) -> bool:
                return bool(callback(tensor or 0, bool(ask)))

            pointer = llama_cpp.ggml_backend_sched_eval_callback(trampoline)
        else:
            raise TypeError("eval_callback must be a callable (tensor_address, ask) -> bool or a "
                            "llama_cpp.ggml_backend_sched_eval_callback")
        self._chained_callback = pointer  # keep the ctypes thunk alive as long as the model
        address = ctypes.cast(pointer, ctypes.c_void_p).value or 0
        self._native_state.set_chained(address, 0)
