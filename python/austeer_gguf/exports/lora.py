"""A profile as a GGUF LoRA adapter: stock llama.cpp (its tools and server, llama-cpp-python, Ollama's
ADAPTER) runs it, and the adapter's scale is the steering strength one to one.

llama.cpp computes `W x + scale * B (A x)` (A: ggml {n_in, r}, B: {r, n_out}), with scale multiplied by
alpha / rank when the adapter has a non-zero `adapter.lora.alpha`. We write alpha = 0, so the scale a user
passes is used as it is: 0 = off, 1 = the profile, 2 = twice its effect.

Each site's registry record names the weight its unit belongs to (`sites.Site.weight`, `.axis`); with
g = factor - 1 (the factor from `Profile.factors`):
- an input-column unit c (attn: column c of attn_output scaled by 1 + g): A row = one-hot c,
  B column = g * W[:, c] of the dequantized weight; rank one per unit, exact per query head.
- an output-row unit c (ffn: row c of ffn_down): A row = g * W[c, :], B column = one-hot c.
- units no weight owns (layer, the residual stream): refused unless skip_layer_units=True.

On float weights this equals the runtime callback up to float rounding. On quantized weights it does not
match bit for bit: llama.cpp quantizes the activation entering a quantized matmul (Q8), so the callback's
scaled value is rounded with its block while LoRA adds its term in float.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from .. import sites
from ..errors import InputError
from ..formats.model_file import ModelFile
from ..ggufio.atomic import atomic_output
from ..ggufio.layout import open_reader
from ..profile import Profile


@dataclass
class LoraReport:
    target: Path
    tensors: int
    rank_total: int
    skipped_layer_units: int


def export_lora(model: str | Path, profile: Profile, target: str | Path, *,
                skip_layer_units: bool = False, allow_model_mismatch: bool = False) -> LoraReport:
    if profile.control is not None:
        raise InputError(f"profile {profile.name!r} carries a control vector, which a LoRA adapter cannot express: "
                         "steer it at run time with SteeredLlama")
    unowned = [u for u in profile.units if sites.get(u.site).weight is None]
    if unowned and not skip_layer_units:
        raise InputError(f"profile {profile.name!r} has {len(unowned)} 'layer' (residual stream) units, which a "
                         "LoRA adapter cannot express: steer them at run time with SteeredLlama, or pass "
                         "--skip-layer-units to export the others")
    model_file = ModelFile.open(model)
    profile.check_model(model_file.shape, model_file.fingerprint,
                        allow_mismatch=allow_model_mismatch)
    reader = open_reader(model)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    architecture = reader.fields["general.architecture"].contents()

    grouped: dict[tuple[int, str], list[tuple[int, float]]] = {}
    for unit, factor in zip(profile.units, profile.factors().tolist()):
        if sites.get(unit.site).weight is not None:
            grouped.setdefault((unit.layer, unit.site), []).append((unit.dim, factor - 1.0))

    adapters: list[tuple[str, np.ndarray, np.ndarray]] = []
    for (layer, site_name), units in sorted(grouped.items()):
        site = sites.get(site_name)
        if model_file.shape.weight(site_name) != site.weight:
            raise InputError(f"the FFN of this model is a mixture of {model_file.shape.experts} experts: a LoRA "
                             f"adapter cannot scale one output row of every expert ({site_name} units of layer "
                             f"{layer}); bake the profile (exact) or steer at run time")
        name = f"blk.{layer}.{site.weight}.weight"
        if name not in tensors:
            raise InputError(f"{model} has no tensor {name}: cannot express {site_name} units of layer {layer}")
        if site.axis == "output" and f"blk.{layer}.{site.weight}.bias" in tensors:
            raise InputError(f"blk.{layer}.{site.weight}.bias exists: the output includes a bias that a LoRA term "
                             f"cannot scale; steer these {site_name} units at run time")
        weight = _dequantized(tensors[name])  # (n_out, n_in)
        a = np.zeros((len(units), weight.shape[1]), dtype=np.float32)
        b = np.zeros((weight.shape[0], len(units)), dtype=np.float32)
        for j, (dim, gain) in enumerate(units):
            if site.axis == "input":
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
    return LoraReport(target, 2 * len(adapters), sum(a.shape[0] for _, a, _ in adapters), len(unowned))


def _dequantized(tensor) -> np.ndarray:
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(gguf.quants.dequantize(tensor.data, tensor.tensor_type), dtype=np.float32).reshape(shape)
