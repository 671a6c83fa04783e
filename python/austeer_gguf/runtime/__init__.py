"""The runtime users hold: `SteeredLlama` (a llama_cpp.Llama that steers, built on the engine's `HookedLlama`)
and its steering control (`steering`), which produces `SteeringSetting` values. Importing it loads llama_cpp."""
