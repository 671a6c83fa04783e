"""A profile as a GGUF LoRA adapter: stock llama.cpp (its tools and server, llama-cpp-python, Ollama's
ADAPTER) runs it, and the adapter's scale is the steering strength one to one.

llama.cpp computes `W x + scale * B (A x)` (A: ggml {n_in, r}, B: {r, n_out}), with scale multiplied by
alpha / rank when the adapter has a non-zero `adapter.lora.alpha`. We write alpha = 0, so the scale a user
passes is used as it is: 0 = off, 1 = the profile, 2 = twice its effect.

- attn unit c of layer L (input column c of attn_output scaled by 1 + g): A row = one-hot c,
  B column = g * W[:, c] of the dequantized weight; rank one per unit, exact per query head.
- ffn unit c (output row c of ffn_down): A row = g * W[c, :], B column = one-hot c.
- layer units have no weight: refused unless skip_layer_units=True.

On float weights this equals the runtime callback up to float rounding. On quantized weights it does not
match bit for bit: llama.cpp quantizes the activation entering a quantized matmul (Q8), so the callback's
scaled value is rounded with its block while LoRA adds its term in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .atomic import atomic_output
from .gguf_file import open_reader
from .profile import Profile


@dataclass
class LoraReport:
    target: Path
    tensors: int
    rank_total: int
    skipped_layer_units: int


def export_lora(model: str | Path, profile: Profile, target: str | Path, *,
                skip_layer_units: bool = False) -> LoraReport:
    layer_units = [u for u in profile.units if u.site == "layer"]
    if layer_units and not skip_layer_units:
        raise ValueError(f"profile {profile.name!r} has {len(layer_units)} 'layer' (residual stream) units, which a "
                         "LoRA adapter cannot express: steer them at run time with SteeredLlama, or pass "
                         "--skip-layer-units to export the others")
    reader = open_reader(model)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    architecture = reader.fields["general.architecture"].contents()

    grouped: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for unit, gain in zip(profile.units, profile.gains()):
        if unit.site != "layer":
            grouped.setdefault((unit.site, unit.layer), []).append((unit.dim, float(gain)))

    adapters: list[tuple[str, np.ndarray, np.ndarray]] = []
    for (site, layer), units in sorted(grouped.items(), key=lambda item: (item[0][1], item[0][0])):
        name = f"blk.{layer}.{'attn_output' if site == 'attn' else 'ffn_down'}.weight"
        if name not in tensors:
            raise ValueError(f"{model} has no tensor {name}: cannot express {site} units of layer {layer}")
        if site == "ffn" and f"blk.{layer}.ffn_down.bias" in tensors:
            raise ValueError(f"blk.{layer}.ffn_down.bias exists: the FFN output includes a bias that a LoRA term "
                             "cannot scale; steer these ffn units at run time")
        weight = _dequantized(tensors[name])  # (n_out, n_in)
        a = np.zeros((len(units), weight.shape[1]), dtype=np.float32)
        b = np.zeros((weight.shape[0], len(units)), dtype=np.float32)
        for j, (dim, gain) in enumerate(units):
            if site == "attn":
                a[j, dim] = 1.0
                b[:, j] = gain * weight[:, dim]
            else:
                a[j, :] = gain * weight[dim, :]
                b[dim, j] = 1.0
        adapters.append((name, a, b))

    target = Path(target)
    with atomic_output(target) as (_, temporary):
        writer = gguf.GGUFWriter(str(temporary), architecture, use_temp_file=False)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
        writer.add_string("austeer.lora_profile", profile.name)
        for name, a, b in adapters:
            writer.add_tensor(f"{name}.lora_a", a)
            writer.add_tensor(f"{name}.lora_b", b)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return LoraReport(target, 2 * len(adapters), sum(a.shape[0] for _, a, _ in adapters), len(layer_units))


def _dequantized(tensor) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
