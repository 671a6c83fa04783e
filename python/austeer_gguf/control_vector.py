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
from .jsonfile import is_number


@dataclass(eq=False)
class ControlVector:
    """Equal vectors (same layers, same values) compare equal."""

    directions: dict[int, np.ndarray]  # layer (>= 1) -> [n_embd] float32
    model_hint: str
    n_pairs: int = 0
    extra: dict = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlVector):
            return NotImplemented
        return self.layers == other.layers and all(np.array_equal(self.directions[layer], other.directions[layer])
                                                   for layer in self.layers)

    __hash__ = None  # type: ignore[assignment]

    @property
    def layers(self) -> list[int]:
        return sorted(self.directions)

    def to_dict(self) -> dict:
        """A plain encoding (for profiles that carry a control vector): float32 values written exactly."""
        return {"model_hint": self.model_hint, "n_pairs": self.n_pairs,
                "layers": {str(layer): self.directions[layer].astype(np.float32).tolist() for layer in self.layers}}

    @classmethod
    def from_dict(cls, data: object) -> ControlVector:
        why = "a control vector is {'layers': {'<layer >= 1>': [numbers...]}, 'model_hint': ..., 'n_pairs': ...}"
        if not isinstance(data, dict) or not isinstance(data.get("layers"), dict) or not data["layers"]:
            raise InputError(f"malformed control vector: {why}")
        directions, width = {}, None
        for key, values in data["layers"].items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and 1 <= int(key) < 4096) \
                    or not isinstance(values, list):
                raise InputError(f"malformed control vector layer {key!r}: {why}")
            if not all(is_number(v) for v in values):
                raise InputError(f"control vector layer {key}: values must be numbers")
            vector = np.array(values, dtype=np.float32)
            if not np.isfinite(vector).all() or (width is not None and vector.size != width) or vector.size == 0:
                raise InputError(f"control vector layer {key}: values must be finite, one width for every layer")
            width = vector.size
            directions[int(key)] = vector
        hint, n_pairs = data.get("model_hint", ""), data.get("n_pairs", 0)
        valid_count = isinstance(n_pairs, int) and not isinstance(n_pairs, bool) and 0 <= n_pairs < 1 << 62
        return cls(directions, hint if isinstance(hint, str) else "", n_pairs if valid_count else 0)

    def check_fits(self, n_layers: int, width: int, what: str = "the control vector") -> None:
        """InputError unless every direction is a finite vector of `width` for a layer in 1..n_layers-1."""
        for layer, direction in self.directions.items():
            if not 1 <= layer < n_layers or direction.shape != (width,) or not np.isfinite(direction).all():
                raise InputError(f"{what}'s direction.{layer} does not fit this model: finite values, layers "
                                 f"1..{n_layers - 1} of width {width}")

    def scaled(self, multiplier: float) -> dict[int, np.ndarray]:
        return {layer: direction * np.float32(multiplier) for layer, direction in self.directions.items()}

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
            if not (suffix.isascii() and suffix.isdigit()):
                raise InputError(f"{path}: {tensor.name} is not named direction.<layer>")
            layer = int(suffix)
            if layer < 1:
                raise InputError(f"{path}: {tensor.name}: llama.cpp applies no control vector to layer 0")
            directions[layer] = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if not directions:
            raise InputError(f"{path} holds no direction.N tensors")
        widths = {direction.size for direction in directions.values()}
        if len(widths) != 1 or not all(np.isfinite(d).all() for d in directions.values()):
            raise InputError(f"{path}: its directions must be finite and of one width")
        return cls(directions, hint.contents() if hint else "")
