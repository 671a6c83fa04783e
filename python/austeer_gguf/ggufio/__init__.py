"""The GGUF file layer: a fast layout scan, atomic rewrites, profiles in metadata, float copies."""
