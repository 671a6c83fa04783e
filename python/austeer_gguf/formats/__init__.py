"""The file formats of the package's values, together: a profile as JSON and in its compact embedded form
(`profiles`), profiles in a GGUF's metadata (`embedded`), a control vector as llama.cpp's GGUF (`control_vectors`),
and a model file opened once for its shape, fingerprint and hyper-parameters (`model_file`). The values
themselves (`Profile`, `ControlVector`, `ModelFingerprint`) hold data and validate it; they do no I/O."""
