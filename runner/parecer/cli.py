"""The ``parecer`` command: a thin, pleasant front on the SQL API.

Each command is one or two ``parecer.`` function calls plus presentation. User
errors (SQLSTATEs, bad options, an unreachable database) are one clear line and
a non-zero exit; the database error's hint is shown.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import click
import openai
import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import __version__, db, errors, logs, paths
from . import runner as runner_mod
from .config import DEFAULT_MODEL, ModelEndpoint, RunnerConfig, default_worker_id
from .logs import LOGGER

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {
    "help_option_names": ["-h", "--help"],
    "auto_envvar_prefix": "PARECER",
    "show_default": True,
}


# ---- plumbing ------------------------------------------------------------
def _json_default(o: Any) -> Any:
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, (UUID, Decimal)):
        return str(o) if isinstance(o, UUID) else float(o)
    if isinstance(o, timedelta):
        return str(o)
    raise TypeError(type(o).__name__)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, default=_json_default, ensure_ascii=False, indent=2))


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S%z")
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, default=_json_default)
    return str(v)


def emit_table(
    rows: list[dict[str, Any]], columns: list[str] | None = None, title: str | None = None
) -> None:
    """A table on a terminal (rich), tab-separated lines otherwise."""
    columns = columns or (list(rows[0]) if rows else [])
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, show_lines=False)
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*[_cell(r.get(c)) for c in columns])
        Console().print(table)
    else:
        if title:
            click.echo(f"# {title}")
        click.echo("\t".join(columns))
        for r in rows:
            click.echo("\t".join(_cell(r.get(c)) for c in columns))


def emit_record(row: dict[str, Any]) -> None:
    width = max((len(k) for k in row), default=0)
    for k, v in row.items():
        click.echo(f"{k:>{width}}  {_cell(v)}")


def _first_line(exc: BaseException) -> str:
    """An exception's first line (libpq messages run to several), else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---- exit codes (README "Exit codes" lists them; tests/test_cli_errors.py checks them)
EXIT_ERROR = 1  # the database refused the request (a SQLSTATE, shown with its hint)
EXIT_USAGE = 2  # a bad option or argument (click's own code)
EXIT_UNAVAILABLE = 3  # no database configured, or it cannot be reached
EXIT_NOT_INSTALLED = 4  # parecer is not installed in the database, or it is out of date
EXIT_DOCTOR_FAILED = 5  # `parecer doctor` or `parecer db check-adapter` found a failing check
EXIT_PROVIDER_FATAL = (
    runner_mod.EXIT_PROVIDER_FATAL
)  # 6: `runner --once` stopped by the provider (key, quota, model)

INT4_MAX = 2_147_483_647  # integer arguments of the SQL API


def int_range(lo: int, hi: int = INT4_MAX) -> click.IntRange:
    """An integer option checked before the database sees it (no 42883 for a huge number)."""
    return click.IntRange(lo, hi)


class Unavailable(click.ClickException):
    exit_code = EXIT_UNAVAILABLE


class NotInstalled(click.ClickException):
    exit_code = EXIT_NOT_INSTALLED


MIGRATE_FIX = "run `parecer db migrate`"

#: Hints that name CLI commands, for the SQLSTATEs whose SQL hint names SQL.
CLI_HINTS: dict[str, str] = {
    errors.UNKNOWN_CLIENT: "the clients are the slugs your adapter's parecer.source_clients view "
    "exposes (`parecer doctor` counts them)",
    errors.UNKNOWN_SCRIPT: "`parecer scripts list CLIENT` lists the client's scripts",
    errors.NO_ACTIVE_SCRIPT: "activate one with `parecer scripts activate CLIENT KEY VERSION`, "
    "or pass --script-version",
    errors.MAX_SESSIONS_OUT_OF_RANGE: "pass --max-sessions between 1 and the setting "
    "max_sessions_cap, or start several runs",
    errors.UNKNOWN_ANALYSIS: "`parecer reports export CLIENT` lists analysis ids",
    errors.UNKNOWN_RUN: "`parecer status --json` lists the runs with work",
}

#: SQLSTATEs of a missing relation, function or schema: parecer absent or out of date.
MISSING_OBJECT = {"42P01", "42883", "3F000"}


def _db_error(url: str | None, exc: psycopg.Error) -> click.ClickException:
    """One line for a database error: unreachable, not installed, or message [SQLSTATE] — hint."""
    if isinstance(exc, psycopg.OperationalError) and errors.sqlstate(exc) is None:
        return Unavailable(f"cannot connect to the database: {_first_line(exc)}")
    code = errors.sqlstate(exc)
    if code in MISSING_OBJECT:
        if url is not None and not _schema_present(url):
            return NotInstalled(f"parecer is not installed in this database: {MIGRATE_FIX}")
        return NotInstalled(
            f"parecer's API in this database is out of date ({_first_line(exc)} [{code}]): {MIGRATE_FIX}"
        )
    line = errors.describe(exc)
    if code in CLI_HINTS:
        line = line.split(" — hint: ")[0] + " — hint: " + CLI_HINTS[code]
    return click.ClickException(line)


def _schema_present(url: str) -> bool:
    try:
        with db.connect(url, connect_timeout=10) as c:
            row = c.execute("SELECT to_regnamespace('parecer') IS NOT NULL AS ok").fetchone()
    except psycopg.Error:
        return True  # cannot tell: report the original error
    return bool(row and row["ok"])


def check_url(url: str) -> str:
    """A libpq URL or conninfo string, or a usage error naming the expected form."""
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise click.BadParameter(
            f"not a PostgreSQL URL ({_first_line(exc)}); expected e.g. postgresql://user@host:5432/dbname",
            param_hint="--database-url / PARECER_DATABASE_URL",
        ) from None
    return url


def need_url(ctx: click.Context) -> str:
    url: str | None = ctx.find_root().obj.get("database_url")
    if not url:
        raise Unavailable(
            "no database: set PARECER_DATABASE_URL or pass --database-url (`parecer demo` runs on an embedded one)"
        )
    return check_url(url)


@contextmanager
def connection(ctx: click.Context) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    url = need_url(ctx)
    try:
        conn = db.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise Unavailable(f"cannot connect to the database: {_first_line(exc)}") from None
    with conn:
        yield conn


def fetch_one(ctx: click.Context, query: str, params: Sequence[Any] = ()) -> dict[str, Any]:
    """The one row a statement returns (a parecer function or view with one row), on its own
    connection: the body of most commands that change something."""
    with connection(ctx) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return row


def fetch_all(ctx: click.Context, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Every row a statement returns, on its own connection."""
    with connection(ctx) as conn:
        return conn.execute(query, params).fetchall()


def preflight(ctx: click.Context) -> None:
    """Before a long-running command: the database is reachable and parecer is installed."""
    with connection(ctx) as conn:
        row = conn.execute("SELECT to_regnamespace('parecer') IS NOT NULL AS ok").fetchone()
    if not (row and row["ok"]):
        raise NotInstalled(f"parecer is not installed in this database: {MIGRATE_FIX}")


class ParecerGroup(click.Group):
    """The root group: every user error below it is one line on stderr and a documented exit code
    (click's usage errors too: no usage block, the line names ``-h`` instead)."""

    def main(  # type: ignore[override]
        self,
        args: list[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("Aborted.", err=True)
            sys.exit(EXIT_ERROR)
        except click.ClickException as exc:
            msg = exc.format_message()
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                msg += f" (see `{exc.ctx.command_path} -h`)"
            click.echo(f"Error: {msg}", err=True)
            sys.exit(exc.exit_code)
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except psycopg.Error as exc:
            url = (ctx.obj or {}).get("database_url")
            raise _db_error(url, exc) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise click.ClickException(str(exc)) from None


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def view_command(group: click.Group, view: str, title: str, doc: str) -> None:
    """Add ``show`` to ``group``: the rows of ``view`` as a table, or JSON with --json."""

    @group.command("show", help=doc)
    @json_option
    @click.pass_context
    def show(ctx: click.Context, as_json: bool) -> None:
        rows = fetch_all(ctx, f"SELECT * FROM {view}")
        emit_json(rows) if as_json else emit_table(rows, title=title)


def usd_option(name: str, help: str) -> Callable[[F], F]:
    """An optional amount in USD (a budget): omitted, it is None."""
    return click.option(name, type=click.FloatRange(0, 1e12), default=None, help=help)


def model_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--model, --base-url, --api-key, --key-label (each also read from its environment
    variable), handed to the command as one ``endpoint: ModelEndpoint`` argument."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        model: str,
        base_url: str | None,
        api_key: str | None,
        key_label: str | None,
        **kwargs: Any,
    ) -> Any:
        return f(*args, endpoint=ModelEndpoint(model, base_url, api_key, key_label), **kwargs)

    options = [
        click.option(
            "--model",
            default=DEFAULT_MODEL,
            envvar="OPENAI_MODEL",
            show_envvar=True,
            help="Model when the script version names none.",
        ),
        click.option(
            "--base-url",
            default=None,
            envvar="OPENAI_BASE_URL",
            show_envvar=True,
            help="OpenAI-compatible endpoint (the stand-in, a proxy).",
        ),
        click.option(
            "--api-key",
            default=None,
            envvar="OPENAI_API_KEY",
            show_envvar=True,
            show_default=False,
            help="Provider API key; prefer the environment variable (a command line is visible).",
        ),
        click.option(
            "--key-label",
            default=None,
            envvar="PARECER_KEY_LABEL",
            show_envvar=True,
            help="The key's name in shared rate-limit state (default: a hash of the key).",
        ),
    ]
    decorated: Callable[..., Any] = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def runner_config(ctx: click.Context, endpoint: ModelEndpoint, **settings: Any) -> RunnerConfig:
    """The one place a command turns its options into a RunnerConfig."""
    return RunnerConfig(
        database_url=need_url(ctx),
        model=endpoint.model,
        base_url=endpoint.base_url,
        api_key=endpoint.api_key,
        key_label=endpoint.key_label,
        **settings,
    )


# ---- the group -----------------------------------------------------------
@click.group(cls=ParecerGroup, context_settings=CONTEXT)
@click.option(
    "--database-url",
    envvar="PARECER_DATABASE_URL",
    show_envvar=True,
    help="PostgreSQL URL of the database parecer is installed in.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    envvar="PARECER_LOG_FORMAT",
    show_envvar=True,
    help="Log line format (stderr).",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(__version__, "-V", "--version")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, log_format: str, verbose: bool) -> None:
    """parecer: LLM analysis of customer-support chat sessions, inside PostgreSQL.

    Every command is a thin front on a parecer.* SQL function; psql can do the same.
    """
    ctx.ensure_object(dict)
    ctx.obj["database_url"] = database_url
    ctx.obj["log_format"] = log_format
    logs.setup(log_format, logging.DEBUG if verbose else logging.INFO)


# ---- db ------------------------------------------------------------------
@main.group("db", context_settings=CONTEXT)
def db_group() -> None:
    """Install and upgrade parecer's schema (yoyo migrations) and adapters."""


@db_group.command("migrate")
@click.pass_context
def db_migrate(ctx: click.Context) -> None:
    """Apply pending migrations (applying twice is a no-op)."""
    applied = db.migrate(need_url(ctx))
    click.echo(
        f"applied {len(applied)} migration(s)"
        + (": " + ", ".join(applied) if applied else "; up to date")
    )


@db_group.command("status")
@json_option
@click.pass_context
def db_status(ctx: click.Context, as_json: bool) -> None:
    """List applied and pending migrations."""
    rows = [
        {"migration": s.id, "state": "applied" if s.applied else "pending"}
        for s in db.status(need_url(ctx))
    ]
    emit_json(rows) if as_json else emit_table(rows)


@db_group.command("rollback")
@click.option(
    "--count",
    type=int_range(1),
    default=None,
    help="Roll back only the last N migrations (default: all).",
)
@click.option("--yes", is_flag=True, allow_from_autoenv=False, help="Do not ask for confirmation.")
@click.pass_context
def db_rollback(ctx: click.Context, count: int | None, yes: bool) -> None:
    """Roll back migrations (all of them drops the parecer schema and its data)."""
    if not yes:
        click.confirm(f"Roll back {'all' if count is None else count} migration(s)?", abort=True)
    rolled = db.rollback(need_url(ctx), count=count)
    click.echo(
        f"rolled back {len(rolled)} migration(s)" + (": " + ", ".join(rolled) if rolled else "")
    )


@db_group.command("adapter")
@click.argument("name_or_file")
@click.pass_context
def db_adapter(ctx: click.Context, name_or_file: str) -> None:
    """Install an adapter: bundled (reference, prisma, lia-cortex) or a SQL file of yours."""
    path = db.install_adapter(need_url(ctx), name_or_file)
    click.echo(f"adapter installed: {path.name}")


@db_group.command("check-adapter")
@json_option
@click.pass_context
def db_check_adapter(ctx: click.Context, as_json: bool) -> None:
    """Check the installed adapter over this host's data (parecer.check_adapter()).

    Duplicate session ids, sessions ending in the future, messages without a
    session, lookups without an index, row counts. Exits 5 when a check is an error.
    """
    rows = fetch_all(ctx, "SELECT * FROM parecer.check_adapter()")
    if as_json:
        emit_json(rows)
    else:
        emit_table(rows, title="adapter checks")
    if any(r["status"] == "error" for r in rows):
        ctx.exit(EXIT_DOCTOR_FAILED)


@db_group.command("reference-schema")
@click.pass_context
def db_reference(ctx: click.Context) -> None:
    """Create the reference chat schema ("chat") and install its adapter."""
    url = need_url(ctx)
    db.install_sql(url, paths.host_chat_schema())
    db.install_adapter(url, "reference")
    click.echo("reference chat schema and adapter installed")


# ---- scripts -------------------------------------------------------------
@main.group("scripts", context_settings=CONTEXT)
def scripts_group() -> None:
    """Versioned analysis scripts (prompt + topics) per client."""


SCRIPT_COLUMNS = [
    "script_id",
    "client_slug",
    "script_key",
    "version",
    "is_active",
    "language",
    "model",
    "topics",
    "created_at",
]


@scripts_group.command("create")
@click.argument("client")
@click.argument("key")
@click.option(
    "--file",
    "file_",
    type=click.File("r", encoding="utf-8"),
    envvar="PARECER_SCRIPTS_CREATE_FILE",
    required=True,
    help="The script text (prompt), '-' for stdin.",
)
@click.option("--topic", "topics", multiple=True, help="A topic to assess (repeat).")
@click.option(
    "--language", default="pt-BR", type=click.Choice(["pt-BR", "en", "es"]), help="Prompt language."
)
@click.option("--model", default=None, help="Model for this version (default: the runner's).")
@click.option("--activate", is_flag=True, help="Make it the active version.")
@click.option(
    "--metadata-key",
    "metadata_keys",
    multiple=True,
    help="A key of parecer.source_session_metadata to show the model (repeat).",
)
@click.option(
    "--extra-fields",
    "extra_fields",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help="JSON file declaring custom report fields (docs/report-schema.md, custom fields).",
)
@json_option
@click.pass_context
def scripts_create(
    ctx: click.Context,
    client: str,
    key: str,
    file_: Any,
    topics: tuple[str, ...],
    language: str,
    model: str | None,
    activate: bool,
    metadata_keys: tuple[str, ...],
    extra_fields: Any,
    as_json: bool,
) -> None:
    """Create the next version of CLIENT's script KEY."""
    extra = None
    if extra_fields is not None:
        extra = extra_fields.read()
        try:
            json.loads(extra)  # the database validates the declaration (PR013)
        except ValueError as exc:
            raise click.BadParameter("not JSON", param_hint="--extra-fields") from exc
    row = fetch_one(
        ctx,
        "SELECT * FROM parecer.create_script_version(client_slug => %s, script_key => %s, script_text => %s,"
        " topics => %s, language => %s, model => %s, activate => %s, metadata_keys => %s,"
        " extra_fields => %s::jsonb)",
        (
            client,
            key,
            file_.read(),
            list(topics),
            language,
            model,
            activate,
            list(metadata_keys),
            extra,
        ),
    )
    if as_json:
        emit_json(row)
    else:
        click.echo(
            f"created {row['client_slug']}/{row['script_key']} v{row['version']} (script_id {row['script_id']})"
            + (", active" if row["is_active"] else "")
        )


@scripts_group.command("list")
@click.argument("client")
@click.option("--key", default=None, help="Only this script key.")
@click.option("--active-only", is_flag=True, help="Only active versions.")
@json_option
@click.pass_context
def scripts_list(
    ctx: click.Context, client: str, key: str | None, active_only: bool, as_json: bool
) -> None:
    """List CLIENT's script versions."""
    rows = fetch_all(
        ctx, "SELECT * FROM parecer.list_scripts(%s, %s, %s)", (client, key, active_only)
    )
    emit_json(rows) if as_json else emit_table(rows, SCRIPT_COLUMNS)


@scripts_group.command("show")
@click.argument("client")
@click.argument("key")
@click.option(
    "--version",
    "version",
    type=int_range(1),
    default=None,
    help="Version (default: the active one).",
)
@json_option
@click.pass_context
def scripts_show(
    ctx: click.Context, client: str, key: str, version: int | None, as_json: bool
) -> None:
    """Show a script version (default: the one a run would use)."""
    row = fetch_one(ctx, "SELECT * FROM parecer.resolve_script(%s, %s, %s)", (client, key, version))
    if as_json:
        emit_json(row)
    else:
        text = row.pop("script_text")
        emit_record(row)
        click.echo("\n" + text)


@scripts_group.command("activate")
@click.argument("client")
@click.argument("key")
@click.argument("version", type=int_range(1))
@click.option("--keep-others", is_flag=True, help="Leave other active versions active.")
@json_option
@click.pass_context
def scripts_activate(
    ctx: click.Context, client: str, key: str, version: int, keep_others: bool, as_json: bool
) -> None:
    """Activate VERSION of CLIENT's script KEY."""
    row = fetch_one(
        ctx,
        "SELECT * FROM parecer.activate_script(%s, %s, %s, %s)",
        (client, key, version, not keep_others),
    )
    emit_json(row) if as_json else click.echo(f"activated {client}/{key} v{version}")


# ---- run -----------------------------------------------------------------
TAG_FILTER_HELP = (
    'e.g. {"mode":"all_of","tags":["vip"]}; modes none, ignore, any_of, all_of, none_of'
)


def _tag_filter(
    tag_filter: str | None, no_tags: bool, any_tags: tuple[str, ...], ignore_tags: bool
) -> str:
    chosen = sum([tag_filter is not None, no_tags, bool(any_tags), ignore_tags])
    if chosen > 1:
        raise click.UsageError("give only one of --tag-filter, --no-tags, --any-tag, --ignore-tags")
    if tag_filter is not None:
        try:
            parsed = json.loads(tag_filter)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(
                f"not JSON ({exc.msg}); {TAG_FILTER_HELP}", param_hint="--tag-filter"
            ) from None
        if not isinstance(parsed, dict):
            raise click.BadParameter(
                f"not a JSON object; {TAG_FILTER_HELP}", param_hint="--tag-filter"
            )
        return tag_filter  # the database validates its shape (PR004)
    if any_tags:
        return json.dumps({"mode": "any_of", "tags": list(any_tags)})
    if ignore_tags:
        return json.dumps({"mode": "ignore"})
    return json.dumps({"mode": "none"})


@main.command("run")
@click.argument("client")
@click.argument("key")
@click.option(
    "--script-version",
    "version",
    type=int_range(1),
    default=None,
    help="Script version (default: highest active).",
)
@click.option(
    "--version",
    "version_alias",
    type=int_range(1),
    default=None,
    hidden=True,
    help="Old name of --script-version (kept for one release).",
)
@click.option("--min-messages", type=int_range(0), default=20, help="Minimum messages per session.")
@click.option(
    "--tag-filter", default=None, help='Tag filter JSON, e.g. \'{"mode":"all_of","tags":["vip"]}\'.'
)
@click.option("--no-tags", is_flag=True, help="Only contacts without tags (the default).")
@click.option(
    "--any-tag", "any_tags", multiple=True, help="Only contacts with any of these tags (repeat)."
)
@click.option("--ignore-tags", is_flag=True, help="Tags do not matter.")
@click.option(
    "--ended-before-hours",
    type=click.FloatRange(0, 1e6),
    default=None,
    help="Only sessions ended at least this many hours ago (seed 003: 24).",
)
@click.option(
    "--min-idle",
    default=None,
    help="Idle time a session needs, e.g. '2 hours' (default: setting min_idle, 24 hours;"
    " less is reported in note).",
)
@click.option(
    "--reanalyse-changed",
    is_flag=True,
    help="Also queue done sessions whose messages changed since (parecer.stale_reports).",
)
@click.option("--require-agent-reply", is_flag=True, help="Only sessions where the agent replied.")
@click.option(
    "--metadata-filter",
    default=None,
    help='Only sessions whose metadata contains this JSON object, e.g. \'{"department":"vendas"}\'.',
)
@click.option(
    "--analysis-tag",
    "version_tag",
    default="v1",
    help="Analysis generation tag: a new tag analyses every session again (not a contact tag).",
)
@click.option(
    "--tag",
    "version_tag_alias",
    default=None,
    hidden=True,
    help="Old name of --analysis-tag (kept for one release).",
)
@click.option(
    "--force",
    is_flag=True,
    allow_from_autoenv=False,
    help="Reprocess sessions already analysed (resets them to pending).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only count: eligible / done / queued / would enqueue / would process now.",
)
@click.option(
    "--max-sessions",
    type=int_range(1),
    default=100,
    help="At most this many sessions (setting max_sessions_cap).",
)
@click.option("--wait", is_flag=True, help="Follow the run with a progress bar until it settles.")
@click.option(
    "--process",
    is_flag=True,
    help="Also process the run here with an in-process runner (implies --wait).",
)
@click.option(
    "--concurrency", type=int_range(1, 1024), default=4, help="With --process: items in flight."
)
@click.option(
    "--backlog",
    is_flag=True,
    help="A backlog run: claimed only when no fresh work waits, oldest first.",
)
@model_options
@json_option
@click.pass_context
def run_cmd(
    ctx: click.Context,
    client: str,
    key: str,
    version: int | None,
    version_alias: int | None,
    min_messages: int,
    tag_filter: str | None,
    no_tags: bool,
    any_tags: tuple[str, ...],
    ignore_tags: bool,
    ended_before_hours: float | None,
    min_idle: str | None,
    reanalyse_changed: bool,
    require_agent_reply: bool,
    metadata_filter: str | None,
    version_tag: str,
    version_tag_alias: str | None,
    force: bool,
    dry_run: bool,
    max_sessions: int,
    wait: bool,
    process: bool,
    concurrency: int,
    backlog: bool,
    endpoint: ModelEndpoint,
    as_json: bool,
) -> None:
    """Select CLIENT's eligible sessions for script KEY and queue them (parecer.start_run)."""
    version = version if version is not None else version_alias  # --version: old name, one release
    version_tag = version_tag_alias or version_tag  # --tag: old name, one release
    tf = _tag_filter(tag_filter, no_tags, any_tags, ignore_tags)
    if metadata_filter is not None:
        try:
            json.loads(metadata_filter)  # the database validates its shape (PR031)
        except ValueError as exc:
            raise click.BadParameter("not JSON", param_hint="--metadata-filter") from exc
    with connection(ctx) as conn, conn.transaction():
        res = conn.execute(
            "SELECT * FROM parecer.start_run(client_slug => %s, script_key => %s, script_version => %s,"
            " min_messages => %s, tag_filter => %s::jsonb, analysis_version_tag => %s, force_reprocess => %s,"
            " dry_run => %s, max_sessions => %s,"
            " ended_before => CASE WHEN %s::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => %s::float8 * 3600) END,"
            " require_agent_reply => %s, backlog => %s, min_idle => %s::interval,"
            " reanalyse_changed => %s, metadata_filter => %s::jsonb)",
            (
                client,
                key,
                version,
                min_messages,
                tf,
                version_tag,
                force,
                dry_run,
                max_sessions,
                ended_before_hours,
                ended_before_hours,
                require_agent_reply,
                backlog,
                min_idle,
                reanalyse_changed,
                metadata_filter,
            ),
        ).fetchone()
        assert res is not None
    if dry_run or not (wait or process):
        if as_json:
            emit_json(res)
        else:
            emit_record(res)
        return
    if not as_json:
        click.echo(
            f"run {res['run_id']}: {res['enqueued']} enqueued, {res['reset']} reset, "
            f"{res['would_enqueue']} selected of {res['eligible']} eligible"
        )
    if process:
        _process_run(
            runner_config(
                ctx,
                endpoint,
                concurrency=concurrency,
                client_slug=client,
                run_id=res["run_id"],
                poll_seconds=5.0,
            ),
            ctx,
        )
    summary = follow_run(ctx, res["run_id"], quiet=as_json)
    if as_json:
        emit_json({"run": res, "summary": summary})
    else:
        emit_record(summary)


def _process_run(cfg: RunnerConfig, ctx: click.Context) -> None:
    """An in-process runner until the run settles, with the progress bar alongside."""
    import threading

    from .runner import Runner

    assert cfg.run_id is not None
    run_id = cfg.run_id
    try:
        runner = Runner(cfg)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    import asyncio

    failures: list[BaseException] = []

    def work() -> None:
        try:
            asyncio.run(runner.run())
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    t = threading.Thread(target=work, name="parecer-runner", daemon=True)
    t.start()
    try:
        follow_run(ctx, run_id, quiet=False, alive=t.is_alive)
    finally:
        t.join()
    if failures:
        raise failures[0]


def follow_run(
    ctx: click.Context,
    run_id: int,
    *,
    quiet: bool,
    alive: Callable[[], bool] | None = None,
    interval: float = 0.5,
) -> dict[str, Any]:
    """Poll run_summary with a live progress bar (plain lines off a terminal) until nothing remains."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with connection(ctx) as conn:

        def summary() -> dict[str, Any]:
            row = conn.execute("SELECT * FROM parecer.run_summary(%s)", (run_id,)).fetchone()
            assert row is not None
            return row

        s = summary()
        tty = sys.stderr.isatty() and not quiet
        start, last_line = time.monotonic(), 0.0
        progress = Progress(
            TextColumn("run {task.fields[run]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "done {task.fields[done]} · failed {task.fields[failed]} · "
                "retrying {task.fields[retrying]} · {task.fields[rate]}/min"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not tty,
            transient=False,
        )
        with progress, _logs_above(progress if tty else None):
            task = progress.add_task(
                "run", total=s["total"], run=run_id, done=0, failed=0, retrying=0, rate=0
            )
            moved_at, last_finished, hinted = time.monotonic(), -1, False
            while True:
                finished = s["processed"] + s["failed"]
                if finished != last_finished:
                    moved_at, last_finished = time.monotonic(), finished
                elif (
                    alive is None
                    and not hinted
                    and time.monotonic() - moved_at >= STALL_HINT_SECONDS
                    and not _runner_alive(conn)
                ):
                    hinted = True
                    msg = (
                        f"run {run_id}: no progress for {STALL_HINT_SECONDS} s and no runner holds a lease:"
                        " start one with `parecer runner` (or run with --process); waiting on"
                    )
                    if tty:
                        progress.console.print(msg)
                    else:
                        click.echo(msg, err=True)
                rate = round(s["processed"] * 60 / max(time.monotonic() - start, 1e-6), 1)
                progress.update(
                    task,
                    completed=finished,
                    done=s["processed"],
                    failed=s["failed"],
                    retrying=s["retrying"],
                    rate=rate,
                )
                if not tty and not quiet and time.monotonic() - last_line >= 5:
                    click.echo(
                        f"run {run_id}: done {s['processed']}, failed {s['failed']}, retrying {s['retrying']}, "
                        f"remaining {s['remaining']} of {s['total']}",
                        err=True,
                    )
                    last_line = time.monotonic()
                if s["remaining"] == 0 or (alive is not None and not alive()):
                    break
                time.sleep(interval)
                s = summary()
    return s


STALL_HINT_SECONDS = 60  # run --wait: say so when nothing moved this long and no runner is alive


def _runner_alive(conn: psycopg.Connection[Any]) -> bool:
    """Whether any runner holds a live lease (parecer.metrics.workers_with_leases)."""
    row = conn.execute("SELECT workers_with_leases FROM parecer.metrics").fetchone()
    return bool(row and row["workers_with_leases"])


class _ConsoleHandler(logging.Handler):
    """Prints log records through a rich console, above its live progress bar."""

    def __init__(self, console: Any, formatter: logging.Formatter | None) -> None:
        super().__init__()
        self.console = console
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _logs_above(progress: Any) -> Iterator[None]:
    """While a progress bar is live on a terminal, log lines are printed above it
    (through its console) instead of into the middle of it."""
    if progress is None:
        yield
        return
    swapped: list[tuple[logging.Logger, logging.Handler, logging.Handler]] = []
    for logger in (logging.getLogger(), logging.getLogger(LOGGER)):
        for old in list(logger.handlers):
            if isinstance(old, logging.StreamHandler):
                new: logging.Handler = _ConsoleHandler(progress.console, old.formatter)
                new.setLevel(old.level)
                logger.removeHandler(old)
                logger.addHandler(new)
                swapped.append((logger, old, new))
    try:
        yield
    finally:
        for logger, old, new in swapped:
            logger.removeHandler(new)
            logger.addHandler(old)


# ---- status, prompt, retry, reports -----------------------------------------
def _money(v: Any) -> str:
    return "-" if v is None else f"{float(v):.4f}"


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    sec = int(float(seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if sec >= n:
            return f"{sec // n}{unit}"
    return f"{sec}s"


def fit_rows(
    rows: list[dict[str, Any]], columns: list[tuple[str, str]], width: int = 80
) -> list[str]:
    """Rows as aligned lines of at most ``width`` characters, values never cut: the first
    column on a line of its own when the row would not fit, the rest right-aligned."""
    cells = [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    rest = "  ".join(f"{{:>{w}}}" for w in widths[1:])
    if sum(widths) + 2 * (len(widths) - 1) <= width:
        fmt = f"{{:<{widths[0]}}}  " + rest
        return [fmt.format(*heads).rstrip()] + [fmt.format(*c).rstrip() for c in cells]
    fmt = "  " + rest
    out = [heads[0], fmt.format(*heads[1:])]
    for c in cells:
        out += [c[0], fmt.format(*c[1:])]
    return out


QUEUE_COLUMNS = [
    ("script", "script"),
    ("pending", "pend"),
    ("retrying", "retry"),
    ("processing", "proc"),
    ("done", "done"),
    ("failed", "fail"),
    ("done_last_hour", "/h"),
    ("oldest", "oldest"),
]


def _status_data(conn: psycopg.Connection[dict[str, Any]], client: str | None) -> dict[str, Any]:
    one = (client, client)
    where = "WHERE %s::text IS NULL OR client_slug = %s"
    return {
        "totals": conn.execute("SELECT * FROM parecer.metrics").fetchone(),
        "queue": conn.execute(
            f"SELECT *, extract(epoch FROM now() - oldest_pending_at)::float8 AS oldest_pending_age_seconds"
            f" FROM parecer.queue_status {where} ORDER BY client_slug, script_key, script_version",
            one,
        ).fetchall(),
        "clients": conn.execute(f"SELECT * FROM parecer.client_status {where}", one).fetchall(),
        "spend_today": conn.execute(
            "SELECT * FROM parecer.spend_daily WHERE day = (now() AT TIME ZONE"
            " (SELECT value FROM parecer.settings WHERE name = 'budget_timezone'))::date"
            " AND (%s::text IS NULL OR client_slug = %s)",
            one,
        ).fetchall(),
    }


def _wrap_parts(parts: list[str], width: int, indent: str = "  ") -> list[str]:
    """Parts joined by spaces, a new indented line whenever the next would pass ``width``."""
    lines = [parts[0]]
    for p in parts[1:]:
        if len(lines[-1]) + 1 + len(p) <= width:
            lines[-1] += " " + p
        else:
            lines.append(indent + p)
    return lines


BATCH_ORDER = ("preparing", "uploaded", "submitted", "ingesting")  # open batch statuses


def _status_lines(data: dict[str, Any], width: int) -> list[str]:
    t = data["totals"]
    out = [
        f"queue: {t['pending']} pending, {t['retrying']} retrying, {t['processing']} processing,"
        f" {t['failed_terminal']} failed",
        f"done last hour {t['done_last_hour']}; oldest pending {_age(t['oldest_pending_age_seconds'])};"
        f" spend today US$ {_money(t['spend_today_usd'])}",
    ]
    batches = {k: v for k, v in (t.get("open_batches") or {}).items() if v}
    if batches:
        out.append(
            "batches open: "
            + ", ".join(f"{batches[k]} {k}" for k in BATCH_ORDER if k in batches)
            + " (`parecer batch poll`)"
        )
    clients = {c["client_slug"]: c for c in data["clients"]}
    for slug in sorted({q["client_slug"] for q in data["queue"]} | set(clients)):
        c = clients.get(slug, {})
        parts = [f"today US$ {_money(c.get('spent_today_usd'))}"]
        if c.get("daily_budget_usd") is not None:
            parts[-1] += f" of {_money(c['daily_budget_usd'])}"
        parts.append(f"month US$ {_money(c.get('spent_month_usd'))}")
        if c.get("monthly_budget_usd") is not None:
            parts[-1] += f" of {_money(c['monthly_budget_usd'])}"
        if c.get("priority") not in (None, 1):
            parts.append(f"priority {c['priority']}")
        out += ["", *_wrap_parts([f"{slug}:", *parts], width)]
        if c.get("blocked_reason"):
            out.append(f"  held back: {c['blocked_reason']}")
        rows = [
            {
                **q,
                "script": f"{q['script_key']} v{q['script_version']} {q['analysis_version_tag']}",
                "oldest": _age(q["oldest_pending_age_seconds"]),
            }
            for q in data["queue"]
            if q["client_slug"] == slug
        ]
        if rows:
            out += ["  " + line for line in fit_rows(rows, QUEUE_COLUMNS, width - 2)]
    return out


@main.command("status")
@click.argument("client", required=False)
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(0.5, 3600),
    default=2.0,
    help="With --watch: seconds between refreshes.",
)
@json_option
@click.pass_context
def status_cmd(
    ctx: click.Context, client: str | None, watch: bool, interval: float, as_json: bool
) -> None:
    """Queue totals, then one block per client: spend and budgets, and its scripts by state."""
    import shutil

    width = min(shutil.get_terminal_size((80, 24)).columns, 120)
    with connection(ctx) as conn:
        while True:
            data = _status_data(conn, client)
            if as_json:
                emit_json(data)
            else:
                if watch:
                    click.clear()
                click.echo("\n".join(_status_lines(data, width)))
            if not watch:
                return
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return


@main.command("prompt")
@click.argument("analysis_id")
@json_option
@click.pass_context
def prompt_cmd(ctx: click.Context, analysis_id: str, as_json: bool) -> None:
    """Show exactly what the model gets for ANALYSIS_ID (parecer.prompt_for)."""
    try:
        UUID(analysis_id)
    except ValueError:
        raise click.BadParameter("not a uuid", param_hint="ANALYSIS_ID") from None
    row = fetch_one(ctx, "SELECT * FROM parecer.prompt_for(%s)", (analysis_id,))
    if as_json:
        emit_json(row)
        return
    click.echo(f"# prompt_hash {row['prompt_hash']}  model {row['model'] or '(runner default)'}\n")
    click.echo("## instructions\n" + row["instructions"] + "\n\n## input\n" + row["input"])


@main.command("retry")
@click.option(
    "--run",
    "run_id",
    type=int_range(1, 2**63 - 1),
    default=None,
    help="Terminal failures of this run.",
)
@click.option("--client", default=None, help="Terminal failures of this client.")
@click.option(
    "--error-like",
    default=None,
    help="Only errors matching this ILIKE pattern, e.g. '%timed out%'.",
)
@json_option
@click.pass_context
def retry_cmd(
    ctx: click.Context,
    run_id: int | None,
    client: str | None,
    error_like: str | None,
    as_json: bool,
) -> None:
    """Re-queue terminal failures (parecer.retry_failed)."""
    row = fetch_one(
        ctx, "SELECT parecer.retry_failed(%s, %s, %s) AS requeued", (run_id, client, error_like)
    )
    emit_json(row) if as_json else click.echo(f"re-queued {row['requeued']} item(s)")


@main.group("reports", context_settings=CONTEXT)
def reports_group() -> None:
    """Read analysis reports."""


@reports_group.command("export")
@click.argument("client")
@click.option("--key", default=None, help="Only this script key.")
@click.option(
    "--since", type=click.DateTime(), default=None, help="Only reports processed since this time."
)
@click.option(
    "--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", help="Output format."
)
@click.option(
    "-o", "--output", type=click.File("w", encoding="utf-8"), default="-", help="Output file."
)
@click.pass_context
def reports_export(
    ctx: click.Context, client: str, key: str | None, since: datetime | None, fmt: str, output: Any
) -> None:
    """Stream CLIENT's reports (constant memory: a server-side cursor)."""
    n = 0
    with connection(ctx) as conn, conn.transaction(), conn.cursor(name="parecer_export") as cur:
        cur.itersize = 500
        cur.execute(
            "SELECT analysis_id, client_slug, session_id, script_key, script_version, analysis_version_tag,"
            " model, prompt_hash, processed_at, report FROM parecer.reports"
            " WHERE client_slug = %s AND (%s::text IS NULL OR script_key = %s)"
            " AND (%s::timestamptz IS NULL OR processed_at >= %s) ORDER BY processed_at, analysis_id",
            (client, key, key, since, since),
        )
        writer = None
        for row in cur:
            if fmt == "jsonl":
                output.write(json.dumps(row, default=_json_default, ensure_ascii=False) + "\n")
            else:
                flat = {k: v for k, v in row.items() if k != "report"}
                r = row["report"]
                flat.update(
                    outcome=r["outcome"]["status"],
                    sentiment_start=r["sentiment"]["start"],
                    sentiment_end=r["sentiment"]["end"],
                    insufficient_context=r["insufficient_context"],
                    topics_present=";".join(t["topic"] for t in r["topics"] if t["present"]),
                    flags=";".join(f["flag"] for f in r["flags"]),
                    summary=r["summary"],
                    # the script version's custom fields (extra_fields), as JSON: versions differ
                    extra=json.dumps(r["extra"], ensure_ascii=False) if "extra" in r else "",
                    report=json.dumps(r, ensure_ascii=False),
                )
                if writer is None:
                    writer = csv.DictWriter(output, fieldnames=list(flat))
                    writer.writeheader()
                writer.writerow({k: _cell(v) for k, v in flat.items()})
            n += 1
    click.echo(f"exported {n} report(s)", err=True)


# ---- insights --------------------------------------------------------------------
@main.command("insights")
@click.argument("client")
@click.option("--script", "script_key", default=None, help="Only this script key.")
@click.option(
    "--since",
    type=click.DateTime(),
    default=None,
    help="Only reports processed at or after this time (UTC).",
)
@click.option(
    "--until",
    type=click.DateTime(),
    default=None,
    help="Only reports processed before this time (UTC).",
)
@click.option(
    "--html",
    "html_file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write a self-contained HTML report (charts, example conversations and their quotes) to this file.",
)
@click.option(
    "--lang",
    type=click.Choice(["pt", "en"]),
    default=None,
    help="Labels of the HTML report (default: Portuguese for a Portuguese script, else English).",
)
@click.option(
    "--examples",
    type=click.IntRange(1, 50),
    default=3,
    help="Example conversations per topic and flag (HTML).",
)
@json_option
@click.pass_context
def insights_cmd(
    ctx: click.Context,
    client: str,
    script_key: str | None,
    since: datetime | None,
    until: datetime | None,
    html_file: str | None,
    lang: str | None,
    examples: int,
    as_json: bool,
) -> None:
    """What CLIENT's reports say: outcomes, mood, topics, flags, weekly trend, cost (parecer.insights)."""
    from datetime import timezone

    since_utc = since.replace(tzinfo=timezone.utc) if since and since.tzinfo is None else since
    until_utc = until.replace(tzinfo=timezone.utc) if until and until.tzinfo is None else until
    with connection(ctx) as conn:
        if html_file:
            from .insights_html import write_report

            path = write_report(
                conn,
                client,
                html_file,
                script_key=script_key,
                since=since_utc,
                until=until_utc,
                lang=lang,
                examples=examples,
            )
            click.echo(f"wrote {path.resolve()}", err=as_json)
        doc = conn.execute(
            "SELECT parecer.insights(%s, script_key => %s, since => %s, until => %s) AS doc",
            (client, script_key, since_utc, until_utc),
        ).fetchone()["doc"]  # type: ignore[index]
    if as_json:
        emit_json(doc)
    elif not html_file:
        _print_insights(doc)


def _print_insights(doc: dict[str, Any]) -> None:
    """A terminal summary in 80 columns: rich tables with small text bars."""
    from rich.console import Console
    from rich.table import Table

    con = Console(width=80, highlight=False)
    n = doc["sessions"]

    def bar(v: float | None, width: int = 20) -> str:
        return "" if not v else "█" * max(1, round(float(v) * width))

    def pct(v: Any) -> str:
        return "-" if v is None else f"{float(v) * 100:.1f}%"

    cost = doc["cost_usd"]
    con.print(
        f"[bold]{doc['client_slug']}[/bold]: {n} sessions analysed"
        + (
            f", {str(doc['first_processed_at'])[:10]} to {str(doc['last_processed_at'])[:10]}"
            if n
            else ""
        )
    )
    con.print(
        f"cost US$ {float(cost['total']):.4f} in total, "
        + (
            f"US$ {float(cost['per_session']):.5f} per session"
            if cost["per_session"] is not None
            else "no priced session"
        )
        + f"; insufficient context {pct(doc['insufficient_context']['share'])}"
    )
    t = Table(title="outcomes", width=80)
    for c in ("outcome", "sessions", "share", ""):
        t.add_column(c, justify="right" if c in ("sessions", "share") else "left")
    for o in ("resolved", "unresolved", "escalated", "abandoned", "unknown"):
        k = doc["outcomes"][o]
        t.add_row(o, str(k), pct(k / n if n else None), bar(k / n if n else None, 30))
    con.print(t)
    s = doc["sentiment"]
    t = Table(title="customer mood, start to end (shares exclude unknown)", width=80)
    for c in ("change", "sessions", "share", ""):
        t.add_column(c, justify="right" if c in ("sessions", "share") else "left")
    for k in ("improved", "same", "worsened"):
        t.add_row(k, str(s[k]), pct(s[f"{k}_share"]), bar(s[f"{k}_share"], 30))
    t.add_row("unknown", str(s["unknown"]), pct(s["unknown_share"]), "")
    con.print(t)
    t = Table(title="topics", width=80)
    for c in ("topic", "present", "share", "conf.", "resolved when present"):
        t.add_column(c, justify="left" if c == "topic" else "right", overflow="fold")
    for tp in doc["topics"]:
        res = tp["outcomes_when_present"]["resolved"]
        t.add_row(
            tp["topic"],
            f"{tp['present']}/{tp['assessed']}",
            pct(tp["present_share"]),
            f"{float(tp['mean_confidence']):.2f}",
            pct(res / tp["present"] if tp["present"] else None),
        )
    con.print(t)
    t = Table(title="flags", width=80)
    for c in ("flag", "sessions", "share", ""):
        t.add_column(c, justify="right" if c in ("sessions", "share") else "left")
    for f in doc["flags"]:
        t.add_row(f["flag"], str(f["sessions"]), pct(f["share"]), bar(f["share"], 30))
    con.print(t)
    if doc["weeks"]:
        t = Table(title="per ISO week", width=80)
        for c in ("week", "sessions", "resolved", "improved", "cost US$", ""):
            t.add_column(c, justify="left" if c in ("week", "") else "right")
        top = max(w["sessions"] for w in doc["weeks"])
        for w in doc["weeks"]:
            t.add_row(
                w["week"],
                str(w["sessions"]),
                pct(w["outcomes"]["resolved"] / w["sessions"]),
                pct(w["sentiment"]["improved_share"]),
                f"{float(w['cost_usd']['total']):.4f}",
                bar(w["sessions"] / top, 16),
            )
        con.print(t)


# ---- limits, budgets, prices, spend -------------------------------------------
@main.group("limits", context_settings=CONTEXT)
def limits_group() -> None:
    """Shared rate limits per provider key label + model (all runners obey them)."""


view_command(
    limits_group,
    "parecer.rate_limits",
    "rate limits",
    """Configured limits, current pauses, requests granted, 429s reported (throttled) and
    requests the shared limiter made wait (waited).""",
)


@limits_group.command("set")
@click.argument("limit_key")
@click.option(
    "--rpm",
    type=int_range(1),
    default=None,
    help="Requests per minute (default: setting default_rpm).",
)
@click.option(
    "--tpm",
    type=int_range(1),
    default=None,
    help="Tokens per minute (default: setting default_tpm).",
)
@click.option(
    "--rpd",
    type=int_range(1),
    default=None,
    help="Requests per day, budget_timezone day (default: setting default_rpd; 0 there: none).",
)
@json_option
@click.pass_context
def limits_set(
    ctx: click.Context,
    limit_key: str,
    rpm: int | None,
    tpm: int | None,
    rpd: int | None,
    as_json: bool,
) -> None:
    """Set LIMIT_KEY's limits: '<key label>:<model>', as `parecer limits show` lists them."""
    row = fetch_one(
        ctx, "SELECT * FROM parecer.set_rate_limit(%s, %s, %s, %s)", (limit_key, rpm, tpm, rpd)
    )
    per_day = f"{row['rpd']} rpd" if row["rpd"] else "no daily limit"
    emit_json(row) if as_json else click.echo(
        f"{row['limit_key']}: {row['rpm']} rpm, {row['tpm']} tpm, {per_day}"
    )


@limits_group.command("bind")
@click.argument("limit_key")
@click.argument("clients", nargs=-1)
@json_option
@click.pass_context
def limits_bind(
    ctx: click.Context, limit_key: str, clients: tuple[str, ...], as_json: bool
) -> None:
    """Bind LIMIT_KEY to the CLIENTS whose runners use it (none given: unbind). With the
    isolation setting on, a runner may use only keys bound to one of its clients."""
    with connection(ctx) as conn:
        row = conn.execute(
            "SELECT * FROM parecer.bind_rate_limit(%s, %s)", (limit_key, list(clients))
        ).fetchone()
    assert row is not None
    slugs = ", ".join(row["client_slugs"] or []) or "no client"
    emit_json(row) if as_json else click.echo(f"{row['limit_key']}: bound to {slugs}")


@main.group("budgets", context_settings=CONTEXT)
def budgets_group() -> None:
    """Spend budgets and claim priority per client."""


view_command(
    budgets_group,
    "parecer.budgets",
    "budgets (USD)",
    "Budgets, spend so far and why a client is held back.",
)


@budgets_group.command("set")
@click.argument("client")
@usd_option("--daily", help="Daily budget in USD (omit: none).")
@usd_option("--monthly", help="Monthly budget in USD (omit: none).")
@json_option
@click.pass_context
def budgets_set(
    ctx: click.Context, client: str, daily: float | None, monthly: float | None, as_json: bool
) -> None:
    """Set CLIENT's budgets; claim hands out no work past them (fail-closed)."""
    row = fetch_one(
        ctx,
        "SELECT * FROM parecer.set_budget(%s, %s::numeric, %s::numeric)",
        (client, daily, monthly),
    )
    emit_json(row) if as_json else emit_record(row)


@budgets_group.command("global")
@usd_option(
    "--daily", help="The installation's daily budget in USD, all clients together (omit: none)."
)
@usd_option("--monthly", help="The installation's monthly budget in USD (omit: none).")
@click.option("--show", is_flag=True, help="Only show the installation's budget and spend.")
@json_option
@click.pass_context
def budgets_global(
    ctx: click.Context, daily: float | None, monthly: float | None, show: bool, as_json: bool
) -> None:
    """Set the installation's budgets; claim hands out no work to anyone past them."""
    if show:
        row = fetch_one(ctx, "SELECT * FROM parecer.global_budget")
    else:
        row = fetch_one(
            ctx,
            "SELECT * FROM parecer.set_global_budget(%s::numeric, %s::numeric)",
            (daily, monthly),
        )
    emit_json(row) if as_json else emit_record(row)


@budgets_group.command("priority")
@click.argument("client")
@click.argument("priority", type=int_range(1, 100))
@json_option
@click.pass_context
def budgets_priority(ctx: click.Context, client: str, priority: int, as_json: bool) -> None:
    """Set CLIENT's weight in claim's round-robin (1..100; VIP first)."""
    row = fetch_one(ctx, "SELECT * FROM parecer.set_client_priority(%s, %s)", (client, priority))
    emit_json(row) if as_json else click.echo(f"{client}: priority {row['priority']}")


@main.group("access", context_settings=CONTEXT)
def access_group() -> None:
    """Which roles serve which clients (tenant isolation: setting isolation = on)."""


@access_group.command("grant")
@click.argument("role")
@click.argument("client")
@json_option
@click.pass_context
def access_grant(ctx: click.Context, role: str, client: str, as_json: bool) -> None:
    """Let ROLE (and its members) serve and see CLIENT (parecer.grant_client)."""
    rows = fetch_all(ctx, "SELECT * FROM parecer.grant_client(%s, %s)", (role, client))
    emit_json(rows) if as_json else emit_table(rows, title=f"clients of {role}")


@access_group.command("revoke")
@click.argument("role")
@click.argument("client", required=False)
@json_option
@click.pass_context
def access_revoke(ctx: click.Context, role: str, client: str | None, as_json: bool) -> None:
    """Take CLIENT (omitted: every client) from ROLE (parecer.revoke_client)."""
    row = fetch_one(ctx, "SELECT parecer.revoke_client(%s, %s) AS revoked", (role, client))
    emit_json(row) if as_json else click.echo(f"{role}: {row['revoked']} grant(s) revoked")


@access_group.command("list")
@json_option
@click.pass_context
def access_list(ctx: click.Context, as_json: bool) -> None:
    """Every client grant, and whether isolation is on."""
    with connection(ctx) as conn:
        rows = conn.execute("SELECT * FROM parecer.client_grants").fetchall()
        iso = conn.execute("SELECT value FROM parecer.settings WHERE name = 'isolation'").fetchone()
    mode = iso["value"] if iso else "?"
    if as_json:
        emit_json({"isolation": mode, "grants": rows})
    else:
        emit_table(rows, title=f"client grants (isolation {mode})")


@main.group("prices", context_settings=CONTEXT)
def prices_group() -> None:
    """Model prices used for cost accounting."""


view_command(
    prices_group,
    "parecer.model_prices",
    "model prices (USD / 1M tokens)",
    "Prices in USD per million tokens, with their source and date.",
)


@prices_group.command("set")
@click.argument("model")
@click.option(
    "--input",
    "input_",
    type=click.FloatRange(0, 1e6),
    required=True,
    envvar="PARECER_PRICES_SET_INPUT",
    help="USD per million input tokens.",
)
@click.option(
    "--cached",
    type=click.FloatRange(0, 1e6),
    required=True,
    help="USD per million cached input tokens.",
)
@click.option(
    "--output", type=click.FloatRange(0, 1e6), required=True, help="USD per million output tokens."
)
@click.option("--source", default="set by operator", help="Where the price comes from.")
@json_option
@click.pass_context
def prices_set(
    ctx: click.Context,
    model: str,
    input_: float,
    cached: float,
    output: float,
    source: str,
    as_json: bool,
) -> None:
    """Add or change MODEL's price (matched by prefix)."""
    row = fetch_one(
        ctx,
        "SELECT * FROM parecer.set_model_price(%s, %s::numeric, %s::numeric, %s::numeric, %s)",
        (model, input_, cached, output, source),
    )
    emit_json(row) if as_json else emit_record(row)


SPEND_COLUMNS = [
    ("client_slug", "client"),
    ("period", "period"),
    ("attempts", "calls"),
    ("input_tokens", "in tok"),
    ("cached_input_tokens", "cached"),
    ("output_tokens", "out tok"),
    ("cost", "cost"),
]
PROJECTION_COLUMNS = [
    ("client", "client"),
    ("today", "today"),
    ("day", "projected day"),
    ("month", "month so far"),
    ("projected", "projected month"),
]


@main.command("spend")
@click.option("--client", default=None, help="Only this client.")
@click.option("--monthly", is_flag=True, help="Per month instead of per day.")
@click.option(
    "--projection",
    is_flag=True,
    help="This month's spend extrapolated to the whole month, in total and per client.",
)
@click.option(
    "--currency",
    default=None,
    envvar="PARECER_CURRENCY",
    help="Show costs in this currency: USD, or the display_currency setting at its "
    "usd_exchange_rate (default: display_currency; env PARECER_CURRENCY).",
)
@json_option
@click.pass_context
def spend_cmd(
    ctx: click.Context,
    client: str | None,
    monthly: bool,
    projection: bool,
    currency: str | None,
    as_json: bool,
) -> None:
    """Tokens and cost per client and day (or month), or the month's projection, in 80 columns."""
    import shutil

    width = min(shutil.get_terminal_size((80, 24)).columns, 120)
    with connection(ctx) as conn:
        if projection:
            rows = conn.execute(
                "SELECT * FROM parecer.spend_projection(%s)"
                " WHERE %s::text IS NULL OR client_slug = %s OR client_slug IS NULL",
                (currency, client, client),
            ).fetchall()
            if as_json:
                emit_json(rows)
                return
            cur = rows[0]["currency_code"] if rows else (currency or "USD")
            shown = [
                {
                    "client": r["client_slug"] or "(all clients)",
                    "today": _money(r["spent_today"]),
                    "day": _money(r["projected_today"]),
                    "month": _money(r["spent_month"]),
                    "projected": _money(r["projected_month"]),
                }
                for r in rows
            ]
            head = rows[0] if rows else None
            click.echo(
                f"spend projection ({cur}), {head['month']:%Y-%m}: day "
                f"{float(head['days_elapsed']):.1f} of {head['days_in_month']}"
                if head
                else f"spend projection ({cur})"
            )
            click.echo("\n".join(fit_rows(shown, PROJECTION_COLUMNS, width)))
            return
        rate = conn.execute("SELECT parecer.exchange_rate(%s) AS r", (currency,)).fetchone()
        cur = conn.execute(
            "SELECT upper(COALESCE(%s::text, value)) AS c FROM parecer.settings"
            " WHERE name = 'display_currency'",
            (currency,),
        ).fetchone()
        view = "spend_monthly" if monthly else "spend_daily"
        rows = conn.execute(
            f"SELECT * FROM parecer.{view} WHERE %s::text IS NULL OR client_slug = %s",
            (client, client),
        ).fetchall()
    assert rate is not None and cur is not None
    factor = float(rate["r"])
    if as_json:
        emit_json(
            [{**r, "currency": cur["c"], "cost": float(r["cost_usd"]) * factor} for r in rows]
        )
        return
    period = "month" if monthly else "day"
    shown = [
        {**r, "period": _cell(r.get(period)), "cost": _money(float(r["cost_usd"]) * factor)}
        for r in rows
    ]
    rate_note = "" if cur["c"] == "USD" else f" at {factor:g} per USD (usd_exchange_rate)"
    click.echo(f"spend per {period} ({cur['c']}{rate_note})")
    click.echo("\n".join(fit_rows(shown, SPEND_COLUMNS, width)))


# ---- operations: doctor, metrics, purge --------------------------------------------
_MARK = {"ok": ("ok", "green"), "warn": ("warn", "yellow"), "fail": ("FAIL", "red")}


@main.command("doctor")
@click.option(
    "--model",
    default=DEFAULT_MODEL,
    envvar="OPENAI_MODEL",
    help="The runners' default model (checked for a price, with the active scripts' models).",
)
@click.option(
    "--active-minutes",
    type=int_range(1, 10080),
    default=10,
    help="A runner counts as alive when it leased, finished or asked for capacity this recently.",
)
@json_option
@click.pass_context
def doctor_cmd(ctx: click.Context, model: str, active_minutes: int, as_json: bool) -> None:
    """Check the installation: connection, migrations, API files, adapter, roles, settings,
    prices and limits, runners; each ok/warn/fail with its fix. Exit 5 when a check fails."""
    checks: list[dict[str, Any]] = []

    def add(name: str, status: str, detail: str, fix: str | None = None) -> None:
        checks.append({"check": name, "status": status, "detail": detail, "fix": fix})

    url = need_url(ctx)
    try:
        conn = db.connect(url, connect_timeout=10)
    except psycopg.OperationalError as exc:
        add(
            "connection",
            "fail",
            _first_line(exc),
            "check PARECER_DATABASE_URL / --database-url and that the server accepts connections",
        )
        return _doctor_report(checks, as_json)
    with conn:
        who = conn.execute("SELECT current_user AS u, current_database() AS d").fetchone()
        assert who is not None
        add(
            "connection",
            "ok",
            f"PostgreSQL {conn.info.server_version // 10000}, database {who['d']} as {who['u']}",
        )
        row = conn.execute("SELECT to_regnamespace('parecer') IS NOT NULL AS ok").fetchone()
        if not (row and row["ok"]):
            add("migrations", "fail", "parecer is not installed in this database", MIGRATE_FIX)
            return _doctor_report(checks, as_json)
        pending = [m.id for m in db.status(url) if not m.applied]
        if pending:
            add("migrations", "fail", "pending: " + ", ".join(pending), MIGRATE_FIX)
        else:
            add("migrations", "ok", "every bundled migration is applied")
        try:
            drift, leftovers = db.api_diff(url)
        except psycopg.errors.LockNotAvailable:
            add(
                "api files",
                "warn",
                "could not compare: objects busy (lock timeout)",
                "run it again",
            )
        except psycopg.errors.InsufficientPrivilege:
            add(
                "api files",
                "warn",
                "could not compare: only the schema owner can",
                "run `parecer doctor` as the role that ran `parecer db migrate`",
            )
        else:
            if drift:
                more = f" and {len(drift) - 3} more" if len(drift) > 3 else ""
                add(
                    "api files",
                    "fail",
                    f"{len(drift)} object(s) differ from db/api: " + "; ".join(drift[:3]) + more,
                    MIGRATE_FIX,
                )
            elif leftovers:
                more = f" and {len(leftovers) - 3} more" if len(leftovers) > 3 else ""
                add(
                    "api files",
                    "warn",
                    f"{len(leftovers)} function(s) of schema parecer in no db/api file (left by an"
                    " older release, or added by hand): " + "; ".join(leftovers[:3]) + more,
                    "no function of this release calls them: drop each one that is not yours"
                    " (DROP FUNCTION <signature>)",
                )
            else:
                add("api files", "ok", "functions, views and grants match this copy's db/api")
        try:
            rows = conn.execute(
                "SELECT * FROM parecer.doctor(model => %s, active_minutes => %s)",
                (model, active_minutes),
            ).fetchall()
        except psycopg.errors.UndefinedFunction:
            add("database checks", "fail", "parecer.doctor() is missing", MIGRATE_FIX)
            rows = []
        for r in rows:
            add(r["check_name"], r["status"], r["detail"], r["fix"])
    _doctor_report(checks, as_json)


def _doctor_report(checks: list[dict[str, Any]], as_json: bool) -> None:
    failed = any(c["status"] == "fail" for c in checks)
    if as_json:
        emit_json({"ok": not failed, "checks": checks})
    else:
        for c in checks:
            label, color = _MARK[c["status"]]
            click.echo(f"{click.style(f'{label:<4}', fg=color)}  {c['check']}: {c['detail']}")
            if c["fix"]:
                click.echo(f"      fix: {c['fix']}")
    if failed:
        ctx = click.get_current_context()
        ctx.exit(EXIT_DOCTOR_FAILED)


@main.command("metrics")
@json_option
@click.pass_context
def metrics_cmd(ctx: click.Context, as_json: bool) -> None:
    """Queue-wide gauges (parecer.metrics) in the Prometheus text format, as a runner's /metrics has them."""
    row = fetch_one(ctx, "SELECT * FROM parecer.metrics")
    if as_json:
        emit_json(row)
        return
    from . import metrics

    click.echo(metrics.queue_text(row), nl=False)


def _duration(value: str) -> str:
    """'180d', '12h', '90m' or a PostgreSQL interval ('6 months') as interval text."""
    import re

    m = re.fullmatch(r"\s*(\d{1,6})\s*([dhm])\s*", value)
    if m:
        return f"{m.group(1)} {dict(d='days', h='hours', m='minutes')[m.group(2)]}"
    if re.fullmatch(r"\s*\d{1,6}\s*(minute|hour|day|week|month|year)s?\s*", value):
        return value.strip()
    raise click.BadParameter("e.g. 180d, 12h or '6 months'", param_hint="--older-than")


@main.command("purge")
@click.option(
    "--older-than",
    required=True,
    help="Age past which rows go, e.g. 180d, 12h or '6 months' (at least 1 day).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Only count what would be deleted.",
)
@click.option(
    "--batch-size",
    type=int_range(1, 1_000_000),
    default=5000,
    help="Rows per kind per transaction.",
)
@json_option
@click.pass_context
def purge_cmd(
    ctx: click.Context, older_than: str, dry_run: bool, batch_size: int, as_json: bool
) -> None:
    """Delete old attempts, spend days, budget alerts and done analyses of past generations
    (parecer.purge), in short batches; what budgets and the newest generation need is kept."""
    interval = _duration(older_than)
    totals: dict[str, int] = {}
    with connection(ctx) as conn:
        while True:
            rows = conn.execute(
                "SELECT * FROM parecer.purge(%s::interval, dry_run => %s, batch_size => %s)",
                (interval, dry_run, batch_size),
            ).fetchall()
            for r in rows:
                totals[r["kind"]] = totals.get(r["kind"], 0) + r["deleted"]
            if dry_run or not any(r["deleted"] for r in rows):
                break
    if as_json:
        emit_json({"dry_run": dry_run, "older_than": interval, "deleted": totals})
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb} (older than {interval}): " + ", ".join(f"{v} {k}" for k, v in totals.items())
    )


# ---- runner, stand-in, sample, demo ----------------------------------------------
@main.command("runner")
@click.option(
    "--concurrency",
    type=int_range(1, 1024),
    default=4,
    envvar="PARECER_CONCURRENCY",
    show_envvar=True,
    help="Items in flight at once.",
)
@click.option(
    "--client",
    default=None,
    envvar="PARECER_CLIENT",
    show_envvar=True,
    help="Only this client's items.",
)
@click.option(
    "--once",
    is_flag=True,
    envvar="PARECER_ONCE",
    show_envvar=True,
    help="Drain what is claimable now and exit 0 (cron, tests); exit 6 at once on a fatal provider error (credentials, quota, unknown model).",
)
@click.option(
    "--worker-id",
    default=None,
    envvar="PARECER_WORKER_ID",
    show_envvar=True,
    help="Name in leases and attempts (default host:pid).",
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(0.1, 86400),
    default=30.0,
    envvar="PARECER_POLL_SECONDS",
    show_envvar=True,
    help="Backstop poll interval (NOTIFY wakes it sooner).",
)
@click.option(
    "--lease-seconds",
    type=int_range(5, 86400),
    default=None,
    envvar="PARECER_LEASE_SECONDS",
    show_envvar=True,
    help="Lease per claim (default: the database's lease_seconds setting).",
)
@model_options
@click.option(
    "--timeout",
    "request_timeout",
    type=click.FloatRange(1, 3600),
    default=120.0,
    envvar="PARECER_REQUEST_TIMEOUT",
    show_envvar=True,
    help="Model call timeout, seconds.",
)
@click.option(
    "--max-output-tokens",
    type=int_range(16, 1_000_000),
    default=4000,
    envvar="PARECER_MAX_OUTPUT_TOKENS",
    show_envvar=True,
    help="Cap on the report's output tokens.",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(0, 3600),
    default=20.0,
    envvar="PARECER_SHUTDOWN_GRACE",
    show_envvar=True,
    help="Seconds in-flight calls get after SIGTERM before their items are released.",
)
@click.option(
    "--pool-max",
    type=int_range(1, 100),
    default=3,
    envvar="PARECER_POOL_MAX",
    help="Database connections for calls, whatever --concurrency (plus one to LISTEN).",
)
@click.option(
    "--no-listen",
    is_flag=True,
    envvar="PARECER_NO_LISTEN",
    help="Poll only, no LISTEN connection (PgBouncer in transaction mode); lower --poll-seconds.",
)
@click.option(
    "--metrics-port",
    type=int_range(1, 65535),
    default=None,
    envvar="PARECER_METRICS_PORT",
    help="Serve Prometheus metrics on this port (/metrics).",
)
@click.option(
    "--ack-window-ms",
    type=int_range(0, 10_000),
    default=20,
    envvar="PARECER_ACK_WINDOW_MS",
    show_envvar=True,
    help="Reports wait at most this long to be stored together (one mark_done_many, one commit); 0: one mark_done per report. A crash loses at most this buffer (the items are redone).",
)
@click.option(
    "--ack-batch",
    type=int_range(1, 1000),
    default=10,
    envvar="PARECER_ACK_BATCH",
    show_envvar=True,
    help="Store the waiting reports as soon as this many are waiting.",
)
@click.option(
    "--claim-ahead",
    type=int_range(0, 1000),
    default=0,
    envvar="PARECER_CLAIM_AHEAD",
    show_envvar=True,
    help="Claim up to this many items beyond the free slots; they wait in the runner (leases heartbeated) and the runner claims again when half have started, and a report waiting to be stored gives its slot to the next item: fewer, larger claims and stores at the same throughput (e.g. 16 with --ack-window-ms 250). 0: claim only for free slots.",
)
@click.pass_context
def runner_cmd(
    ctx: click.Context,
    concurrency: int,
    client: str | None,
    once: bool,
    worker_id: str | None,
    poll_seconds: float,
    lease_seconds: int | None,
    endpoint: ModelEndpoint,
    request_timeout: float,
    max_output_tokens: int,
    shutdown_grace: float,
    pool_max: int,
    no_listen: bool,
    metrics_port: int | None,
    ack_window_ms: int,
    ack_batch: int,
    claim_ahead: int,
) -> None:
    """Claim queued analyses, call the model, store the reports (OPENAI_API_KEY from the environment)."""
    from .runner import Runner

    cfg = runner_config(
        ctx,
        endpoint,
        concurrency=concurrency,
        client_slug=client,
        once=once,
        worker_id=worker_id or default_worker_id(),
        poll_seconds=poll_seconds,
        lease_seconds=lease_seconds,
        request_timeout=request_timeout,
        max_output_tokens=max_output_tokens,
        shutdown_grace=shutdown_grace,
        pool_max=pool_max,
        listen=not no_listen,
        metrics=metrics_port is not None,
        ack_window_ms=ack_window_ms,
        ack_batch=ack_batch,
        claim_ahead=claim_ahead,
    )
    try:
        runner = Runner(cfg)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    preflight(ctx)
    if metrics_port is not None:
        from . import metrics

        try:
            metrics.serve(metrics_port)
        except OSError as exc:
            raise click.BadParameter(
                f"cannot listen on port {metrics_port}: {exc.strerror}", param_hint="--metrics-port"
            ) from None
    import asyncio

    stats = asyncio.run(runner.run())  # logs its summary as one line (JSON with --log-format json)
    if stats.fatal is not None:  # --once stopped by 401/403, insufficient_quota, unknown model
        ctx.exit(EXIT_PROVIDER_FATAL)


# ---- batch: backlog runs through the Batch API (runner/parecer/batch.py) -----------
BATCH_COLUMNS = [
    "batch_id",
    "run_id",
    "status",
    "provider_status",
    "items",
    "in_flight",
    "done",
    "failed",
    "released",
    "cost_usd",
]


@main.group("batch", context_settings=CONTEXT)
def batch_group() -> None:
    """Backlog runs through the provider's Batch API: half price, results within 24 hours.

    `submit` claims a backlog run's items into batches and sends them; `poll` (from cron,
    or with --wait) stores their results and resumes whatever a crash interrupted."""


def _batch_rows(rows: list[Any]) -> list[dict[str, Any]]:
    import dataclasses

    return [dataclasses.asdict(r) for r in rows]


@batch_group.command("submit")
@click.argument("run_id", type=int_range(1, 2**63 - 1))
@click.option(
    "--max-items",
    type=int_range(1, 50000),
    default=None,
    help="Items per batch (default and cap: the setting batch_max_items).",
)
@click.option(
    "--worker-id", default=None, help="Worker name recorded with the batch (default host:pid)."
)
@click.option(
    "--max-output-tokens", type=int_range(16), default=4000, show_default=True, help="Per request."
)
@model_options
@json_option
@click.pass_context
def batch_submit(
    ctx: click.Context,
    run_id: int,
    max_items: int | None,
    worker_id: str | None,
    max_output_tokens: int,
    endpoint: ModelEndpoint,
    as_json: bool,
) -> None:
    """Claim a backlog run's claimable items into Batch API batches, upload and create them."""
    import asyncio

    from . import batch

    cfg = runner_config(
        ctx,
        endpoint,
        worker_id=worker_id or default_worker_id(),
        max_output_tokens=max_output_tokens,
    )
    if not (cfg.api_key or cfg.base_url):
        raise click.ClickException(
            "OPENAI_API_KEY is not set (or give OPENAI_BASE_URL for an OpenAI-compatible endpoint)"
        )
    preflight(ctx)
    try:
        rows = asyncio.run(batch.submit(cfg, run_id, max_items))
    except openai.OpenAIError as exc:
        raise click.ClickException(f"the provider refused the batch: {_first_line(exc)}") from None
    data = _batch_rows(rows)
    if as_json:
        emit_json(data)
    elif not data:
        click.echo(f"run {run_id}: nothing claimable to send")
    else:
        emit_table(data, BATCH_COLUMNS)


@batch_group.command("poll")
@click.argument("run_id", type=int_range(1, 2**63 - 1), required=False)
@click.option("--wait", is_flag=True, help="Poll until every open batch has ended and been stored.")
@click.option(
    "--interval",
    type=click.FloatRange(0.1, 3600),
    default=60.0,
    show_default=True,
    help="Seconds between polls with --wait.",
)
@click.option(
    "--concurrency",
    type=int_range(1, 256),
    default=8,
    show_default=True,
    help="Results stored (and repair calls made) at once.",
)
@click.option("--worker-id", default=None, help="Worker name for repair calls (default host:pid).")
@model_options
@json_option
@click.pass_context
def batch_poll(
    ctx: click.Context,
    run_id: int | None,
    wait: bool,
    interval: float,
    concurrency: int,
    worker_id: str | None,
    endpoint: ModelEndpoint,
    as_json: bool,
) -> None:
    """Resume and poll the open batches (of RUN_ID, or all), store the results of those that ended."""
    import asyncio

    from . import batch

    cfg = runner_config(
        ctx, endpoint, worker_id=worker_id or default_worker_id(), concurrency=concurrency
    )
    if not (cfg.api_key or cfg.base_url):
        raise click.ClickException(
            "OPENAI_API_KEY is not set (or give OPENAI_BASE_URL for an OpenAI-compatible endpoint)"
        )
    preflight(ctx)
    try:
        rows, _stats = asyncio.run(batch.poll(cfg, run_id, wait=wait, interval=interval))
    except openai.OpenAIError as exc:
        raise click.ClickException(
            f"the provider refused a batch call: {_first_line(exc)}"
        ) from None
    data = _batch_rows(rows)
    if as_json:
        emit_json(data)
    elif not data:
        click.echo("no open batches")
    else:
        emit_table(data, BATCH_COLUMNS)


@batch_group.command("cancel")
@click.argument("batch_id", type=int_range(1, 2**63 - 1))
@model_options
@json_option
@click.pass_context
def batch_cancel(ctx: click.Context, batch_id: int, endpoint: ModelEndpoint, as_json: bool) -> None:
    """Cancel a batch: at the provider if it was sent (the next poll stores what it finished
    and gives the rest back), else here, its items given back at once."""
    import asyncio

    from . import batch

    cfg = runner_config(ctx, endpoint)
    if not (cfg.api_key or cfg.base_url):
        raise click.ClickException(
            "OPENAI_API_KEY is not set (or give OPENAI_BASE_URL for an OpenAI-compatible endpoint)"
        )
    preflight(ctx)
    try:
        row = asyncio.run(batch.cancel(cfg, batch_id))
    except (batch.BatchBusy, batch.BatchDone) as exc:
        raise click.ClickException(str(exc)) from None
    except openai.OpenAIError as exc:
        raise click.ClickException(f"the provider refused the cancel: {_first_line(exc)}") from None
    data = _batch_rows([row])
    emit_json(data[0]) if as_json else emit_table(data, BATCH_COLUMNS)


@main.command("standin")
@click.option(
    "--port",
    type=int_range(1, 65535),
    default=8787,
    envvar="PARECER_STANDIN_PORT",
    show_envvar=True,
    help="Port on 127.0.0.1.",
)
@click.option(
    "--latency-ms",
    default="0,0",
    envvar="PARECER_STANDIN_LATENCY_MS",
    show_envvar=True,
    help="Latency range per request, 'MIN,MAX' milliseconds.",
)
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    envvar="PARECER_STANDIN_FAULT_RATE",
    show_envvar=True,
    help="Share of requests that get a fault, 0..1.",
)
@click.option(
    "--faults",
    default=None,
    envvar="PARECER_STANDIN_FAULTS",
    show_envvar=True,
    help="Comma-separated fault kinds (default all): rate_limit, quota, server_error, timeout, malformed, "
    "ungrounded, refusal, incomplete, context_length, auth, ungrounded_once (a bad citation in a first "
    "answer only: a repair request gets a grounded one).",
)
@click.option(
    "--quote-slips",
    type=float,
    default=0.0,
    envvar="PARECER_STANDIN_QUOTE_SLIPS",
    show_envvar=True,
    help="Share of evidence excerpts, 0..1, quoted with a realistic slip (curly quotes, ellipses, "
    "NFD, no-break space, dropped accent or emoji, ...), each still grounded.",
)
@click.option(
    "--rpm-limit",
    type=int_range(1),
    default=None,
    envvar="PARECER_STANDIN_RPM",
    show_envvar=True,
    help="Requests per minute before 429s.",
)
@click.option(
    "--tpm-limit",
    type=int_range(1),
    default=None,
    envvar="PARECER_STANDIN_TPM",
    show_envvar=True,
    help="Tokens per minute before 429s.",
)
@click.option("--seed", type=int, default=None, help="Seed for the fault dice.")
@click.option(
    "--require-key",
    default=None,
    envvar="PARECER_STANDIN_REQUIRE_KEY",
    show_envvar=True,
    help="Answer 401 unless the request's bearer token is this key.",
)
@click.option(
    "--log", "log_requests", is_flag=True, help="One line per request (never its content)."
)
def standin_cmd(
    port: int,
    latency_ms: str,
    fault_rate: float,
    faults: str | None,
    quote_slips: float,
    rpm_limit: int | None,
    tpm_limit: int | None,
    seed: int | None,
    require_key: str | None,
    log_requests: bool,
) -> None:
    """A local OpenAI-compatible stand-in (POST /v1/responses) with fault injection — not a real model."""
    from .devkit.standin import FAULT_KINDS, StandinConfig, serve_forever

    try:
        lo, _, hi = latency_ms.partition(",")
        lat = (int(lo), int(hi or lo))
        cfg = StandinConfig(
            port=port,
            latency_ms=lat,
            fault_rate=fault_rate,
            faults=tuple(f.strip() for f in faults.split(",")) if faults else FAULT_KINDS,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            seed=seed,
            quote_slips=quote_slips,
            require_key=require_key,
            log=(lambda line: click.echo(line, err=True)) if log_requests else None,
        )
    except ValueError as exc:
        raise click.ClickException(f"bad stand-in option: {exc}") from None
    serve_forever(
        cfg,
        on_ready=lambda url: click.echo(
            f"parecer stand-in (not a real model) listening on {url} — OPENAI_BASE_URL={url}",
            err=True,
        ),
    )


@main.group("sample", context_settings=CONTEXT)
def sample_group() -> None:
    """Bundled sample chat data (reference schema)."""


@sample_group.command("load")
@click.option(
    "--sessions", type=int_range(1, 1_000_000), default=300, help="How many sessions to generate."
)
@click.option("--seed", type=int, default=42, help="Generator seed (same seed, same data).")
@json_option
@click.pass_context
def sample_load(ctx: click.Context, sessions: int, seed: int, as_json: bool) -> None:
    """Load deterministic Brazilian-Portuguese support sessions into the reference schema (idempotent)."""
    from .devkit.sample import load_sample

    url = need_url(ctx)
    db.install_sql(url, paths.host_chat_schema())
    with connection(ctx) as conn:
        stats = _with_progress(
            "loading sample",
            lambda cb: load_sample(conn, sessions=sessions, seed=seed, progress=cb),
        )
    data = {
        k: getattr(stats, k)
        for k in (
            "clients",
            "contacts",
            "sessions",
            "messages",
            "inserted_sessions",
            "inserted_messages",
            "seconds",
        )
    }
    emit_json(data) if as_json else click.echo(
        f"sample: {stats.sessions} sessions, {stats.messages} messages "
        f"({stats.inserted_sessions} sessions new) in {stats.seconds:.1f}s"
    )


def _with_progress(label: str, work: Callable[[Callable[[int, int], None]], Any]) -> Any:
    from rich.progress import Progress

    with Progress(disable=not sys.stderr.isatty(), transient=True) as p:
        task = p.add_task(label, total=None)

        def cb(done: int, total: int) -> None:
            p.update(task, completed=done, total=total)

        return work(cb)


@main.command("demo")
@click.option(
    "--sessions", type=int_range(1, 1_000_000), default=300, help="Sample sessions to load."
)
@click.option(
    "--max-sessions", type=int_range(1), default=60, help="Sessions the demo run analyses."
)
@click.option("--concurrency", type=int_range(1, 1024), default=8, help="Items in flight.")
@model_options
@click.pass_context
def demo_cmd(
    ctx: click.Context, sessions: int, max_sessions: int, concurrency: int, endpoint: ModelEndpoint
) -> None:
    """The whole job end to end: database, sample data, script, dry run, run, reports.

    Uses PARECER_DATABASE_URL when set, otherwise an embedded throwaway PostgreSQL;
    the real OpenAI API when OPENAI_API_KEY is set, otherwise the local stand-in.
    """
    from .devkit.demo import run_demo

    try:
        run_demo(
            ctx.obj.get("database_url"),
            sessions=sessions,
            max_sessions=max_sessions,
            concurrency=concurrency,
            endpoint=endpoint,
        )
    except psycopg.Error as exc:
        raise click.ClickException(errors.describe(exc)) from None
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def _show_envvars(cmd: click.Command) -> None:
    """Name every option's environment variable in its help (PARECER_<COMMAND>_<OPTION> unless set)."""
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.is_eager:
            p.show_envvar = True
    if isinstance(cmd, click.Group):
        for sub in cmd.commands.values():
            _show_envvars(sub)


_show_envvars(main)

if __name__ == "__main__":  # pragma: no cover
    main()
