"""What every tracing tool shares: backend ladders (ladder.py), the broker job
with progress (ladder.run_job), histograms (histogram.py) and bpftrace's JSON
output (bpftrace.py)."""
