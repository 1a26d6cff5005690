"""USE analysis (Brendan Gregg's utilisation, saturation, errors): the
threshold table of DESIGN.md (thresholds.py, the one place those numbers
live), its override file (config.py, the only I/O here), the metrics over
two samples of the sampler's ring (metrics.py) and the rules that turn them
into a USE table and findings (rules.py)."""
