"""run --wait: a hint when nothing moves and no runner is alive; log lines above the progress bar."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console
from rich.progress import Progress

from parecer import cli, db
from parecer.cli import main

from .factories import make_script, make_session, report_for


def test_run_wait_says_when_no_runner_is_alive(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "STALL_HINT_SECONDS", 1)
    with db.connect(db_url) as c:
        make_script(c)
        sessions = {s.session_id: s for s in (make_session(c), make_session(c))}
    result: dict[str, Any] = {}

    def wait() -> None:
        result["r"] = CliRunner().invoke(
            main,
            ["run", "acme", "qa", "--max-sessions", "2", "--wait"],
            env={"PARECER_DATABASE_URL": db_url},
        )

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(3)  # no runner: the hint comes after STALL_HINT_SECONDS without progress
    with db.connect(db_url) as c:  # a runner of our own finishes the run
        for item in c.execute("SELECT * FROM parecer.claim('w', 2)").fetchall():
            c.execute(
                "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
                (
                    item["analysis_id"],
                    item["lease_token"],
                    json.dumps(report_for(sessions[item["session_id"]])),
                    "0" * 64,
                ),
            )
    t.join(timeout=60)
    assert not t.is_alive()
    out = result["r"].output
    assert result["r"].exit_code == 0, out
    assert out.count("no runner holds a lease: start one with `parecer runner`") == 1, out


def test_log_lines_print_above_a_live_progress_bar() -> None:
    buf = io.StringIO()
    progress = Progress(console=Console(file=buf, force_terminal=True, width=80))
    logger = logging.getLogger("parecer")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        with progress, cli._logs_above(progress):
            progress.add_task("run", total=10)
            logger.warning("provider pause reason=429")
        assert "provider pause reason=429" in buf.getvalue()
        assert stream.getvalue() == ""  # not written under the bar
        logger.warning("after")
        assert "after" in stream.getvalue()  # the handler is back
        assert handler in logger.handlers
    finally:
        logger.removeHandler(handler)
