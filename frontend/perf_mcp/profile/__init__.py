"""CPU profiling: perf script parsing and folding (pure), analysis, flame graph rendering."""
