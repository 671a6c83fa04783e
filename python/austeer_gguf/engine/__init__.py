"""The engine under capture and the runtime: the native core (`native`), putting its callback into a context
(`context_hook`), resource bounds (`limits`), llama.cpp RPC servers (`rpc`), a `llama_cpp.Llama` with the
callback installed that decodes under a `SteeringSetting` (`hooked`), and the one multi-sequence decoder
(`decoder`: groups, shared prefix cells, logits rows, capture rows). It knows settings, not profiles or policy.
Importing it loads llama_cpp."""
