"""The GGUF byte layer: a fast layout scan, verified atomic rewrites, safe outputs, float copies. It knows no
profiles (their formats are `austeer_gguf.formats`)."""
