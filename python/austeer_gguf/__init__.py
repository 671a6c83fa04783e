"""austeer-gguf: fine-grained activation steering (AUSteer) for GGUF models run by llama.cpp."""

from .fingerprint import ModelFingerprint
from .profile import Profile, Unit
from .sites import SITES, ModelShape
from .steered_llama import SteeredLlama
from .steering import Steering, SteeringSetting

__all__ = [
    "SITES",
    "ModelFingerprint",
    "ModelShape",
    "Profile",
    "SteeredLlama",
    "Steering",
    "SteeringSetting",
    "Unit",
]
__version__ = "0.1.0"
