"""The CLI through click's CliRunner against real PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from parecer import db
from parecer.cli import main
from parecer.devkit.standin import Standin, StandinConfig

from .factories import make_client, make_session

ROOT = Path(__file__).resolve().parents[1]


def cli(
    url: str | None, *args: str, input: str | None = None, env: dict[str, str] | None = None
) -> Any:
    runner = CliRunner()
    e = {"PARECER_DATABASE_URL": url} if url else {"PARECER_DATABASE_URL": ""}
    e.update(env or {})
    return runner.invoke(main, list(args), input=input, env=e, catch_exceptions=False)


@pytest.fixture
def seeded(db_url: str) -> str:
    with db.connect(db_url) as c:
        make_client(c, "acme")
        for _ in range(6):
            make_session(c)
    return db_url


def test_scripts_commands(seeded: str) -> None:
    r = cli(
        seeded,
        "scripts",
        "create",
        "acme",
        "qa",
        "--file",
        "-",
        "--topic",
        "cancelamento",
        "--topic",
        "internet",
        "--activate",
        "--json",
        input="Avalie o atendimento.",
    )
    assert r.exit_code == 0, r.output
    row = json.loads(r.output)
    assert (row["client_slug"], row["script_key"], row["version"], row["is_active"]) == (
        "acme",
        "qa",
        1,
        True,
    )
    assert row["topics"] == ["cancelamento", "internet"]
    r = cli(seeded, "scripts", "create", "acme", "qa", "--file", "-", input="v2")
    assert r.exit_code == 0 and "v2" in r.output
    rows = json.loads(cli(seeded, "scripts", "list", "acme", "--json").output)
    assert [(x["version"], x["is_active"]) for x in rows] == [(2, False), (1, True)]
    r = cli(seeded, "scripts", "show", "acme", "qa")
    assert r.exit_code == 0 and "Avalie o atendimento." in r.output
    assert cli(seeded, "scripts", "activate", "acme", "qa", "2").exit_code == 0
    assert json.loads(cli(seeded, "scripts", "show", "acme", "qa", "--json").output)["version"] == 2


def test_run_dry_real_status_prompt_export_retry(seeded: str) -> None:
    cli(
        seeded,
        "scripts",
        "create",
        "acme",
        "qa",
        "--file",
        "-",
        "--topic",
        "internet",
        "--activate",
        input="x",
    )
    dry = json.loads(cli(seeded, "run", "acme", "qa", "--dry-run", "--json").output)
    assert dry["dry_run"] is True and dry["eligible"] == 6 and dry["run_id"] is None
    with Standin(StandinConfig(seed=1)) as s:
        r = cli(
            seeded,
            "run",
            "acme",
            "qa",
            "--max-sessions",
            "4",
            "--process",
            "--json",
            env={"OPENAI_BASE_URL": s.url, "OPENAI_API_KEY": "sk-test"},
        )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    assert out["summary"]["processed"] == 4 and out["summary"]["remaining"] == 0
    st = json.loads(cli(seeded, "status", "--json").output)
    assert st["queue"][0]["done"] == 4 and st["queue"][0]["client_slug"] == "acme"
    assert {"totals", "queue", "clients", "spend_today"} <= set(st)
    assert st["totals"]["done_last_hour"] == 4
    with db.connect(seeded) as c:
        aid = c.execute("SELECT analysis_id FROM parecer.reports LIMIT 1").fetchone()["analysis_id"]  # type: ignore[index]
    p = json.loads(cli(seeded, "prompt", str(aid), "--json").output)
    assert set(p) == {
        "instructions",
        "input",
        "report_schema",
        "prompt_hash",
        "model",
        "omitted_messages",
        "input_tokens",
        "repair_calls",
    }
    jl = cli(seeded, "reports", "export", "acme", "--format", "jsonl")
    lines = [json.loads(x) for x in jl.stdout.splitlines() if x.strip()]
    assert len(lines) == 4 and lines[0]["report"]["schema_version"] == "parecer.report.v1"
    cs = cli(seeded, "reports", "export", "acme", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(cs.stdout)))
    assert len(rows) == 4 and {"session_id", "outcome", "summary", "report"} <= set(rows[0])
    assert json.loads(cli(seeded, "retry", "--client", "acme", "--json").output) == {"requeued": 0}


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["run", "nope", "qa", "--dry-run"],
            'unknown client "nope" [PR001] — hint: the clients are the slugs',
        ),
        (["run", "acme", "qa", "--dry-run", "--tag-filter", '{"mode":"maybe"}'], "[PR004] — hint:"),
        (
            ["run", "acme", "qa", "--max-sessions", "100000"],
            "outside 1..500 [PR005] — hint: pass --max-sessions between 1 and the setting",
        ),
        (["run", "acme", "missing", "--dry-run"], "[PR002]"),
        (["retry"], "[PR010]"),
        (["prompt", "not-a-uuid"], "not a uuid"),
        (["run", "acme", "qa", "--no-tags", "--any-tag", "vip"], "only one of"),
    ],
)
def test_user_errors_are_one_line(seeded: str, args: list[str], needle: str) -> None:
    cli(seeded, "scripts", "create", "acme", "qa", "--file", "-", "--activate", input="x")
    r = cli(seeded, *args)
    assert r.exit_code != 0
    assert needle in r.output
    assert "Traceback" not in r.output


def test_no_database_and_unreachable_database() -> None:
    r = cli(None, "status")
    assert r.exit_code != 0 and "PARECER_DATABASE_URL" in r.output
    r = cli("postgresql://nobody@127.0.0.1:1/none?connect_timeout=2", "status")
    assert (
        r.exit_code != 0
        and "cannot connect to the database" in r.output
        and "Traceback" not in r.output
    )


def test_db_commands(empty_db_url: str) -> None:
    r = cli(empty_db_url, "db", "migrate")
    assert r.exit_code == 0 and "applied" in r.output
    assert "up to date" in cli(empty_db_url, "db", "migrate").output
    st = json.loads(cli(empty_db_url, "db", "status", "--json").output)
    assert st and all(x["state"] == "applied" for x in st)
    assert cli(empty_db_url, "db", "reference-schema").exit_code == 0
    assert cli(empty_db_url, "db", "rollback", "--count", "1", "--yes").exit_code == 0
    st = json.loads(cli(empty_db_url, "db", "status", "--json").output)
    assert st[-1]["state"] == "pending"


def _walk(cmd: click.Command, path: str = "parecer") -> list[tuple[str, click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            out += _walk(sub, f"{path} {name}")
    return out


def test_every_command_and_option_has_help() -> None:
    for path, cmd in _walk(main):
        assert cmd.help, f"{path} has no help"
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert p.help, f"{path} {p.opts} has no help"


def test_readme_commands_exist() -> None:
    commands = {path for path, _ in _walk(main)}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", readme, re.S)
    assert blocks
    used = 0
    for block in blocks:
        for line in block.splitlines():
            line = line.strip().lstrip("$ ")
            m = re.match(r"(?:\S+=\S+\s+)*(?:\.venv/bin/)?parecer((?:\s+[a-z][a-z-]*)*)", line)
            if not m:
                continue
            words = ("parecer" + m.group(1)).split()
            # the longest prefix that is a command must be a leaf or take arguments
            while len(words) > 1 and " ".join(words) not in commands:
                words.pop()
            assert " ".join(words) in commands and len(words) > 1 or line.strip() == "parecer", line
            used += 1
    assert used > 3


def test_limits_budgets_prices_spend_backlog(seeded: str) -> None:
    cli(seeded, "scripts", "create", "acme", "qa", "--file", "-", "--activate", input="x")
    r = json.loads(
        cli(seeded, "limits", "set", "default:gpt-5-mini", "--rpm", "100", "--json").output
    )
    assert (r["rpm"], r["is_default"]) == (100, False)
    assert (
        json.loads(cli(seeded, "limits", "show", "--json").output)[0]["limit_key"]
        == "default:gpt-5-mini"
    )
    b = json.loads(
        cli(seeded, "budgets", "set", "acme", "--daily", "5", "--monthly", "100", "--json").output
    )
    assert float(b["daily_budget_usd"]) == 5 and b["blocked_reason"] is None
    assert (
        json.loads(cli(seeded, "budgets", "priority", "acme", "3", "--json").output)["priority"]
        == 3
    )
    p = json.loads(
        cli(
            seeded,
            "prices",
            "set",
            "my-model",
            "--input",
            "1",
            "--cached",
            "0.1",
            "--output",
            "4",
            "--json",
        ).output
    )
    assert p["model"] == "my-model"
    assert any(
        x["model"] == "gpt-5-mini"
        for x in json.loads(cli(seeded, "prices", "show", "--json").output)
    )
    assert json.loads(cli(seeded, "spend", "--json").output) == []
    dry = json.loads(cli(seeded, "run", "acme", "qa", "--dry-run", "--json").output)
    assert "estimated_cost_usd" in dry and dry["estimated_cost_usd"] is None  # no history yet
    r = cli(seeded, "run", "acme", "qa", "--backlog", "--json")
    assert r.exit_code == 0, r.output
    with db.connect(seeded) as c:
        assert c.execute("SELECT bool_and(backlog) AS b FROM parecer.analyses").fetchone() == {
            "b": True
        }
    less = json.loads(
        cli(seeded, "run", "acme", "qa", "--dry-run", "--min-idle", "1 hour", "--json").output
    )
    assert less["min_idle"] == "1:00:00" and "below the min_idle setting" in less["note"]
    checks = json.loads(cli(seeded, "db", "check-adapter", "--json").output)
    assert {c["check_name"]: c["status"] for c in checks}["duplicate_session_ids"] == "ok"
    r = cli(seeded, "budgets", "priority", "acme", "0")
    assert r.exit_code == 2 and "not in the range 1<=x<=100" in r.output


def test_access_grant_list_revoke(seeded: str) -> None:
    cli(seeded, "scripts", "create", "acme", "qa", "--file", "-", input="x")
    g = json.loads(cli(seeded, "access", "grant", "parecer_runner", "acme", "--json").output)
    assert [(x["role_name"], x["client_slug"]) for x in g] == [("parecer_runner", "acme")]
    listed = json.loads(cli(seeded, "access", "list", "--json").output)
    assert listed["isolation"] == "off" and len(listed["grants"]) == 1
    r = cli(seeded, "access", "grant", "parecer_no_such_role", "acme")
    assert r.exit_code != 0 and "PR018" in r.output and len(r.output.strip().splitlines()) == 1
    out = json.loads(cli(seeded, "access", "revoke", "parecer_runner", "--json").output)
    assert out == {"revoked": 1}
    assert json.loads(cli(seeded, "access", "list", "--json").output)["grants"] == []
