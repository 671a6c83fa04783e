"""A model fingerprint: what identifies one model across its float and quantized GGUF files."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .sites import SITES, ModelShape


@dataclass(frozen=True)
class ModelFingerprint:
    """Architecture, layer count, site widths and a hash of tensor names and logical shapes.

    Tensor types are left out on purpose: a float copy and a quantized copy of one model share the
    fingerprint, so a profile localized on the float file applies to the quantized one.
    """

    architecture: str
    n_layers: int
    widths: dict[str, int]
    tensor_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ModelFingerprint:
        if not isinstance(data, dict):
            raise ValueError("profile field 'model' must be an object")
        try:
            widths = {site: int(data["widths"][site]) for site in SITES}
            return cls(str(data["architecture"]), int(data["n_layers"]), widths, str(data["tensor_hash"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"profile field 'model' is malformed ({error!r}): it needs architecture, "
                             "n_layers, widths (attn, ffn, layer) and tensor_hash") from None

    def mismatch(self, other: ModelFingerprint) -> str | None:
        """A sentence saying how `other` differs from this fingerprint, or None when they match."""
        for field in ("architecture", "n_layers", "widths", "tensor_hash"):
            mine, theirs = getattr(self, field), getattr(other, field)
            if mine != theirs:
                return f"{field} differs (profile: {mine}, model: {theirs})"
        return None


def tensor_hash(tensors: list[tuple[str, tuple[int, ...]]]) -> str:
    """sha256 over sorted (name, logical shape) pairs."""
    digest = hashlib.sha256()
    for name, shape in sorted(tensors):
        digest.update(f"{name}:{','.join(str(int(n)) for n in shape)};".encode())
    return digest.hexdigest()


def fingerprint_file(path: str | Path) -> ModelFingerprint:
    from .gguf_file import read_fields, read_tensor_shapes

    fields = read_fields(path)
    shape = ModelShape.from_gguf_fields(fields)
    return ModelFingerprint(shape.architecture, shape.n_layers, dict(shape.widths),
                            tensor_hash(read_tensor_shapes(path)))
