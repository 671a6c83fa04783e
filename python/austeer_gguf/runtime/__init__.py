"""The runtime: the native eval callback (native, context_hook), the steering control (steering) and
`SteeredLlama`, a llama_cpp.Llama that steers. Importing it loads llama_cpp."""
