#!/usr/bin/env python3
"""Run the benchmarks in order (``make bench``) and print a summary table.

    python bench/run_all.py [--database-url URL] [--quick] [--only b01,b04] [--json out.json]

Each benchmark creates and drops its own database ``parecer_bench_<name>`` on the
server (``--database-url``, default $PARECER_DATABASE_URL, else an embedded
throwaway PostgreSQL). Defaults are sized for a few minutes on a 2-core machine;
every benchmark script has knobs for bigger runs (``python bench/bNN_*.py -h``).
Figures are printed, never asserted: the exit code is 0 unless a benchmark crashed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import b01_queue  # noqa: E402
import b02_eligibility  # noqa: E402
import b03_end_to_end  # noqa: E402
import b04_wakeup  # noqa: E402
import b05_memory  # noqa: E402
import b07_quote_slips  # noqa: E402
import b08_pgqueuer  # noqa: E402
import b09_batch  # noqa: E402
import common as C  # noqa: E402


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default=os.environ.get("PARECER_DATABASE_URL"))
    p.add_argument(
        "--quick",
        action="store_true",
        help="benchmark 2 at 10k/20k/40k sessions instead of 50k/100k/200k",
    )
    p.add_argument("--b02-sizes", default=None, help="benchmark 2 session counts, comma-separated")
    p.add_argument("--only", default=None, help="comma-separated subset, e.g. b01,b04")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--json", dest="json_path", default=None, help="also write every figure and detail as JSON"
    )
    a = p.parse_args(argv)
    if a.b02_sizes:
        b02_sizes = tuple(int(x) for x in a.b02_sizes.split(","))
    else:
        b02_sizes = b02_eligibility.QUICK_SIZES if a.quick else b02_eligibility.FULL_SIZES
    only = set(a.only.split(",")) if a.only else None

    t0 = time.perf_counter()
    with C.server(a.database_url) as srv:
        info = C.machine_info(srv)
        info["load average at start"] = _loadavg()
        C.print_machine(info)
        C.say(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        plan: list[tuple[str, Any]] = [
            ("b01", lambda: b01_queue.run(srv, seed=a.seed)),
            ("b02", lambda: b02_eligibility.run(srv, sizes=b02_sizes, seed=a.seed)),
            ("b03", lambda: b03_end_to_end.run(srv, seed=a.seed)),
            ("b04", lambda: b04_wakeup.run(srv, seed=a.seed)),
            ("b05", lambda: b05_memory.run(srv, seed=a.seed)),
            ("b07", lambda: b07_quote_slips.run_bench(srv, seed=a.seed)),
            ("b08", lambda: b08_pgqueuer.run(srv, seed=a.seed)),
            ("b09", lambda: b09_batch.run_bench(srv, seed=a.seed)),
        ]
        results: list[C.Result] = []
        failed: list[str] = []
        for name, fn in plan:
            if only and name not in only:
                continue
            C.say(f"\n>> {name} (load average {_loadavg()})")
            try:
                res = fn()
            except Exception:  # noqa: BLE001 - report and go on with the next benchmark
                traceback.print_exc()
                failed.append(name)
                continue
            res.details["load average after"] = _loadavg()
            C.print_result(res)
            results.append(res)
    total = time.perf_counter() - t0

    C.say("\n" + "=" * 100)
    C.say(f"SUMMARY ({total / 60:.1f} min; load average at the end {_loadavg()})")
    rows: list[tuple[str, ...]] = [("bench", "figure", "value", "baseline", "ratio", "target")]
    for r in results:
        for f in r.figures:
            rows.append(
                (
                    f.bench,
                    f.name,
                    f"{C.fmt(f.value)} {f.unit}".strip(),
                    f"{f.baseline_name}: {C.fmt(f.baseline)}" if f.baseline_name else "",
                    C.fmt_ratio(f.ratio, f.ratio_label) if f.ratio is not None else "",
                    f.target,
                )
            )
    widths = [min(max(len(r[i]) for r in rows), 60) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        C.say("  ".join(str(c)[:60].ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            C.say("  ".join("-" * w for w in widths))
    if failed:
        C.say(f"\nCRASHED: {', '.join(failed)} (tracebacks above)")
    if a.json_path:
        Path(a.json_path).write_text(
            json.dumps(
                {
                    "machine": info,
                    "seconds": total,
                    "failed": failed,
                    "results": [
                        {**asdict(r), "figures": [asdict(f) for f in r.figures]} for r in results
                    ],
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
        C.say(f"wrote {a.json_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
