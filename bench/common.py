"""Shared plumbing for the benchmarks (bench/bNN_*.py, bench/run_all.py).

Every benchmark creates its own database ``parecer_bench_<name>`` on the server
given by ``--database-url`` (default $PARECER_DATABASE_URL, else an embedded
throwaway PostgreSQL), migrates it, installs the reference chat schema and its
adapter, loads sample sessions, measures, prints its figures and drops the
database. Benchmarks print figures; they assert nothing about timings.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT / "runner") not in sys.path:  # run from a checkout without an install
    sys.path.insert(1, str(ROOT / "runner"))

from parecer import db, paths  # noqa: E402
from parecer.config import DEFAULT_MODEL  # noqa: E402
from parecer.devkit.sample import load_sample  # noqa: E402

CLIENT = "acme-telecom"  # the sample's larger client (60% of the sessions)
SCRIPT_KEY = "bench"
TOPICS = ["cancelamento", "internet"]
KEY_LABEL = "bench"  # PARECER_KEY_LABEL of the runners: limit key bench:<MODEL>
MODEL = DEFAULT_MODEL  # the runner's default model (the stand-in answers as parecer-standin)
LIMIT_KEY = f"{KEY_LABEL}:{MODEL}"


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> dict[str, Any]:
    """The single row a query returns (dict_row connections)."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, query
    return dict(row)


# ----------------------------------------------------------------------------- figures
@dataclass
class Figure:
    """One measured number and, when there is one, the baseline it is compared with."""

    bench: str
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline: float | None = None
    ratio: float | None = None  # how value compares with the baseline (see ratio_label)
    ratio_label: str = ""  # e.g. "of ceiling", "of R", "x"
    target: str = ""  # what the design aims for, e.g. ">= 50%"
    note: str = ""

    def line(self) -> str:
        s = f"{self.name}: {fmt(self.value)} {self.unit}"
        if self.baseline_name is not None:
            s += f"  | baseline {self.baseline_name}: {fmt(self.baseline)}"
        if self.ratio is not None:
            s += f"  | ratio {fmt_ratio(self.ratio, self.ratio_label)}"
        if self.target:
            s += f"  (target {self.target})"
        if self.note:
            s += f"  [{self.note}]"
        return s


@dataclass
class Result:
    bench: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, name: str, value: float, unit: str, **kw: Any) -> Figure:
        f = Figure(self.bench, name, value, unit, **kw)
        self.figures.append(f)
        return f


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}".replace(",", " ")
    av = abs(v)
    if av >= 100:
        return f"{v:.0f}"
    if av >= 10:
        return f"{v:.1f}"
    if av >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def fmt_ratio(r: float, label: str) -> str:
    if label.startswith("%"):
        return f"{r * 100:.1f}%{label[1:]}"
    return f"{r:.3g}{label}"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = max(1, math.ceil(p / 100 * len(xs)))
    return xs[min(k, len(xs)) - 1]


def say(msg: str) -> None:
    print(msg, flush=True)


def print_result(res: Result) -> None:
    say(f"== {res.bench}: {res.title} ({res.seconds:.0f} s)")
    for f in res.figures:
        say("   " + f.line())


# ----------------------------------------------------------------------------- arguments
# How a benchmark's parecer side gets a batch's items and prompts (path_cpu.py, b08_pgqueuer.py).
CLAIM_PATHS = {
    "runner": "claim_with_prompts, as the runner (claim then prompts_for where it does not exist)",
    "prompts-for": "claim, then prompts_for of the batch",
    "prompt-for": "claim, then prompt_for of each item",
}


def add_claim_path_arg(p: argparse.ArgumentParser) -> None:
    """--claim-path, one of CLAIM_PATHS (default runner)."""
    p.add_argument(
        "--claim-path",
        choices=list(CLAIM_PATHS),
        default="runner",
        help="how a batch's items and prompts are fetched: "
        + "; ".join(f"{k}: {v}" for k, v in CLAIM_PATHS.items()),
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        default=os.environ.get("PARECER_DATABASE_URL"),
        help="server to create the benchmark database on (default $PARECER_DATABASE_URL, "
        "else an embedded throwaway PostgreSQL)",
    )
    p.add_argument("--keep", action="store_true", help="keep the benchmark database afterwards")
    p.add_argument("--seed", type=int, default=7, help="sample data seed")


@contextmanager
def server(url: str | None) -> Iterator[str]:
    """The server URL, or an embedded PostgreSQL for the duration."""
    if url:
        yield url
        return
    from parecer.devkit.embedded import EmbeddedPostgres

    say("no --database-url / $PARECER_DATABASE_URL: starting an embedded PostgreSQL")
    with EmbeddedPostgres() as srv:
        yield srv.url


def _qi(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextmanager
def bench_database(server_url: str, name: str, *, keep: bool = False) -> Iterator[str]:
    """A fresh database ``parecer_bench_<name>``: migrated, reference schema + adapter.

    It is dropped first (FORCE): two people benchmarking on one server set
    PARECER_BENCH_TAG to tell their databases apart (``parecer_bench_<tag>_<name>``)."""
    tag = os.environ.get("PARECER_BENCH_TAG", "")
    dbname = f"parecer_bench_{tag + '_' if tag else ''}{name}"
    with psycopg.connect(server_url, autocommit=True) as c:
        c.add_notice_handler(lambda d: None)  # "does not exist, skipping"
        c.execute(f"DROP DATABASE IF EXISTS {_qi(dbname)} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {_qi(dbname)}")
    url = make_conninfo(server_url, dbname=dbname)
    try:
        db.migrate(url)
        db.install_sql(url, paths.host_chat_schema())
        db.install_adapter(url, "reference")
        yield url
    finally:
        if keep:
            say(f"   kept database {dbname}")
        else:
            with psycopg.connect(server_url, autocommit=True) as c:
                c.execute(f"DROP DATABASE IF EXISTS {_qi(dbname)} WITH (FORCE)")


def connect(url: str, **kw: Any) -> psycopg.Connection[dict[str, Any]]:
    return db.connect(url, application_name=kw.pop("application_name", "parecer-bench"), **kw)


def load(url: str, sessions: int, seed: int, *, analyze: bool = True) -> float:
    """Load (or grow to) ``sessions`` sample sessions; VACUUM ANALYZE; returns load seconds."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as c:  # load_sample reads tuples
        load_sample(c, sessions=sessions, seed=seed)
    secs = time.perf_counter() - t0
    if analyze:
        vacuum_analyze(url)
    return secs


def vacuum_analyze(url: str, tables: Sequence[str] = ()) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        if tables:
            for t in tables:
                c.execute(f"VACUUM ANALYZE {t}")
        else:
            c.execute("VACUUM ANALYZE")


def set_setting(conn: psycopg.Connection[Any], name: str, value: str) -> None:
    conn.execute("SELECT parecer.set_setting(%s, %s)", (name, value))


def make_script(
    conn: psycopg.Connection[Any],
    client: str = CLIENT,
    key: str = SCRIPT_KEY,
    topics: Sequence[str] = TOPICS,
) -> dict[str, Any]:
    row = conn.execute(
        "SELECT * FROM parecer.create_script_version(%s, %s, %s, topics => %s, activate => true)",
        (client, key, "Avalie a qualidade do atendimento e o desfecho da conversa.", list(topics)),
    ).fetchone()
    assert row is not None
    return dict(row)


def client_sessions(
    conn: psycopg.Connection[Any],
    client: str = CLIENT,
    *,
    limit: int | None = None,
    ended_only: bool = True,
) -> list[str]:
    """Session ids of a client, newest ended first (any length: enqueue accepts every session)."""
    rows = conn.execute(
        "SELECT s.session_id FROM parecer.source_sessions s JOIN parecer.source_clients c "
        "ON c.client_id = s.client_id WHERE c.slug = %s"
        + (" AND s.ended_at IS NOT NULL" if ended_only else "")
        + " ORDER BY s.ended_at DESC NULLS LAST, s.session_id"
        + (" LIMIT %s" if limit else ""),
        (client, limit) if limit else (client,),
    ).fetchall()
    return [r["session_id"] for r in rows]


def sessions_needed(items: int, share: float = 0.6, ended: float = 0.9) -> int:
    """Sample sessions to load so that CLIENT has ``items`` ended sessions, with margin."""
    return int(items / (share * ended) * 1.05) + 100


def no_rate_limit(conn: psycopg.Connection[Any], key: str = LIMIT_KEY) -> None:
    """Lift the shared limiter for a key so it is not what a benchmark measures."""
    conn.execute(
        "SELECT * FROM parecer.set_rate_limit(%s, rpm => 1000000, tpm => 1000000000)", (key,)
    )


def db_now(conn: psycopg.Connection[Any]) -> Any:
    return conn.execute("SELECT clock_timestamp() AS t").fetchone()["t"]  # type: ignore[index]


# ----------------------------------------------------------------------------- runner processes
def runner_env(url: str, base_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARECER_", "OPENAI_"))}
    env.update(
        {
            "PARECER_DATABASE_URL": url,
            "OPENAI_BASE_URL": base_url,
            "OPENAI_API_KEY": "bench-not-a-key",
            "PARECER_KEY_LABEL": KEY_LABEL,
            "PYTHONPATH": str(ROOT / "runner"),
        }
    )
    env.update(extra)
    return env


def spawn_runner(
    url: str, base_url: str, log_path: Path, *args: str, **env: str
) -> subprocess.Popen[bytes]:
    """``python -m parecer.cli runner ARGS`` with its log (stderr) in log_path."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by the child's exit / GC
    return subprocess.Popen(
        [sys.executable, "-m", "parecer.cli", "runner", *args],
        env=runner_env(url, base_url, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_runners(
    procs: Sequence[subprocess.Popen[bytes]], timeout: float = 60.0
) -> list[int | None]:
    for p in procs:
        if p.poll() is None:
            p.terminate()  # SIGTERM: stop claiming, finish or release in-flight items, exit 0
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def wait_listening(conn: psycopg.Connection[Any], n: int, timeout: float = 30.0) -> None:
    """Wait until n runner LISTEN connections are up (the runners are idle or working)."""
    deadline = time.monotonic() + timeout
    while True:
        k = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'parecer-listen'"
        ).fetchone()["n"]  # type: ignore[index]
        if k >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {k} of {n} runners are listening after {timeout:.0f}s")
        time.sleep(0.05)


def read_status(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM (KiB) and cpu_s (user + system seconds) of a live process; empty once it is gone."""
    out: dict[str, float] = {}
    with suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


# ----------------------------------------------------------------------------- machine
def machine_info(server_url: str | None) -> dict[str, Any]:
    mem = cpu = None
    with suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        nproc = os.cpu_count() or 0
    info: dict[str, Any] = {
        "nproc": nproc,
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    if server_url:
        with psycopg.connect(server_url, autocommit=True) as c:
            info["postgresql"] = c.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
            for s in ("shared_buffers", "work_mem", "max_connections", "synchronous_commit"):
                info[f"pg {s}"] = c.execute(f"SHOW {s}").fetchone()[0]  # type: ignore[index]
        host = conninfo_to_dict(server_url).get("host") or "local socket"
        info["pg host"] = "embedded (unix socket)" if str(host).startswith("/") else host
    return info


def print_machine(info: dict[str, Any]) -> None:
    say("machine:")
    for k, v in info.items():
        say(f"   {k}: {v}")
