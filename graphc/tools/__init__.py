"""Layer 8, tools: what people run. check (C vs reference vs finite differences), the demo and
the `graphc` command."""
