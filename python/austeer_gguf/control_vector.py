"""The block-level baseline: a CAA control vector, as a llama.cpp control-vector GGUF.

Direction of layer L = mean over pairs of (pos - neg) of the residual stream `l_out-L` at the last token.
llama.cpp adds `direction.L` to the residual of layer L just before it is named `l_out-L` (the place it was
measured), for L >= 1: layer 0 cannot take a control vector, so direction.0 is never written. The file has
`general.architecture = controlvector`, `controlvector.model_hint` and `controlvector.layer_count`, and one
1-D F32 tensor `direction.L` per layer, as llama.cpp's own control-vector tools write and read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from .errors import InputError
from .ggufio.atomic import atomic_output
from .ggufio.layout import open_reader


@dataclass(eq=False)
class ControlVector:
    directions: dict[int, np.ndarray]  # layer (>= 1) -> [n_embd] float32
    model_hint: str
    n_pairs: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def restricted(self, first: int, last: int) -> ControlVector:
        kept = {layer: v for layer, v in self.directions.items() if first <= layer <= last}
        if not kept:
            raise InputError(f"the control vector has no direction in layers {first}-{last} (it has "
                             f"{self.layers[0]}-{self.layers[-1]})")
        return ControlVector(kept, self.model_hint, self.n_pairs, dict(self.extra))

    def to_gguf(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_output(path) as (_, temporary):
            writer = gguf.GGUFWriter(str(temporary), "controlvector", use_temp_file=False)
            writer.add_string("controlvector.model_hint", self.model_hint)
            writer.add_uint32("controlvector.layer_count", len(self.directions))
            for layer in self.layers:
                writer.add_tensor(f"direction.{layer}", self.directions[layer].astype(np.float32))
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
        return path

    @classmethod
    def from_gguf(cls, path: str | Path) -> ControlVector:
        reader = open_reader(path)
        architecture = reader.fields.get("general.architecture")
        if architecture is None or architecture.contents() != "controlvector":
            raise InputError(f"{path} is not a control-vector GGUF (general.architecture != controlvector)")
        hint = reader.fields.get("controlvector.model_hint")
        directions = {}
        for tensor in reader.tensors:
            if not tensor.name.startswith("direction."):
                continue
            suffix = tensor.name.split(".", 1)[1]
            if not suffix.isdigit():
                raise InputError(f"{path}: {tensor.name} is not named direction.<layer>")
            layer = int(suffix)
            if layer < 1:
                raise InputError(f"{path}: {tensor.name}: llama.cpp applies no control vector to layer 0")
            directions[layer] = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if not directions:
            raise InputError(f"{path} holds no direction.N tensors")
        return cls(directions, hint.contents() if hint else "")

    def buffer(self, n_layers: int, n_embd: int, multiplier: float) -> tuple[np.ndarray, int, int]:
        """(data, il_start, il_end) for llama_set_adapter_cvec: data starts at layer 1."""
        data = np.zeros(((n_layers - 1), n_embd), dtype=np.float32)
        for layer, direction in self.directions.items():
            if layer >= n_layers or direction.shape != (n_embd,):
                raise InputError(f"direction.{layer} ({direction.shape[0]} values) does not fit this model "
                                 f"({n_layers} layers of width {n_embd})")
            data[layer - 1] = direction * np.float32(multiplier)
        return data.reshape(-1), self.layers[0], self.layers[-1]
