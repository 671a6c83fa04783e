"""Exports that stock llama.cpp runs: a profile as a LoRA adapter (lora) or folded into the weights (bake)."""
