"""The native core on real ggml tensors, called exactly as llama.cpp's scheduler calls it."""

from __future__ import annotations

import numpy as np
import pytest

from austeer_gguf import _native
from austeer_gguf.engine import native

from ggml_ctypes import GGML_TYPE_F16, EvalCallback, GgmlContext

callback = EvalCallback(_native.callback_address())


@pytest.fixture
def ggml():
    context = GgmlContext()
    yield context
    context.close()


def table(units: list[tuple[int, int, int, float]]) -> tuple[np.ndarray, ...]:
    """units: (layer, site code, dim, factor); site codes 0, 1, 2 are attn, ffn, layer."""
    layers, sites, dims, factors = (np.array(column) for column in zip(*units))
    return layers.astype(np.int32), sites.astype(np.int32), dims.astype(np.int32), factors.astype(np.float32)


def make_state(units: list[tuple[int, int, int, float]], n_layers: int = 12):
    """A state whose spec steers every row with one table of `units`."""
    state = native.new_state()
    state.set_spec(n_layers, [table(units)])
    return state


def run_node(state, tensor: int) -> bool | None:
    """Ask, then (if claimed) compute, as ggml_backend_sched_compute_splits does. None: not claimed."""
    if not callback(tensor, True, state.user_data):
        return None
    return callback(tensor, False, state.user_data)


@pytest.mark.parametrize("name, expected", [
    ("l_out-1", (2, 1)), ("l_out-10", (2, 10)), ("kqv_out-0", (0, 0)), ("ffn_out-29", (1, 29)),
    ("l_out-", None), ("l_out-1x", None), ("l_out-1 (view)", None), ("xl_out-1", None),
    ("ffn_out_gate-1", None), ("kqv_out", None), ("attn_out-3", None), ("l_out--1", None),
])
def test_site_names_match_exactly(name, expected):
    assert native.new_state().parse_site_name(name) == expected


def test_scales_unit_dims_in_every_row_in_place(ggml):
    values = np.arange(24, dtype=np.float32).reshape(3, 8) - 10
    tensor = ggml.tensor("l_out-1", values)
    factors = (np.float32(1) + np.float32(2) * np.float32(1.5), np.float32(1) + np.float32(2) * np.float32(-2.0))
    state = make_state([(1, 2, 2, factors[0]), (1, 2, 5, factors[1])])
    assert run_node(state, tensor) is True
    expected = values.copy()
    expected[:, 2] *= np.float32(1) + np.float32(2) * np.float32(1.5)
    expected[:, 5] *= np.float32(1) + np.float32(2) * np.float32(-2.0)
    assert np.array_equal(ggml.view(tensor, values.shape), expected)
    assert state.counters()["steered"] == 1


def test_other_layers_sites_and_a_cleared_spec_are_not_claimed(ggml):
    state = make_state([(1, 2, 0, 2.0)])
    values = np.ones((2, 4), dtype=np.float32)
    for name in ("l_out-10", "l_out-0", "kqv_out-1", "ffn_out-1", "attn_norm-1"):
        assert run_node(state, ggml.tensor(name, values)) is None
    assert run_node(state, ggml.tensor("l_out-1", values)) is True
    state.clear_spec()
    assert run_node(state, ggml.tensor("l_out-1", values)) is None
    assert (state.n_units, state.n_tables) == (0, 0)


def test_a_row_map_steers_each_row_with_its_own_table_and_leaves_table_0_rows_exactly_alone(ggml):
    values = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    state = native.new_state()
    first, second = table([(1, 2, 0, 3.0), (1, 2, 4, -2.0)]), table([(1, 2, 4, 0.5), (1, 2, 5, 7.0)])
    state.set_spec(2, [first, second], row_tables=np.array([1, 0, 2, 1], np.int32),
                   output_rows=np.array([2, 3], np.int64))
    assert (state.n_tables, state.n_units) == (2, 4)
    tensor = ggml.tensor("l_out-1", values)
    assert run_node(state, tensor) is True
    expected = values.copy()
    for row in (0, 3):
        expected[row, 0] *= np.float32(3.0)
        expected[row, 4] *= np.float32(-2.0)
    expected[2, 4] *= np.float32(0.5)
    expected[2, 5] *= np.float32(7.0)
    steered = ggml.view(tensor, values.shape)
    assert np.array_equal(steered, expected)
    assert np.array_equal(steered[1], values[1])  # table 0: bit for bit

    # A tensor holding only the output rows (the last layer) maps its rows through output_rows: [2, 3] -> 2, 1.
    outputs = values[:2].copy()
    tensor = ggml.tensor("l_out-1", outputs)
    assert run_node(state, tensor) is True
    expected = outputs.copy()
    expected[0, 4] *= np.float32(0.5)
    expected[0, 5] *= np.float32(7.0)
    expected[1, 0] *= np.float32(3.0)
    expected[1, 4] *= np.float32(-2.0)
    assert np.array_equal(ggml.view(tensor, outputs.shape), expected)

    odd = ggml.tensor("l_out-1", values[:3].copy())  # neither the batch (4 rows) nor its outputs (2)
    assert run_node(state, odd) is True
    assert np.array_equal(ggml.view(odd, (3, 6)), values[:3])
    assert state.counters()["skipped_rows"] == 1 and state.counters()["steered"] == 2


def test_micro_batches_map_each_tensor_of_a_site_to_the_rows_of_the_next_micro_batch(ggml):
    # llama.cpp computes a batch over KV streams as micro-batches in an order of its own: the k-th tensor of a
    # (site, layer) in a decode holds the k-th micro-batch's rows, all of them or (last layer) its outputs.
    values = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    state = native.new_state()
    state.set_spec(2, [table([(1, 2, 0, 3.0)]), table([(1, 2, 2, -1.0)])], row_tables=np.array([1, 0, 2, 2], np.int32),
                   output_rows=np.array([0, 3], np.int64), micro_batches=[[2, 0], [3, 1]])
    first, second = ggml.tensor("l_out-1", values), ggml.tensor("l_out-1", values)
    assert run_node(state, first) is True and run_node(state, second) is True
    expected_first, expected_second = values.copy(), values.copy()
    expected_first[0, 2] *= np.float32(-1.0)  # batch row 2: table 2
    expected_first[1, 0] *= np.float32(3.0)  # batch row 0: table 1
    expected_second[0, 2] *= np.float32(-1.0)  # batch row 3: table 2; row 1 (table 0) is left alone
    assert np.array_equal(ggml.view(first, values.shape), expected_first)
    assert np.array_equal(ggml.view(second, values.shape), expected_second)

    # The next decode under the same spec starts again at the first micro-batch; its outputs: row 0, then row 3.
    outputs = [ggml.tensor("l_out-1", values[:1].copy()) for _ in range(2)]
    assert all(run_node(state, tensor) is True for tensor in outputs)
    assert ggml.view(outputs[0], (1, 3))[0, 0] == np.float32(3.0) * values[0, 0]
    assert ggml.view(outputs[1], (1, 3))[0, 2] == -values[0, 2]
    assert state.counters()["skipped_rows"] == 0 and state.counters()["steered"] == 4


def test_a_table_no_row_takes_claims_nothing(ggml):
    state = native.new_state()
    state.set_spec(4, [table([(0, 2, 1, 2.0)]), table([(3, 2, 1, 2.0)])], row_tables=np.array([0, 2], np.int32))
    values = np.ones((2, 4), dtype=np.float32)
    assert run_node(state, ggml.tensor("l_out-0", values)) is None
    assert run_node(state, ggml.tensor("l_out-3", values)) is True


def test_specs_refuse_bad_row_maps():
    state = native.new_state()
    one = [table([(0, 2, 1, 2.0)])]
    with pytest.raises(ValueError, match="row table index"):
        state.set_spec(2, one, row_tables=np.array([0, 2], np.int32))
    with pytest.raises(ValueError, match="output row"):
        state.set_spec(2, one, row_tables=np.array([0, 1], np.int32), output_rows=np.array([2], np.int64))
    with pytest.raises(ValueError, match="at least one table"):
        state.set_spec(2, [])
    rows = np.array([0, 1, 1], np.int32)
    for micro_batches in ([[0, 1]], [[0, 1], [1, 2]], [[0, 1, 2, 3]], [[2, 1, 0], []]):  # not every row once
        with pytest.raises(ValueError, match="every batch row once"):
            state.set_spec(2, one, row_tables=rows, micro_batches=micro_batches)
    with pytest.raises(ValueError, match="need a row map"):
        state.set_spec(2, one, micro_batches=[[0]])
    assert state.n_tables == 0


def test_only_the_first_ffn_out_of_a_layer_is_the_ffn_output(ggml):
    # With a control vector on a layer, llama.cpp leaves the residual sum named ffn_out-L as well.
    state = make_state([(3, 1, 0, 2.0)])
    values = np.ones((1, 4), dtype=np.float32)
    sequence = ["kqv_out-3", "ffn_out-3", "ffn_out-3", "l_out-3", "kqv_out-3", "ffn_out-3"]
    claimed = [run_node(state, ggml.tensor(name, values)) is not None for name in sequence]
    assert claimed == [False, True, False, False, False, True]


def test_tensors_that_are_not_f32_or_not_contiguous_are_left_alone_and_counted(ggml):
    state = make_state([(0, 2, 1, 2.0), (1, 2, 1, 2.0), (2, 2, 9, 2.0)])
    half = ggml.tensor("l_out-0", np.ones((2, 4)), GGML_TYPE_F16)
    assert run_node(state, half) is True
    assert np.array_equal(ggml.view(half, (2, 4), np.float16), np.ones((2, 4)))
    base = ggml.tensor("base", np.ones((4, 6), dtype=np.float32))
    view = ggml.transposed(base, "l_out-1")
    assert run_node(state, view) is True
    narrow = ggml.tensor("l_out-2", np.ones((2, 4), dtype=np.float32))  # unit dim 9 >= width 4
    assert run_node(state, narrow) is True
    assert np.array_equal(ggml.view(narrow, (2, 4)), np.ones((2, 4)))
    counters = state.counters()
    assert counters["skipped_not_f32"] == 1
    assert counters["skipped_not_contiguous"] == 1
    assert counters["skipped_width"] == 1
    assert counters["steered"] == 0


def test_capture_records_chosen_rows_and_output_only_tensors(ggml):
    state = native.new_state()
    state.begin_capture(sites=[0, 2], n_layers=4, widths=[6, 0, 4], rows=[1, 4], n_batch_tokens=5)
    attn = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    layer = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    last = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)  # only the output rows
    assert run_node(state, ggml.tensor("kqv_out-2", attn)) is True
    assert run_node(state, ggml.tensor("l_out-0", layer)) is True
    assert run_node(state, ggml.tensor("l_out-3", last)) is True
    assert run_node(state, ggml.tensor("ffn_out-0", layer)) is None  # site not selected
    assert run_node(state, ggml.tensor("l_out-1", layer[:3])) is True  # 3 rows: neither batch nor outputs
    values, filled = state.captured(0)
    assert values.shape == (4, 2, 6) and filled.tolist() == [False, False, True, False]
    assert np.array_equal(values[2], attn[[1, 4]])
    values, filled = state.captured(2)
    assert filled.tolist() == [True, False, False, True]
    assert np.array_equal(values[0], layer[[1, 4]])
    assert np.array_equal(values[3], last)
    assert state.counters()["capture_row_mismatch"] == 1
    state.end_capture()
    assert run_node(state, ggml.tensor("l_out-0", layer)) is None


def test_a_chained_callback_is_asked_about_every_node_and_sees_steered_values(ggml):
    asked: list[int] = []
    seen: dict[int, np.ndarray] = {}

    @EvalCallback
    def theirs(tensor, ask, _user_data):
        if ask:
            asked.append(tensor)
            return True
        seen[tensor] = ggml.view(tensor, (2, 4)).copy()
        return True

    state = make_state([(0, 2, 1, 2.0)])
    state.set_chained(int(ctypes_address(theirs)), 0)
    steered = ggml.tensor("l_out-0", np.ones((2, 4), dtype=np.float32))
    other = ggml.tensor("attn_norm-0", np.ones((2, 4), dtype=np.float32))
    assert run_node(state, steered) is True
    assert run_node(state, other) is True
    assert asked == [steered, other]
    assert seen[steered][:, 1].tolist() == [2.0, 2.0]
    assert seen[other].tolist() == np.ones((2, 4)).tolist()


def ctypes_address(function) -> int:
    import ctypes

    return ctypes.cast(function, ctypes.c_void_p).value


def test_unit_tables_refuse_bad_input():
    state = native.new_state()
    arrays = (np.array([0], np.int32), np.array([0], np.int32), np.array([0], np.int32), np.array([1.0], np.float32))

    def with_column(index: int, column: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        return [tuple(column if i == index else a for i, a in enumerate(arrays))]

    with pytest.raises(ValueError, match="layer out of range"):
        state.set_spec(0 + 1, with_column(0, np.array([1], np.int32)))
    with pytest.raises(ValueError, match="bad site"):
        state.set_spec(2, with_column(1, np.array([3], np.int32)))
    with pytest.raises(ValueError, match="not finite"):
        state.set_spec(2, with_column(3, np.array([np.nan], np.float32)))
    with pytest.raises(ValueError, match="duplicate"):
        state.set_spec(2, [(np.array([0, 0], np.int32), np.array([1, 1], np.int32), np.array([3, 3], np.int32),
                            np.array([1, 2], np.float32))])
    assert state.n_units == 0


def test_replacing_specs_many_times_keeps_the_latest(ggml):
    state = native.new_state()
    for gain in range(1, 2001):
        state.set_spec(1, [(np.array([0], np.int32), np.array([2], np.int32), np.array([0], np.int32),
                            np.array([1 + gain], np.float32))])
    tensor = ggml.tensor("l_out-0", np.ones((1, 2), dtype=np.float32))
    run_node(state, tensor)
    assert ggml.view(tensor, (1, 2)).tolist() == [[2001.0, 1.0]]


def test_a_tensor_without_memory_is_skipped_and_counted_never_handed_to_ggml(ggml):
    state = make_state([(0, 2, 1, 2.0)])
    empty = ggml.tensor_without_data("l_out-0", 2, 4)  # no buffer and no data, as a no_alloc context makes
    assert run_node(state, empty) is True
    assert state.counters()["skipped_no_data"] == 1 and state.counters()["steered"] == 0
    assert state.skipped_names() == ["l_out-0: no data"]
    state.reset_counters()
    assert state.skipped_names() == [] and state.counters()["skipped_no_data"] == 0


def test_additions_go_to_the_rows_of_their_table_before_the_units_scale_them(ggml):
    values = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    added = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    state = native.new_state()
    with_vector = (*table([(1, 2, 3, 2.0)]), np.array([1], np.int32), added)
    state.set_spec(2, [with_vector, table([(1, 2, 0, -1.0)])], row_tables=np.array([1, 0, 2], np.int32),
                   output_rows=np.array([0, 1, 2], np.int64), addition_site=2)
    tensor = ggml.tensor("l_out-1", values)
    assert run_node(state, tensor) is True
    expected = values.copy()
    expected[0] = expected[0] + added[0]
    expected[0, 3] *= np.float32(2.0)
    expected[2, 0] *= np.float32(-1.0)
    assert np.array_equal(ggml.view(tensor, values.shape), expected)
    assert run_node(state, ggml.tensor("l_out-0", values)) is None  # no units and no vector on layer 0
    assert run_node(state, ggml.tensor("kqv_out-1", values)) is None  # additions only at their site

    narrow = ggml.tensor("l_out-1", np.ones((3, 2), dtype=np.float32))  # the vector is 4 wide
    assert run_node(state, narrow) is True
    assert np.array_equal(ggml.view(narrow, (3, 2)), np.ones((3, 2)))
    assert state.counters()["skipped_width"] == 1


def test_additions_refuse_bad_input():
    state = native.new_state()
    units = table([(0, 2, 1, 2.0)])
    with pytest.raises(ValueError, match="names no addition site"):
        state.set_spec(2, [(*units, np.array([1], np.int32), np.ones((1, 4), np.float32))])
    with pytest.raises(ValueError, match="not finite"):
        state.set_spec(2, [(*units, np.array([1], np.int32), np.full((1, 4), np.inf, np.float32))], addition_site=2)
    with pytest.raises(ValueError, match="layer out of range"):
        state.set_spec(2, [(*units, np.array([2], np.int32), np.ones((1, 4), np.float32))], addition_site=2)
    with pytest.raises(ValueError, match="addition_values must be"):
        state.set_spec(2, [(*units, np.array([1], np.int32), np.ones(4, np.float32))], addition_site=2)
    assert state.n_tables == 0
