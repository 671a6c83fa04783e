"""Steering and capture on the GPU of a CUDA (or Metal) build of llama-cpp-python, every layer offloaded:
the device-memory path of the callback (ggml_backend_tensor_get/_set) on real device buffers.

Needs such a build and a GPU, so it is deselected by default (`-m "not gpu"` in pyproject.toml); run it with
scripts/cuda_check, which builds llama-cpp-python with CUDA in .venv-cuda and runs `pytest -m gpu`.
GPU kernels round differently from the CPU ones (other matmul tilings, their own activation quantization),
so steered logits are compared with a relative L2 tolerance of 2e-2, and the steering effect must be at least
five times larger.
"""

from __future__ import annotations

import pytest

from austeer_gguf import SITES

from conftest import relative_error, run_backend_worker

pytestmark = pytest.mark.gpu
TOLERANCE = 2e-2


@pytest.fixture(params=["tiny", "smollm2"])
def model(request, tiny_f32):
    return tiny_f32 if request.param == "tiny" else request.getfixturevalue("smollm2")


def test_steering_and_capture_on_the_gpu_equal_the_cpu(model, tmp_path):
    local = run_backend_worker(model, tmp_path / "cpu.npz", "cpu")
    device = run_backend_worker(model, tmp_path / "gpu.npz", "gpu")
    assert relative_error(device["unsteered"], local["unsteered"]) < TOLERANCE
    for site in SITES:
        steered = device[f"steered_{site}"]
        assert relative_error(steered, local[f"steered_{site}"]) < TOLERANCE, site
        assert relative_error(steered, device["unsteered"]) > 5 * TOLERANCE, f"{site}: no effect on the GPU"
        counters = device["counters"][site]
        assert counters["steered"] > 0 and counters["via_backend_api"] == counters["steered"], counters
        assert relative_error(device[f"capture_{site}"], local[f"capture_{site}"]) < TOLERANCE, site
