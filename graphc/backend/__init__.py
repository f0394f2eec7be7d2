"""Layer 6, backend: a Graph into C text. Lowering of composites, fusion decisions, kernel
steps and the memory plan, the C functions of a model and their rendering through
templates/. It never compiles and never loads anything."""
