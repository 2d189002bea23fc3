"""bench/path_cpu.py, the benchmark that compares two versions of the SQL path, runs end to end
(a few items, one round, this tree against itself): its procedure drives claim, prompts_for and
mark_done_many through the public API and refuses a batch that is not all done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_path_cpu_runs_this_tree_against_itself(pg_server_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "bench/path_cpu.py", "--database-url", pg_server_url, "--items", "30",
         "--rounds", "1", "--against", str(ROOT)],
        cwd=ROOT,
        env={**os.environ, "PARECER_BENCH_TAG": f"test{os.getpid()}"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "server time per item, min of 1 rounds" in out.stdout
    assert "ratio" in out.stdout
