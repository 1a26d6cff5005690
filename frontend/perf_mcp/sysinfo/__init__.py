"""Machine facts for perf_info: pure parsers (parse.py), file reading (collect.py), findings (analysis.py)."""
