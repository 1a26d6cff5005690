"""perf_triage's machinery: from "the machine is slow" to ranked root causes.

- model: the answer's shape (Culprit, RootCause, TriageData) and ROOT_CAUSE_KINDS.
- queue: broker jobs of the collectors wait for a slot of their class (the
  broker allows one profiling/tracing job per user) instead of failing BUSY.
- collectors: which tools run in each mode and focus, run concurrently in one
  nursery, each answer kept as the JSON an agent would read (Observations).
- correlate: pure rules from Observations to candidate root causes.
- rank: merging, deduplication and the score (severity x confidence x evidence).
"""
