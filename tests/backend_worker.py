"""One process that steers and captures a model on one backend: this CPU, llama.cpp RPC servers, or the GPU
of a CUDA/Metal build of llama-cpp-python (every layer offloaded).

    python backend_worker.py MODEL OUT.npz cpu
    python backend_worker.py MODEL OUT.npz rpc=HOST:PORT[,HOST:PORT...]
    python backend_worker.py MODEL OUT.npz gpu

RPC devices are registered process-wide and ggml aborts once a registered server is gone, so each
configuration runs in a process of its own. Writes: the unsteered logits of TOKENS, the steered logits for
each built-in site (a profile spread over the layers), last-token captures of every site for a few
sequences, and the native counters of each steered run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from austeer_gguf import SITES, Profile, SteeredLlama, Unit  # noqa: E402
from austeer_gguf.localization.capture import ActivationCapture  # noqa: E402

TOKENS = [262, 270, 290, 300, 265, 300, 280, 3, 41, 99, 150, 284, 291, 276, 277]
SEQUENCES = [[262, 270, 290], [300, 265, 300, 280, 41, 99], [150, 284]]


def spread_profile(site: str, n_layers: int, width: int) -> Profile:
    rng = np.random.default_rng(0)
    units = [Unit(layer, site, int(dim), 0.6) for layer in range(0, n_layers, 2)
             for dim in rng.choice(width, 3, replace=False)]
    return Profile(f"{site}-spread", alpha=8.0, units=units)


def logits(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens)], copy=True)


def main() -> None:
    model, out, backend = sys.argv[1], sys.argv[2], sys.argv[3]
    if backend.startswith("rpc="):
        options = dict(rpc_servers=backend[len("rpc="):].split(","))
    elif backend == "gpu":
        options = dict(n_gpu_layers=-1)
    elif backend == "cpu":
        options = {}
    else:
        raise SystemExit(f"unknown backend {backend!r}: cpu, rpc=HOST:PORT,..., or gpu")
    llm = SteeredLlama(model, n_ctx=128, n_batch=128, logits_all=True, verbose=False, n_threads=2,
                       n_threads_batch=2, **options)
    results = {"unsteered": logits(llm, TOKENS)}
    counters = {}
    for site in SITES:
        llm.steering.set_profile(spread_profile(site, llm.shape.n_layers, llm.shape.widths[site]))
        llm.reset_counters()
        results[f"steered_{site}"] = logits(llm, TOKENS)
        counters[site] = llm.native_counters()
    llm.close()
    with ActivationCapture(model, batch_tokens=64, n_ctx=128, n_threads=2, **options) as capture:
        captured = capture.last_tokens(SEQUENCES, list(SITES))
        counters["capture"] = capture.llm.native_counters()
    results.update({f"capture_{site}": values for site, values in captured.items()})
    np.savez(out, counters=json.dumps(counters), **results)


if __name__ == "__main__":
    main()
