from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from austeer_gguf import models  # noqa: E402

from tiny_model import write_tiny_llama  # noqa: E402

THREADS = 2


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-f32.gguf", weight_type="F32")


@pytest.fixture(scope="session")
def tiny_q8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-q8_0.gguf", weight_type="Q8_0")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return models.fetch("smollm2")


@pytest.fixture(scope="session")
def gemma3() -> Path:
    return models.fetch("gemma3")


TEST_OPTIONS = dict(n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=THREADS,
                    n_threads_batch=THREADS)


def open_steered(path: Path, **kwargs):
    from austeer_gguf import SteeredLlama

    return SteeredLlama(str(path), **{**TEST_OPTIONS, **kwargs})


def open_plain(path: Path, **kwargs):
    """A plain llama_cpp.Llama (no callback) with the same options as open_steered."""
    import llama_cpp

    return llama_cpp.Llama(str(path), **{**TEST_OPTIONS, **kwargs})


def logits_of(llm, tokens: list[int]) -> np.ndarray:
    """Logits of every position, computed from scratch."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], copy=True)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Relative L2 error of `actual` against `expected`: the one measure of closeness the tests use."""
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def profile_on(site: str, width: int, n_layers: int, seed: int):
    """Four units of `site` on every layer, with mixed scores (alpha 3)."""
    from austeer_gguf import Profile, Unit

    rng = np.random.default_rng(seed)
    units = []
    for layer in range(n_layers):
        for dim in rng.choice(width, size=4, replace=False):
            units.append(Unit(layer, site, int(dim), float(rng.choice([-0.75, -0.5, 0.5, 0.8]))))
    return Profile(f"{site}-test", alpha=3.0, units=units)


def run_backend_worker(model: Path, out: Path, backend: str) -> dict:
    """Steered logits and captures of `model` on one backend, computed in a process of its own
    (tests/backend_worker.py)."""
    worker = Path(__file__).with_name("backend_worker.py")
    result = subprocess.run([sys.executable, str(worker), str(model), str(out), backend], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = np.load(out)
    return {key: (json.loads(str(data[key])) if key == "counters" else data[key]) for key in data.files}
