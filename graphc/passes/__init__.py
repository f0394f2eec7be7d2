"""Stage 4: graph-to-graph passes. Each takes a Graph and returns an equivalent Graph;
none changes what the graph computes, only how much work and memory it takes."""
from graphc.passes.simplify import cse, dce, simplify  # noqa: F401
