"""A control vector as llama.cpp's control-vector GGUF: `general.architecture = controlvector`,
`controlvector.model_hint`, `controlvector.layer_count`, and one 1-D F32 tensor `direction.L` per layer (L >= 1:
llama.cpp adds no control vector to layer 0), as llama.cpp's own control-vector tools write and read it."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from ..control_vector import ControlVector
from ..errors import InputError
from ..ggufio.atomic import atomic_output
from ..ggufio.layout import open_reader

ARCHITECTURE = "controlvector"
HINT_KEY = f"{ARCHITECTURE}.model_hint"
COUNT_KEY = f"{ARCHITECTURE}.layer_count"


def write_control_vector(vector: ControlVector, path: str | Path) -> Path:
    path = Path(path)
    with atomic_output(path) as (_, temporary):
        writer = gguf.GGUFWriter(str(temporary), ARCHITECTURE, use_temp_file=False)
        writer.add_string(HINT_KEY, vector.model_hint)
        writer.add_uint32(COUNT_KEY, len(vector.directions))
        for layer in vector.layers:
            writer.add_tensor(f"direction.{layer}", vector.directions[layer].astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_control_vector(path: str | Path) -> ControlVector:
    reader = open_reader(path)
    architecture = reader.fields.get(gguf.Keys.General.ARCHITECTURE)
    if architecture is None or architecture.contents() != ARCHITECTURE:
        raise InputError(f"{path} is not a control-vector GGUF (general.architecture != {ARCHITECTURE})")
    hint = reader.fields.get(HINT_KEY)
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
    vector = ControlVector(directions, hint.contents() if hint else "")
    vector.check_values(str(path))
    return vector
