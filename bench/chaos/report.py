"""Figures of one chaos scenario from the load generator's records, and the table.

A client-visible error is a request that got no answer (refused, reset, timed out after
10 s) or a 5xx. Recovery time: from the moment the fault is undone (for a one-off event,
from the event) to the first of three consecutive seconds with no error, a p99 within
twice the pre-fault p99 (+10 ms), and, for hot keys, a hit ratio within 90% of before.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from chaos.load import KINDS


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def _phase_stats(rows: list[tuple[float, float, int, str, int, str]]) -> dict[str, Any]:
    latencies = [r[1] for r in rows]
    errors = [r for r in rows if r[2] == 0 or r[2] >= 500]
    hot = [r for r in rows if KINDS[r[4]] == "hot" and r[2] == 200]
    return {
        "requests": len(rows),
        "errors": len(errors),
        "errors_by_kind": dict(Counter(KINDS[r[4]] for r in errors)),
        "errors_by_type": dict(Counter(r[5] or str(r[2]) for r in errors)),
        "p50_ms": round(percentile(latencies, 0.50), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "hot_hit_ratio": round(sum(r[3] == "H" for r in hot) / len(hot), 3) if hot else 0.0,
        "stale_served": sum(r[3] == "S" for r in rows),
    }


def analyse(
    data: dict[str, Any], began: float, fault_at: float, undo_at: float, *, event: bool
) -> dict[str, Any]:
    """Phases, a per-second timeline and the recovery time (from the undo, or from the
    fault itself when it is a one-off ``event`` such as a signal)."""
    rows = list(
        zip(data["start"], data["latency_ms"], data["status"], data["cache"], data["kind"],
            data["error"], strict=True)
    )  # fmt: skip
    phases = {
        "before": [r for r in rows if r[0] < fault_at],
        "during": [r for r in rows if fault_at <= r[0] < undo_at],
        "after": [r for r in rows if r[0] >= undo_at],
    }
    stats = {name: _phase_stats(part) for name, part in phases.items()}
    timeline = []
    for second in range(int((rows[-1][0] - began) + 1) if rows else 0):
        bucket = [r for r in rows if second <= r[0] - began < second + 1]
        timeline.append({"t": second, **_phase_stats(bucket)})
    base = stats["before"]
    return {
        "phases": stats,
        "corrupt_bodies": len(data["corrupt"]),
        "corrupt_paths": sorted(set(data["corrupt"]))[:10],
        "recovery_s": _recovery(timeline, base, (fault_at if event else undo_at) - began),
        "fault_at_s": round(fault_at - began, 1),
        "undo_at_s": round(undo_at - began, 1),
        "timeline": timeline,
    }


def _recovery(timeline: list[dict[str, Any]], base: dict[str, Any], since: float) -> float | None:
    limit = max(2 * base["p99_ms"], base["p99_ms"] + 10)
    hit_floor = 0.9 * base["hot_hit_ratio"]

    def good(sec: dict[str, Any]) -> bool:
        return (
            sec["requests"] > 0
            and sec["errors"] == 0
            and sec["p99_ms"] <= limit
            and sec["hot_hit_ratio"] >= hit_floor
        )

    start = int(since)
    for i in range(start, len(timeline) - 2):
        if all(good(timeline[j]) for j in range(i, i + 3)):
            return float(max(0, i - start))
    return None


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"Driven at {summary['rate']:.0f} req/s"
        + (f" ({summary['args']['load']:.0%} of a measured {summary['max_rps']:.0f} req/s "
           "closed-loop maximum)" if summary["max_rps"] else "")
        + f"; {summary['args']['workers']} workers; mix hot/short/cold/pass 65/10/15/10 over "
        f"routes on Redis, Memcached and memory; sidecache at {summary['args']['revision']}.",
        "",
        "| fault | errors during (by kind) | errors before / after | p50 ms before / during / "
        "after | p99 ms before / during / after | hot hit ratio before / during / after | "
        "stale served | recovery | body mismatches |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in summary["results"]:
        b, d, a = (r["phases"][p] for p in ("before", "during", "after"))
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(d["errors_by_kind"].items()))
        recovery = "never (in window)" if r["recovery_s"] is None else f"{r['recovery_s']:.0f} s"
        lines.append(
            f"| {r['name']}: {r['what']} | {d['errors']}"
            + (f" ({kinds})" if kinds else "")
            + f" | {b['errors']} / {a['errors']}"
            + f" | {b['p50_ms']} / {d['p50_ms']} / {a['p50_ms']}"
            + f" | {b['p99_ms']} / {d['p99_ms']} / {a['p99_ms']}"
            + f" | {b['hot_hit_ratio']:.2f} / {d['hot_hit_ratio']:.2f} / {a['hot_hit_ratio']:.2f}"
            + f" | {d['stale_served']} | {recovery} | {r['corrupt_bodies']} |"
        )
    return "\n".join(lines) + "\n"
