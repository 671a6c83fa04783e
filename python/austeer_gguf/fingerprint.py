"""A model fingerprint: what identifies one model across its float and quantized GGUF files (a model file's is
`formats.model_file.ModelFile.fingerprint`; its JSON form lives with the profile formats)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


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


def tensor_hash(tensors: list[tuple[str, tuple[int, ...]]]) -> str:
    """sha256 over sorted (name, logical shape) pairs."""
    digest = hashlib.sha256()
    for name, shape in sorted(tensors):
        digest.update(f"{name}:{','.join(str(int(n)) for n in shape)};".encode())
    return digest.hexdigest()
