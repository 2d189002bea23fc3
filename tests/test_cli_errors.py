"""Every command, given bad input, prints one line and exits with its documented code.

README "Exit codes": 1 the database refused (SQLSTATE + hint), 2 a bad option,
3 no database or unreachable, 4 parecer not installed or out of date, 5 doctor failed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner, Result

from parecer.cli import main

from .test_cli import _walk

UUID = "00000000-0000-0000-0000-000000000000"
# A minimal valid argument list per command that touches the database.
ARGS: dict[str, list[str]] = {
    "db migrate": [],
    "db status": [],
    "db rollback": ["--count", "1", "--yes"],
    "db adapter": ["reference"],
    "db reference-schema": [],
    "db check-adapter": [],
    "scripts create": ["acme", "qa", "--file", "-"],
    "scripts list": ["acme"],
    "scripts show": ["acme", "qa"],
    "scripts activate": ["acme", "qa", "1"],
    "run": ["acme", "qa", "--dry-run"],
    "status": [],
    "prompt": [UUID],
    "retry": ["--client", "acme"],
    "reports export": ["acme"],
    "insights": ["acme"],
    "limits show": [],
    "limits set": ["k:m", "--rpm", "10"],
    "limits bind": ["k:m", "acme"],
    "budgets show": [],
    "budgets set": ["acme", "--daily", "1"],
    "budgets priority": ["acme", "2"],
    "access grant": ["parecer_runner", "acme"],
    "access revoke": ["parecer_runner", "acme"],
    "access list": [],
    "budgets global": ["--daily", "1"],
    "prices show": [],
    "prices set": ["m", "--input", "1", "--cached", "1", "--output", "1"],
    "spend": [],
    "runner": ["--once", "--base-url", "http://127.0.0.1:9/v1"],
    "batch submit": ["1", "--base-url", "http://127.0.0.1:9/v1"],
    "batch poll": ["--base-url", "http://127.0.0.1:9/v1"],
    "batch cancel": ["1", "--base-url", "http://127.0.0.1:9/v1"],
    "doctor": [],
    "metrics": [],
    "purge": ["--older-than", "180d"],
    "sample load": ["--sessions", "1"],
}
NO_DATABASE = {"standin", "demo"}  # the stand-in needs none; demo brings its own
# Work without parecer installed (migrate installs it; the sample is host data).
WORK_UNINSTALLED = {"db migrate", "db status", "db rollback", "sample load"}
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"


def cli(url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, list(args), env={"PARECER_DATABASE_URL": url, "OPENAI_API_KEY": ""}, input="x"
    )


def one_line(r: Result) -> str:
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert "Traceback" not in r.output
    assert len(lines) == 1, r.output
    return lines[0]


def leaves() -> list[str]:
    return [p.removeprefix("parecer ") for p, c in _walk(main) if not hasattr(c, "commands")]


def test_every_command_is_covered() -> None:
    assert set(leaves()) == set(ARGS) | NO_DATABASE


@pytest.mark.parametrize(
    "url, code, needle",
    [
        (UNREACHABLE, 3, "cannot connect to the database"),
        ("not-a-url", 2, "not a PostgreSQL URL"),
        ("", 3, "no database: set PARECER_DATABASE_URL"),
    ],
)
def test_every_command_without_a_usable_database(url: str, code: int, needle: str) -> None:
    for name, args in ARGS.items():
        r = cli(url, *name.split(), *args)
        if name == "doctor" and code == 3 and url:
            assert r.exit_code == 5 and "fix: check PARECER_DATABASE_URL" in r.output, r.output
            continue
        line = one_line(r)
        assert r.exit_code == code and needle in line, (name, r.output)


def test_every_command_on_a_database_without_parecer(empty_db_url: str) -> None:
    for name, args in ARGS.items():
        if name in WORK_UNINSTALLED:
            continue
        r = cli(empty_db_url, *name.split(), *args)
        if name == "doctor":
            assert r.exit_code == 5 and "run `parecer db migrate`" in r.output, r.output
            continue
        line = one_line(r)
        assert r.exit_code == 4, (name, r.output)
        assert line == "Error: parecer is not installed in this database: run `parecer db migrate`"


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["run", "acme", "qa", "--max-sessions", "99999999999"],
            "not in the range 1<=x<=2147483647",
        ),
        (["run", "acme", "qa", "--tag-filter", "{mode: any_of"], "--tag-filter: not JSON"),
        (["run", "acme", "qa", "--tag-filter", '["vip"]'], "--tag-filter: not a JSON object"),
        (["run", "acme", "qa", "--concurrency", "0"], "--concurrency"),
        (["runner", "--lease-seconds", "1"], "--lease-seconds"),
        (["runner", "--pool-max", "0"], "--pool-max"),
        (["budgets", "set", "acme", "--daily", "-1"], "--daily"),
        (["budgets", "global", "--monthly", "-1"], "--monthly"),
        (["limits", "set", "k:m", "--rpd", "0"], "--rpd"),
        (["purge", "--older-than", "yesterday"], "--older-than"),
        (["prompt", "nope"], "not a uuid"),
        (["standin", "--fault-rate", "2"], "--fault-rate"),
        (["batch", "submit", "0"], "RUN_ID"),
        (["batch", "submit", "1", "--max-items", "50001"], "--max-items"),
        (["batch", "poll", "--interval", "0"], "--interval"),
        (["insights", "acme", "--since", "soon"], "--since"),
    ],
)
def test_bad_options_never_reach_the_database(args: list[str], needle: str) -> None:
    r = cli(UNREACHABLE, *args)  # an unreachable database: options fail first
    line = one_line(r)
    assert r.exit_code == 2 and needle in line, r.output


def test_database_errors_keep_sqlstate_and_name_the_cli(db_url: str) -> None:
    r = cli(db_url, "scripts", "show", "acme", "nope")
    line = one_line(r)
    assert r.exit_code == 1 and "[PR001]" in line and "parecer doctor" in line


def test_batch_submit_of_a_run_that_is_not_backlog(db_url: str) -> None:
    from parecer import db

    from .factories import make_script, make_session

    with db.connect(db_url) as c:
        make_script(c)
        make_session(c, messages=2)
        c.execute("SELECT * FROM parecer.start_run('acme', 'qa', min_messages => 1)")
    r = cli(db_url, "batch", "submit", "1", "--base-url", "http://127.0.0.1:9/v1")
    line = one_line(r)
    assert r.exit_code == 1 and "[PR021]" in line and "set_run_backlog" in line, r.output
    r = cli(db_url, "batch", "submit", "1")  # no key, no endpoint: said before anything else
    assert r.exit_code == 1 and "OPENAI_API_KEY is not set" in one_line(r)


def test_real_process_prints_no_traceback(empty_db_url: str) -> None:
    env = {
        **os.environ,
        "PARECER_DATABASE_URL": empty_db_url,
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    p = subprocess.run(
        [sys.executable, "-m", "parecer.cli", "runner", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 4 and p.stdout == ""
    assert (
        p.stderr.strip()
        == "Error: parecer is not installed in this database: run `parecer db migrate`"
    )
    env["PARECER_DATABASE_URL"] = "not-a-url"
    p = subprocess.run(
        [sys.executable, "-m", "parecer.cli", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        p.returncode == 2
        and len(p.stderr.strip().splitlines()) == 1
        and "Traceback" not in p.stderr
    )
