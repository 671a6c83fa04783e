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


@pytest.fixture
def listener():
    """A loopback socket that accepts connections and never answers (and one that answers nonsense)."""
    import socket
    import threading

    sockets = []

    def serve(reply: bytes | None):
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        sockets.append(server)

        def loop():
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                sockets.append(connection)
                if reply is not None:
                    connection.recv(64)
                    connection.sendall(reply)

        threading.Thread(target=loop, daemon=True).start()
        return f"127.0.0.1:{server.getsockname()[1]}"

    yield serve
    for sock in sockets:
        sock.close()


def test_the_handshake_refuses_silent_and_foreign_listeners_and_accepts_a_ggml_rpc_server(listener):
    import time

    from austeer_gguf import InputError
    from austeer_gguf.engine.rpc import handshake

    silent = listener(None)
    started = time.monotonic()
    with pytest.raises(InputError, match="did not answer within 0.5 s"):
        handshake(silent, timeout=0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(InputError, match="does not speak ggml-rpc protocol 7.0"):
        handshake(listener(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 64), timeout=2)
    with RpcServer() as server:
        handshake(server.endpoint)


def test_a_string_of_servers_is_refused_not_split_into_characters(tiny_f32):
    result = subprocess.run([sys.executable, "-c", (
        "from austeer_gguf import SteeredLlama, InputError\n"
        f"try:\n    SteeredLlama({str(tiny_f32)!r}, rpc_servers='127.0.0.1:50052', verbose=False)\n"
        "except InputError as error:\n    print(error)\n")], capture_output=True, text=True, timeout=120)
    assert "rpc_servers takes a list of HOST:PORT strings, got '127.0.0.1:50052' (write ['127.0.0.1:50052'])" \
        in result.stdout, result.stderr


def test_a_supervised_server_outlives_an_rpc_server_that_dies_and_serves_again_when_it_is_back(tiny_f32):
    import json
    import signal
    import time

    import httpx

    from austeer_gguf.engine.rpc import free_port

    server = RpcServer(threads=1)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "austeer_gguf", "serve", str(tiny_f32), "--port", str(port),
                                "--rpc", server.endpoint, "--n-ctx", "2048", "--threads", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": "the cat is"}], "max_tokens": 4, "temperature": 0}

    def wait_for(status: int, seconds: float = 120) -> httpx.Response:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                response = httpx.post(url, json=body, timeout=30)
                if response.status_code == status:
                    return response
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"no {status} within {seconds} s")

    try:
        assert wait_for(200).json()["choices"][0]["message"]
        events = []
        long = {**body, "max_tokens": 1800, "min_tokens": 1800, "stream": True}
        with httpx.stream("POST", url, json=long, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data:"):
                    events.append(line[len("data:"):].strip())
                    if len(events) == 3:
                        server.stop()  # the RPC server dies mid-reply
        assert events[-1] != "[DONE]" and "the model's backend failed" in json.loads(events[-1])["error"]["message"]
        unavailable = wait_for(503, seconds=30)
        assert "the model is not available" in unavailable.json()["error"]["message"]
        assert process.poll() is None  # the server is still up
        server = RpcServer(port=int(server.endpoint.rsplit(":", 1)[1]), threads=1)  # back on the same port
        assert wait_for(200, seconds=180).json()["choices"][0]["message"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        server.stop()
