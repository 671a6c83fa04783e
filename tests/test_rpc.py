"""Steering and capture on a non-host backend: the model's layers offloaded to llama.cpp RPC servers
(`ggml-rpc-server` processes on loopback, started and stopped here), one and then two of them.

On these buffers the callback goes through ggml_backend_tensor_get/_set, the path every CUDA and Metal build
takes. The servers run ggml's CPU backend, the same code as a local run, so steered logits and captures are
expected to equal the local ones; the stated tolerance (relative L2 below 1e-6) allows for a different
thread count changing nothing but float summation order.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from austeer_gguf import SITES
from austeer_gguf.engine.rpc import RpcServer

from conftest import relative_error, run_backend_worker

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def servers():
    with RpcServer(threads=2) as first, RpcServer(threads=2) as second:
        yield [first, second]


@pytest.fixture(params=["tiny", "smollm2"])
def model(request, tiny_f32):
    return tiny_f32 if request.param == "tiny" else request.getfixturevalue("smollm2")


@pytest.mark.parametrize("n_servers", [1, 2])
def test_steering_and_capture_through_rpc_equal_the_cpu(model, servers, n_servers, tmp_path):
    local = run_backend_worker(model, tmp_path / "cpu.npz", "cpu")
    remote = run_backend_worker(model, tmp_path / "rpc.npz", "rpc=" + ",".join(s.endpoint for s in servers[:n_servers]))
    assert relative_error(remote["unsteered"], local["unsteered"]) < TOLERANCE
    for site in SITES:
        steered = remote[f"steered_{site}"]
        assert relative_error(steered, local[f"steered_{site}"]) < TOLERANCE, site
        assert relative_error(steered, remote["unsteered"]) > 1e-3, f"{site}: steering had no effect over RPC"
        counters = remote["counters"][site]
        assert counters["steered"] > 0 and counters["via_backend_api"] == counters["steered"], counters
        assert local["counters"][site]["via_backend_api"] == 0
        assert relative_error(remote[f"capture_{site}"], local[f"capture_{site}"]) < TOLERANCE, site
    assert remote["counters"]["capture"]["via_backend_api"] > 0


def test_an_unreachable_server_is_refused_with_a_message(tiny_f32, tmp_path):
    with RpcServer() as server:
        endpoint = server.endpoint
    result = subprocess.run([sys.executable, "-c", (
        "import sys\n"
        "from austeer_gguf import SteeredLlama, InputError\n"
        f"try:\n    SteeredLlama({str(tiny_f32)!r}, rpc_servers=[{endpoint!r}], verbose=False)\n"
        "except InputError as error:\n    print(error)\n    sys.exit(3)\n")], capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 3, result.stderr
    assert f"cannot reach the RPC server at {endpoint}" in result.stdout
