"""Layer 1, core: errors, tensor types, the IR, the op record base and its registry, the NumPy
reference interpreter, argument binding and the notes' notation. It knows nothing of C."""
