"""bench/b08_pgqueuer.py's parecer side drains a small queue by each ``--claim-path``
(claim_with_prompts; claim then prompts_for; claim then prompt_for per item), every batch
acknowledged by one mark_done_many of valid grounded reports, through the public API only.
pgqueuer's side needs the bench extra and is not run here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DRAIN = """
import asyncio, sys
import common as C, b08_pgqueuer as B
server, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with C.bench_database(server, "b08_paths") as url:
    B.two_message_sessions(url, n)
    script, sessions, reports = B.parecer_work(url, B.TWO_MESSAGE_CLIENT, n)
    with C.connect(url) as c:
        c.execute("SELECT * FROM parecer.enqueue(%s, %s)", (sessions, script["script_id"]))
    B.use_claim_path(path)

    async def drain() -> int:
        conn = await B.connect(url)
        try:
            return await B.parecer_worker(conn, "w1", reports, None)
        finally:
            await conn.close()

    drained = asyncio.run(drain())
    with C.connect(url) as c:
        done = c.execute("SELECT count(*) AS n FROM parecer.reports").fetchone()["n"]
    print(B.claim_label(), drained, done)
"""


@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("runner", "claim_with_prompts10"),
        ("prompts-for", "claim10+prompts_for"),
        ("prompt-for", "claim10+prompt_for"),
    ],
)
def test_b08_drains_by_each_claim_path(pg_server_url: str, path: str, label: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", DRAIN, pg_server_url, path, "23"],
        cwd=ROOT / "bench",
        env={
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'bench'}{os.pathsep}{ROOT / 'runner'}",
            "PARECER_BENCH_TAG": f"test{os.getpid()}{path.replace('-', '')}",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [label, "23", "23"]


def test_b08_refuses_an_unknown_claim_path() -> None:
    out = subprocess.run(
        [sys.executable, "bench/b08_pgqueuer.py", "--claim-path", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "--claim-path" in out.stderr
