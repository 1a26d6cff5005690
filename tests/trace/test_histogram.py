"""The histogram module against known answers: values whose true mean and
percentiles the test computes itself, bucketed the way the programs bucket
them (log2 as libbpf-tools and bpftrace's hist, linear as lhist)."""

from __future__ import annotations

import math
import statistics

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from perf_mcp.trace import histogram as H
from perf_mcp.trace.bpftrace import parse_json_lines

RUNQLAT_TEXT = """Tracing run queue latency... Hit Ctrl-C to end.

     usecs               : count    distribution
         0 -> 1          : 1        |                                        |
         2 -> 3          : 14       |************                            |
         4 -> 7          : 11       |*********                               |
         8 -> 15         : 10       |********                                |
        16 -> 31         : 13       |***********                             |
        32 -> 63         : 45       |****************************************|
        64 -> 127        : 2        |*                                       |
"""


def log2_rows(values: list[int]) -> list[dict[str, int]]:
    """bpftrace hist() buckets: [0], [1], [2,3], [4,7], ... (bounds inclusive)."""
    counts: dict[int, int] = {}
    for v in values:
        idx = 0 if v == 0 else v.bit_length()
        counts[idx] = counts.get(idx, 0) + 1
    rows = []
    for idx in range(0, max(counts) + 1):
        lo, hi = (0, 0) if idx == 0 else (1 << (idx - 1), (1 << idx) - 1)
        rows.append({"min": lo, "max": hi, "count": counts.get(idx, 0)})
    return rows


def true_percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000_000), min_size=1, max_size=400))
def test_log2_percentiles_fall_in_the_true_values_bucket(values: list[int]) -> None:
    h = H.from_bpftrace(log2_rows(values), "us", "log2")
    assert h.count == len(values)
    for q in (0.5, 0.9, 0.99):
        est = H.percentile(h, q)
        truth = true_percentile(values, q)
        assert est is not None
        # The estimate lies inside the bucket holding the true value (a factor 2 at most).
        lo = 0 if truth == 0 else 1 << (int(truth).bit_length() - 1)
        hi = 1 if truth == 0 else 1 << int(truth).bit_length()
        assert lo <= est <= hi, (q, est, truth)


def test_exact_mean_from_the_sum_and_estimated_mean_flagged() -> None:
    values = [3, 5, 9, 100, 1000, 1000, 1000]
    exact = H.from_bpftrace(log2_rows(values), "us", "log2", total=sum(values))
    est = H.from_bpftrace(log2_rows(values), "us", "log2")
    s_exact, s_est = H.to_struct(exact), H.to_struct(est)
    assert s_exact.mean_us == round(statistics.mean(values), 3) and s_exact.mean_exact is True
    assert s_est.mean_exact is False and 0.5 * statistics.mean(values) < s_est.mean_us < 1.5 * statistics.mean(values)


def test_linear_buckets_percentiles_are_exact_to_a_bucket_and_overflow_is_open() -> None:
    # lhist(x, 0, 100, 10): 10 values in [0,10), 80 in [10,20), 10 at >= 100.
    rows = [{"min": 0, "max": 9, "count": 10}, {"min": 10, "max": 19, "count": 80}]
    rows += [{"min": lo, "max": lo + 9, "count": 0} for lo in range(20, 100, 10)]
    rows.append({"min": 100, "count": 10})
    h = H.from_bpftrace(rows, "ms", "linear")
    s = H.to_struct(h)
    assert s.count == 100 and s.kind == "linear"
    assert 10 <= s.p50_ms <= 20 and 10 <= s.p90_ms <= 20
    assert s.p99_ms == 100  # the open bucket reports its lower bound
    assert s.buckets[-1].high_ms is None and s.buckets[-1].low_ms == 100
    assert s.max_bucket_ms is None  # unbounded: no upper bound to claim


def test_units_are_in_field_names_and_conversion_keeps_the_figures() -> None:
    h = H.from_bpftrace(log2_rows([1000, 2000, 4000]), "us", "log2", total=7000)
    us, ms = H.to_struct(h), H.to_struct(h, "ms")
    fields_us = set(msgspec.structs.asdict(us))
    assert {"mean_us", "p50_us", "p90_us", "p99_us", "max_bucket_us"} <= fields_us
    assert not any(f.endswith("_ms") for f in fields_us)
    assert ms.mean_ms == round(us.mean_us / 1000, 3) and ms.buckets[0].low_ms == us.buckets[0].low_us / 1000
    assert msgspec.json.schema(H.HistogramMs)["$defs"]["HistogramMs"]["properties"]["p99_ms"]


def test_empty_histogram_has_no_percentiles_and_trims_empty_edges() -> None:
    rows = [{"min": 0, "max": 0, "count": 0}, {"min": 1, "max": 1, "count": 0}]
    s = H.to_struct(H.from_bpftrace(rows, "us", "log2"))
    assert s.count == 0 and s.p50_us is None and s.mean_us is None and s.buckets == []


def test_libbpf_text_histogram_parses_to_known_counts() -> None:
    (only,), bad = H.parse_libbpf_text(RUNQLAT_TEXT)
    assert bad == 0 and only.hist.unit == "us" and only.hist.count == 96
    assert only.hist.buckets[0] == (0.0, 2.0, 1) and only.hist.buckets[-1] == (64.0, 128.0, 2)
    s = H.to_struct(only.hist)
    # 49 of 96 samples lie below 32 us; the median (rank 48) is at the top of the 16-31 bucket.
    assert 16 <= s.p50_us <= 32 and 32 <= s.p90_us <= 64


def test_libbpf_text_damaged_rows_are_counted_not_fatal() -> None:
    damaged = RUNQLAT_TEXT.replace("8 -> 15", "8 -> 1#")
    assert damaged != RUNQLAT_TEXT
    hists, bad = H.parse_libbpf_text(damaged)
    assert bad == 1 and hists[0].hist.count == 1 + 14 + 11  # rows up to the damage
    truncated = RUNQLAT_TEXT[: RUNQLAT_TEXT.index("16 ->")]
    hists, bad = H.parse_libbpf_text(truncated)
    assert hists[0].hist.count == 36


def test_labels_before_each_histogram_are_kept() -> None:
    text = "\npid = 42 perfmcp-spin\n" + RUNQLAT_TEXT.split("\n", 2)[2] + "\npid = 7 other\n" + \
        "     usecs               : count    distribution\n         0 -> 1          : 5        |*|\n"
    hists, bad = H.parse_libbpf_text(text)
    assert [h.label_lines for h in hists] == [["pid = 42 perfmcp-spin"], ["pid = 7 other"]]
    assert [h.hist.count for h in hists] == [96, 5] and bad == 0


def test_merged_sums_per_bucket() -> None:
    a = H.from_bpftrace(log2_rows([1, 2, 3]), "us", "log2", total=6)
    b = H.from_bpftrace(log2_rows([3, 300]), "us", "log2", total=303)
    m = a.merged(b)
    assert m.count == 5 and m.total == 309


def test_bpftrace_json_lines_with_damage() -> None:
    raw = (b'{"type": "attached_probes", "data": {"probes": 3}}\n\n'
           b'{"type": "map", "data": {"@count": 12}}\n'
           b'{"type": "hist", "data": {"@us": [{"min": 0, "max": 0, "count": 2}]}}\n'
           b'{"type": "map", "data": {"@sum": 4')
    out = parse_json_lines(raw)
    assert out.attached_probes == 3 and out.maps == {"@count": 12} and out.bad_lines == 1
    assert H.from_bpftrace(out.hists["@us"], "us", "log2").count == 2


def test_bpftrace_json_lines_with_bytes_that_are_not_utf8() -> None:
    raw = b'{"type": "map", "data": {"@c": {"ab\xffc": 3}}}\n{"type": "map", "data": {"@n": 2}}\n'
    out = parse_json_lines(raw)
    assert out.bad_lines == 0 and out.maps["@n"] == 2
    assert out.maps["@c"] == {"ab\\xffc": 3}
