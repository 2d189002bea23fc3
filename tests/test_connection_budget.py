"""The connection budget: ten runners at concurrency 16 on a server with max_connections = 50.

Each runner holds at most --pool-max connections plus one LISTEN connection, whatever its
concurrency: 10 x (3 + 1) = 40 leaves room for the host application. Before issue 16 a
runner could hold min(concurrency, 8) + 2 + 1 = 11, and ten of them locked the server out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from parecer import db, paths
from parecer.devkit.embedded import EmbeddedPostgres
from parecer.devkit.standin import Standin, StandinConfig

from .helpers import one
from .test_runner import SECRET_KEY, make_run


@pytest.mark.slow
def test_ten_runners_concurrency_16_fit_in_50_connections() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "pg"
        srv = EmbeddedPostgres(data, keep=True).start()
        with db.connect(srv.url) as c:  # a throwaway server of our own: ALTER SYSTEM is fine here
            c.execute("ALTER SYSTEM SET max_connections = 50")
        srv.stop()
        srv = EmbeddedPostgres(data, keep=True).start()
        try:
            url = srv.url
            with db.connect(url) as c:
                assert one(c, "SHOW max_connections")["max_connections"] == "50"
            db.migrate(url)
            db.install_sql(url, paths.host_chat_schema())
            db.install_adapter(url, "reference")
            with db.connect(url) as c:
                c.execute("SELECT parecer.set_setting('default_rpm', '1000000')")
                c.execute("SELECT parecer.set_setting('default_tpm', '1000000000')")
                make_run(c, 300)
            peak = 0
            with Standin(StandinConfig(latency_ms=(20, 80), seed=9)) as s:
                env = {
                    **os.environ,
                    "PARECER_DATABASE_URL": url,
                    "OPENAI_BASE_URL": s.url,
                    "OPENAI_API_KEY": SECRET_KEY,
                }
                procs = [
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "parecer.cli",
                            "runner",
                            "--once",
                            "--concurrency",
                            "16",
                            "--worker-id",
                            f"r{i}",
                        ],
                        env=env,
                        text=True,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                    )
                    for i in range(10)
                ]
                with db.connect(url) as c:  # the host application's one connection
                    while any(p.poll() is None for p in procs):
                        n = one(
                            c,
                            "SELECT count(*) AS n FROM pg_stat_activity"
                            " WHERE application_name LIKE 'parecer-%'",
                        )["n"]
                        peak = max(peak, n)
                        time.sleep(0.05)
                outs = [p.communicate(timeout=180) for p in procs]
            errs = "".join(e for _, e in outs)
            assert [p.returncode for p in procs] == [0] * 10, errs[-2000:]
            assert "too many clients" not in errs and "Traceback" not in errs
            print(f"peak parecer connections: {peak}")
            assert peak <= 40, peak
            with db.connect(url) as c:
                st = one(
                    c,
                    "SELECT count(*) FILTER (WHERE status = 'done') AS done, count(*) AS n"
                    " FROM parecer.analyses",
                )
            assert st == {"done": 300, "n": 300}
        finally:
            srv.stop()
