"""The chaos harness (parecer.devkit.chaos), short form: runner processes under a fault mix,
SIGKILLs with restarts, a SIGSTOP past the lease, a cut database connection — and
every queued item still ends done or failed with its reason, none twice, none stuck.

bench/chaos.py runs the long form (minutes, thousands of items); docs/reliability.md
reports one such run. This one is sized to take well under a minute on two cores (not asserted: speed
figures belong in benchmarks).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from parecer.devkit import chaos


@pytest.mark.slow
@pytest.mark.parametrize(
    "runner_opts",
    [{}, {"claim_ahead": 8, "ack_window_ms": 250}],
    ids=["default", "claim-ahead"],
)
def test_chaos_every_item_settles_once_with_reason(
    db_url: str, tmp_path: Path, runner_opts: dict[str, int]
) -> None:
    """Also with --claim-ahead and a long ack window: items waiting in a killed or stopped
    runner, and reports waiting in its buffer, end as every other item does."""
    cfg = chaos.ChaosConfig(
        **runner_opts,  # type: ignore[arg-type]
        items=200,
        runners=3,
        concurrency=4,
        fault_rate=0.25,
        seed=20240611,
        latency_ms=(50, 300),
        lease_seconds=5,
        request_timeout=1.5,
        timeout_delay_s=2.5,
        minutes=9 / 60,
        chaos_start_s=3.0,
        kills=2,
        stops=1,
        cuts=2,
        stop_extra_s=(1.5, 2.5),
        restart_delay_s=(0.3, 1.0),
        settle_seconds=35.0,
        poll_seconds=2.0,
        shutdown_grace=1.0,
        log_dir=tmp_path / "logs",
        progress_every_s=3600.0,
    )
    lines: list[str] = []
    res = chaos.run_chaos(db_url, cfg, log=lines.append)
    f = res.figures
    report = res.format() + "\n" + "\n".join(lines)
    assert res.violations == [], report

    items = f["items"]
    assert items["total"] == 200 and items["stuck"] == 0, report
    assert items["done"] + items["failed_terminal"] == 200
    assert items["done"] >= 150, report  # a quarter of the calls fault; most items still succeed
    assert f["completed_more_than_once"] == 0 and f["reports"] == items["done"]
    assert f["retry_count_mismatches"] == 0 and f["failed_attempts_blaming_429"] == 0

    # the chaos really happened, and really hit work in flight
    ch = f["chaos"]
    assert ch["kills"] >= 1 and ch["restarts"] == ch["kills"], report
    assert ch["stops"] == 1 and ch["conts"] == 1, report
    assert ch["connection_cuts"] >= 1, report
    assert f["expired_attempts"]["of_killed_runners"] >= 1, report  # recovered through lease expiry
    assert f["stopped_runner_claims_lost"] >= 1, report  # the frozen runner lost its leases...
    assert f["stopped_runner_late_results_accepted"] == 0, (
        report
    )  # ...and its late results were refused
    assert f["faults_injected"].get("rate_limit", 0) >= 1 and f["releases_429"] >= 1, report
    assert sum(f["faults_injected"].values()) >= 20, report

    # logs: checked for transcript text, the prompt and the key (and they exist)
    scan = f["log_scan"]
    assert scan["needles"]["transcript_text"] >= 50 and scan["bytes"] > 0
    assert scan["hits"] == {"transcript_text": 0, "api_key": 0, "prompt_text": 0}, report
