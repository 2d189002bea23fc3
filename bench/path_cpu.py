#!/usr/bin/env python3
"""The server's own time per item of benchmark 8's path, for comparing two versions of the SQL.

Benchmark 8 drains with 8 workers and a client on the same 2 cores, and this VM's speed
moves by 20-30% between minutes: a change worth 10% of the server's CPU per item is lost
in its noise. This measures the same path with nothing else in it: a PL/pgSQL procedure
on one connection runs ``parecer.claim_with_prompts(worker, 10)`` (in a version without
it, ``parecer.claim`` then ``parecer.prompts_for`` of the ten), then
``parecer.mark_done_many`` of their ten valid grounded reports (with usage), and commits
after each call as the runner's transactions do (``synchronous_commit = off`` for this
connection only: no WAL flush wait in the figure), for ``--items`` items. The queue is
refilled and vacuumed between rounds (not timed).

With ``--against TREE`` (another checkout, e.g. ``git worktree add /tmp/old <commit>``)
the same runs in a second database migrated by that checkout's parecer, rounds
interleaved; figures are the minimum and the median over ``--rounds``, per side, and
their ratios (this tree / the other).

With ``--per-batch 1,10,30`` each round runs once per claim size (ten is the default, as
benchmark 8 claims), and a straight line through the medians splits the time into what a
batch costs whatever its size (its statements' start-up, its two commits) and what each
item in it adds.

Besides the wall time of each round ("server time"), the backend's own CPU time
("backend CPU", from ``/proc/<pid>/schedstat``: time on a core, not time waiting for one)
when the server runs on this host: the steadier figure of the two on a busy VM.

With ``--claim-path prompts-for`` or ``prompt-for`` the procedure claims with
``parecer.claim`` and then asks ``prompts_for`` of the batch, or ``prompt_for`` of each
item (a transaction each, as benchmark 1's description has it), instead of
``claim_with_prompts``: a change to ``claim`` is measured on the paths that use it.

    python bench/path_cpu.py --items 1000 --rounds 15 [--against /tmp/old] [--per-batch 1,10,30]
        [--claim-path runner|prompts-for|prompt-for]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

import common as C

# Run by each side's own checkout (its bench/ and runner/ first on the path): a database
# with n two-message sessions of client b08, a script, one valid grounded report per
# session in public.rep, every session queued. Only functions every version has.
SETUP = """
import sys
import common as C, b08_pgqueuer as B
from b01_queue import grounded_reports
server, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
url = C.bench_database(server, name, keep=True).__enter__()
B.two_message_sessions(url, n)
C.vacuum_analyze(url)
with C.connect(url) as c:
    script = C.make_script(c, client=B.TWO_MESSAGE_CLIENT)
    sessions = C.client_sessions(c, B.TWO_MESSAGE_CLIENT, limit=n)
    reports = grounded_reports(c, sessions)
    c.execute("CREATE TABLE public.rep (session_id text PRIMARY KEY, report jsonb NOT NULL)")
    with c.cursor().copy("COPY public.rep FROM STDIN") as cp:
        for k, v in reports.items():
            cp.write_row((k, v))
    c.execute("SELECT count(*) FROM parecer.enqueue(%s, %s, force_reprocess => true)",
              (sessions, script["script_id"]))
print(url)
"""

PATH = """
CREATE PROCEDURE public.bench_path(batches integer, per_batch integer) LANGUAGE plpgsql AS $$
DECLARE
    v_c      parecer.claimed_item[];
    v_hashes text[];
    v_items  jsonb;
    v_done   integer;
BEGIN
    FOR b IN 1 .. batches LOOP
        CLAIM_AND_PROMPTS
        v_items := (SELECT jsonb_agg(jsonb_build_object(
                               'analysis_id', x.analysis_id, 'lease_token', x.lease_token,
                               'report', (SELECT r.report FROM public.rep r WHERE r.session_id = x.session_id),
                               'model', 'bench-noop', 'prompt_hash', v_hashes[x.ordinality],
                               'usage', '{"input_tokens": 1200, "cached_input_tokens": 0, "output_tokens": 300}'::jsonb))
                    FROM unnest(v_c) WITH ORDINALITY x);
        SELECT count(*) INTO v_done FROM parecer.mark_done_many(v_items) m WHERE m.outcome = 'done';
        IF v_done <> cardinality(v_c) THEN
            RAISE EXCEPTION 'mark_done_many refused % of % items', cardinality(v_c) - v_done, cardinality(v_c);
        END IF;
        COMMIT;
    END LOOP;
END
$$;
"""
# How a version claims and gets its prompts: claim_with_prompts where it exists (as the
# runner), else claim then prompts_for.
CLAIM_WITH_PROMPTS = """
        SELECT array_agg(ROW(c.analysis_id, c.lease_token, c.attempt, c.client_slug, c.session_id, c.script_id,
                             c.script_key, c.script_version, c.model, c.lease_expires_at, c.retry_count)::parecer.claimed_item
                         ORDER BY c.ord),
               array_agg(c.prompt_hash ORDER BY c.ord)
          INTO v_c, v_hashes
        FROM parecer.claim_with_prompts('bench', per_batch, lease_seconds => 600, sync_commit => false) WITH ORDINALITY c(
            analysis_id, lease_token, attempt, client_slug, session_id, script_id, script_key, script_version, model,
            lease_expires_at, retry_count, instructions, input, report_schema, prompt_hash, omitted_messages,
            input_tokens, repair_calls, sqlstate, message, ord);
        EXIT WHEN v_c IS NULL;
        COMMIT;
"""
CLAIM_THEN_PROMPTS = """
        SELECT array_agg(c) INTO v_c FROM parecer.claim('bench', per_batch, lease_seconds => 600, sync_commit => false) c;
        EXIT WHEN v_c IS NULL;
        COMMIT;
        v_hashes := ARRAY(SELECT p.prompt_hash
                          FROM parecer.prompts_for(ARRAY(SELECT (x).analysis_id FROM unnest(v_c) x)) p);
        COMMIT;
"""
# benchmark 1's description: claim, then prompt_for of each item (a transaction each)
CLAIM_THEN_PROMPT = """
        SELECT array_agg(c) INTO v_c FROM parecer.claim('bench', per_batch, lease_seconds => 600, sync_commit => false) c;
        EXIT WHEN v_c IS NULL;
        COMMIT;
        v_hashes := '{}';
        FOR i IN 1 .. cardinality(v_c) LOOP
            v_hashes := v_hashes || (SELECT p.prompt_hash FROM parecer.prompt_for((v_c[i]).analysis_id) p);
            COMMIT;
        END LOOP;
"""
REFILL = "SELECT count(*) FROM parecer.enqueue(ARRAY(SELECT session_id FROM public.rep), 1, force_reprocess => true)"


def make_database(
    server: str, tree: Path, name: str, sessions: int, claim_path: str = "runner"
) -> str:
    """A database set up by ``tree``'s own parecer (migrations and API of that version), its
    procedure claiming by ``claim_path`` (C.CLAIM_PATHS)."""
    env = {**os.environ, "PYTHONPATH": f"{tree / 'bench'}{os.pathsep}{tree / 'runner'}"}
    out = subprocess.run(
        [sys.executable, "-c", SETUP, server, name, str(sessions)],
        cwd=tree / "bench",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    url = out.stdout.strip().splitlines()[-1]
    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute(
            "SELECT to_regprocedure('parecer.claim_with_prompts(text, integer, integer, text, boolean)')"
            " IS NOT NULL"
        ).fetchone()
        fused = bool(row and row[0])
        claim = {
            "runner": CLAIM_WITH_PROMPTS if fused else CLAIM_THEN_PROMPTS,
            "prompts-for": CLAIM_THEN_PROMPTS,
            "prompt-for": CLAIM_THEN_PROMPT,
        }[claim_path]
        c.execute(PATH.replace("CLAIM_AND_PROMPTS", claim))
    return url


def backend_cpu_ns(pid: int, dbname: str) -> int | None:
    """The CPU time (ns, /proc/<pid>/schedstat) of the backend ``pid`` serving ``dbname``:
    time on a core only, not time waiting for one (the VM's other processes, this script).
    None when that backend is not a process of this host (a remote server)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
            on_cpu = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # a backend's title: "postgres: <user> <database> <host> <state>"
    return on_cpu if title.startswith("postgres") and f" {dbname} " in f"{title} " else None


def add_min_median(
    res: C.Result,
    name: str,
    this: list[float],
    other: list[float] | None,
    rounds: int,
    against: Path | None,
) -> None:
    """Two result lines, the minimum and the median of ``this`` (µs per item), each with its
    ratio to ``other``'s when the run has another checkout."""
    for stat, f in (("min", min), ("median", statistics.median)):
        res.add(
            f"{name}, {stat} of {rounds} rounds",
            f(this),
            "µs",
            baseline_name=f"{against}" if other else None,
            baseline=f(other) if other else None,
            ratio=f(this) / f(other) if other else None,
            ratio_label="x",
        )


def per_batch_sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.split(",") if x.strip()]
    if not sizes or any(not 1 <= n <= 100 for n in sizes):
        raise argparse.ArgumentTypeError(
            "claim sizes between 1 and 100 (max_claim_items), e.g. 1,10,30"
        )
    return sizes


def fixed_and_marginal(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line through (items per batch, µs per batch): the cost of a batch
    whatever its size (intercept) and of each item in it (slope)."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(p)
    p.add_argument("--items", type=int, default=1000, help="items per round")
    p.add_argument("--rounds", type=int, default=15, help="rounds per side, interleaved")
    p.add_argument("--against", type=Path, help="another checkout to compare with")
    p.add_argument(
        "--per-batch",
        type=per_batch_sizes,
        default=[10],
        help="items per claim (and per mark_done_many), e.g. 1,10,30: with several, also the"
        " cost of a batch whatever its size and of each item in it",
    )
    C.add_claim_path_arg(p)
    a = p.parse_args(argv)
    sides = {"this tree": C.ROOT, **({"other": a.against.resolve()} if a.against else {})}
    sizes: list[int] = a.per_batch
    res = C.Result(
        "path",
        f"claim {','.join(map(str, sizes))} with prompts ({a.claim_path}: "
        f"{C.CLAIM_PATHS[a.claim_path]}), mark_done_many of as many, {a.items} items, one connection",
    )
    t0 = time.perf_counter()
    with C.server(a.database_url) as srv:
        urls = {
            side: make_database(srv, tree, f"path_{i}", a.items, a.claim_path)
            for i, (side, tree) in enumerate(sides.items())
        }
        conns = {
            side: psycopg.connect(url, autocommit=True, options="-c synchronous_commit=off")
            for side, url in urls.items()
        }
        times: dict[tuple[str, int], list[float]] = {(s, n): [] for s in sides for n in sizes}
        # the backend's own CPU per item (schedstat), when the server runs on this host
        cpus: dict[tuple[str, int], list[float]] = {(s, n): [] for s in sides for n in sizes}
        backends = {
            side: (c.info.backend_pid, str(conninfo_to_dict(urls[side])["dbname"]))
            for side, c in conns.items()
        }
        try:
            for r in range(a.rounds):
                for n in sizes:
                    for side in list(sides)[:: 1 if r % 2 == 0 else -1]:
                        c = conns[side]
                        c.execute("VACUUM ANALYZE parecer.analyses")
                        batches = max(1, a.items // n)
                        done = min(batches * n, a.items)
                        cpu0 = backend_cpu_ns(*backends[side])
                        t = time.perf_counter()
                        c.execute("CALL public.bench_path(%s, %s)", (batches, n))
                        times[side, n].append((time.perf_counter() - t) / done * 1e6)
                        cpu1 = backend_cpu_ns(*backends[side])
                        if cpu0 is not None and cpu1 is not None:
                            cpus[side, n].append((cpu1 - cpu0) / 1e3 / done)
                        c.execute(REFILL)
        finally:
            for side, c in conns.items():
                c.close()
                if not a.keep:
                    with psycopg.connect(srv, autocommit=True) as s:
                        dbname = conninfo_to_dict(urls[side])["dbname"]
                        s.execute(f"DROP DATABASE IF EXISTS {C._qi(str(dbname))} WITH (FORCE)")
    for n in sizes:
        label = "" if sizes == [10] else f", claims of {n}"
        this = times["this tree", n]
        other = times.get(("other", n))
        add_min_median(res, f"server time per item{label}", this, other, a.rounds, a.against)
        cpu_this, cpu_other = cpus["this tree", n], cpus.get(("other", n), [])
        if cpu_this and (cpu_other or not other):
            add_min_median(
                res, f"backend CPU per item{label}", cpu_this, cpu_other, a.rounds, a.against
            )
    if len(sizes) > 1:
        for side in sides:
            fixed, each = fixed_and_marginal(
                [(n, statistics.median(times[side, n]) * n) for n in sizes]
            )
            who = "" if side == "this tree" else f" ({a.against})"
            res.add(f"a batch's own cost, whatever its size{who}", fixed, "µs")
            res.add(f"each item's cost in a batch{who}", each, "µs")
    res.seconds = time.perf_counter() - t0
    C.print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
