"""Layer 7, native: C text into a loaded library and Python calls of it. The cffi build and
its cache, repeated calls, the compiled model, training state and the standalone export."""
