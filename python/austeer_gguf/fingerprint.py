"""A model fingerprint: what identifies one model across its float and quantized GGUF files."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import InputError
from .sites import ModelShape


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
        why = ("it needs architecture (a string), n_layers (an integer), widths (site -> integer) and "
               "tensor_hash (a string)")
        if not isinstance(data, dict):
            raise InputError(f"profile field 'model' must be an object: {why}")
        architecture, n_layers = data.get("architecture"), data.get("n_layers")
        widths, digest = data.get("widths"), data.get("tensor_hash")
        valid = (isinstance(architecture, str) and _is_count(n_layers) and isinstance(digest, str)
                 and isinstance(widths, dict) and all(isinstance(k, str) and _is_count(v) for k, v in widths.items()))
        if not valid:
            raise InputError(f"profile field 'model' is malformed: {why}")
        return cls(architecture, int(n_layers), {site: int(width) for site, width in widths.items()}, digest)

    def mismatch(self, other: ModelFingerprint) -> str | None:
        """A sentence saying how `other` differs from this fingerprint, or None when they match. Widths are
        compared on the sites both know (a site registered later is not part of an older fingerprint)."""
        shared = sorted(set(self.widths) & set(other.widths))
        pairs = (("architecture", self.architecture, other.architecture),
                 ("n_layers", self.n_layers, other.n_layers),
                 ("widths", {s: self.widths[s] for s in shared}, {s: other.widths[s] for s in shared}),
                 ("tensor_hash", self.tensor_hash, other.tensor_hash))
        for name, mine, theirs in pairs:
            if mine != theirs:
                return f"{name} differs (profile: {mine}, model: {theirs})"
        return None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31


def tensor_hash(tensors: list[tuple[str, tuple[int, ...]]]) -> str:
    """sha256 over sorted (name, logical shape) pairs."""
    digest = hashlib.sha256()
    for name, shape in sorted(tensors):
        digest.update(f"{name}:{','.join(str(int(n)) for n in shape)};".encode())
    return digest.hexdigest()


def fingerprint_of(layout: Any) -> ModelFingerprint:
    """The fingerprint of a scanned GGUF (`ggufio.layout.GgufLayout`)."""
    shape = ModelShape.from_gguf_fields(layout.values())
    return ModelFingerprint(shape.architecture, shape.n_layers, dict(shape.widths),
                            tensor_hash([(tensor.name, tensor.shape) for tensor in layout.tensors]))


def fingerprint_file(path: str | Path) -> ModelFingerprint:
    from .ggufio.layout import scan

    return fingerprint_of(scan(path))
