"""bench/path_cpu.py, the benchmark that compares two versions of the SQL path, runs end to end
(a few items, one round, this tree against itself): its procedure drives claim_with_prompts
(or claim and prompts_for) and mark_done_many through the public API and refuses a batch that
is not all done."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _path_cpu(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "bench/path_cpu.py", "--database-url", url, "--rounds", "1", *args],
        cwd=ROOT,
        env={**os.environ, "PARECER_BENCH_TAG": f"test{os.getpid()}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_path_cpu_runs_this_tree_against_itself(pg_server_url: str) -> None:
    out = _path_cpu(pg_server_url, "--items", "30", "--against", str(ROOT))
    assert "server time per item, min of 1 rounds" in out.stdout
    assert "ratio" in out.stdout
    # the test server runs on this host: each backend's own CPU time is read too
    assert "backend CPU per item, median of 1 rounds" in out.stdout


def test_path_cpu_splits_a_batch_s_cost_from_its_items(pg_server_url: str) -> None:
    """--per-batch with several claim sizes: a figure per size, then the line through them."""
    out = _path_cpu(pg_server_url, "--items", "20", "--per-batch", "1,10")
    assert "claims of 1, min of 1 rounds" in out.stdout
    assert "claims of 10, median of 1 rounds" in out.stdout
    assert "a batch's own cost, whatever its size" in out.stdout
    assert "each item's cost in a batch" in out.stdout


def test_path_cpu_measures_the_claim_then_prompt_paths(pg_server_url: str) -> None:
    """--claim-path: claim then prompts_for of the batch, or prompt_for of each item; every
    batch still all done (the procedure refuses one that is not)."""
    for path in ("prompts-for", "prompt-for"):
        out = _path_cpu(pg_server_url, "--items", "20", "--claim-path", path)
        assert f"({path}: claim, then prompt" in out.stdout
        assert "server time per item, min of 1 rounds" in out.stdout


def test_path_cpu_refuses_a_claim_size_beyond_max_claim_items() -> None:
    out = subprocess.run(
        [sys.executable, "bench/path_cpu.py", "--per-batch", "10,500"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "claim sizes between 1 and 100" in out.stderr
