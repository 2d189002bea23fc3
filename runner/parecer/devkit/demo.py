"""`parecer demo`: the whole job on an embedded default, in one command."""

from __future__ import annotations

import asyncio
import json
from contextlib import ExitStack
from typing import Any

import click

from .. import db, paths
from ..config import DEFAULT_MODEL, ModelEndpoint, RunnerConfig
from ..runner import Runner

DEMO_CLIENT = "acme-telecom"
DEMO_KEY = "qualidade-atendimento"
DEMO_TOPICS = [
    "cancelamento",
    "cobrança indevida",
    "internet lenta ou sem conexão",
    "portabilidade",
    "cordialidade do atendente",
]
DEMO_SCRIPT = """Avalie a conversa de suporte de um provedor de internet e telefonia.
1. O problema do cliente foi resolvido? Se não, por quê?
2. O atendente foi cordial, claro e objetivo?
3. Houve risco de cancelamento (churn) ou reclamação formal (Procon, Anatel)?
4. Qual deve ser a próxima ação da equipe?"""


def say(text: str = "") -> None:
    click.echo(text)


def run_demo(
    database_url: str | None,
    *,
    sessions: int = 300,
    max_sessions: int = 60,
    concurrency: int = 8,
    endpoint: ModelEndpoint | None = None,
) -> None:
    """The demo on ``database_url`` (None: an embedded PostgreSQL), calling the model at
    ``endpoint`` when it has an API key, else the local stand-in."""
    if endpoint is None:
        endpoint = ModelEndpoint(DEFAULT_MODEL, base_url=None, api_key=None, key_label=None)
    from .sample import load_sample

    with ExitStack() as stack:
        if database_url:
            say(
                f"database: {_redact(database_url)} (the reference chat schema and adapter are installed there)"
            )
            url = database_url
        else:
            from .embedded import EmbeddedPostgres

            say("database: no PARECER_DATABASE_URL, starting an embedded throwaway PostgreSQL ...")
            url = stack.enter_context(EmbeddedPostgres()).url

        applied = db.migrate(url)
        say(f"migrations: {len(applied)} applied" if applied else "migrations: up to date")
        db.install_sql(url, paths.host_chat_schema())
        db.install_adapter(url, "reference")

        with db.connect(url) as conn:
            stats = load_sample(conn, sessions=sessions, seed=42)
            say(
                f"sample data: {stats.sessions} sessions, {stats.messages} messages, clients "
                f"{', '.join(s for s, _ in _clients(conn))} ({stats.inserted_sessions} sessions new)"
            )

            scripts = conn.execute(
                "SELECT * FROM parecer.list_scripts(%s, %s, active_only => true)",
                (DEMO_CLIENT, DEMO_KEY),
            ).fetchall()
            script: dict[str, Any] | None
            if scripts:
                script = scripts[0]
            else:
                script = conn.execute(
                    "SELECT * FROM parecer.create_script_version(%s, %s, %s, topics => %s, activate => true)",
                    (DEMO_CLIENT, DEMO_KEY, DEMO_SCRIPT, DEMO_TOPICS),
                ).fetchone()
            assert script is not None
            say(
                f"script: {DEMO_CLIENT}/{DEMO_KEY} v{script['version']} (active), topics: {', '.join(script['topics'])}"
            )

            run_args = dict(
                client_slug=DEMO_CLIENT,
                script_key=DEMO_KEY,
                min_messages=10,
                max_sessions=max_sessions,
            )
            sql = (
                "SELECT * FROM parecer.start_run(client_slug => %(client_slug)s, script_key => %(script_key)s,"
                " min_messages => %(min_messages)s, max_sessions => %(max_sessions)s, dry_run => %(dry)s)"
            )
            dry = conn.execute(sql, {**run_args, "dry": True}).fetchone()
            assert dry is not None
            say(
                "\ndry run (writes nothing): SELECT * FROM parecer.start_run('acme-telecom', 'qualidade-atendimento',"
                f" min_messages => 10, max_sessions => {max_sessions}, dry_run => true);"
            )
            for k in (
                "eligible",
                "already_done",
                "already_queued",
                "would_enqueue",
                "would_process_now",
            ):
                say(f"  {k:<18} {dry[k]}")
            res = conn.execute(sql, {**run_args, "dry": False}).fetchone()
            assert res is not None
            say(f"\nrun {res['run_id']}: {res['enqueued']} enqueued, {res['reset']} reset")

        api_key, base_url, key_label = endpoint.api_key, endpoint.base_url, endpoint.key_label
        if api_key:
            say(
                f"model: the real OpenAI API{' at ' + base_url if base_url else ''} (OPENAI_API_KEY is set)"
            )
        else:
            from .standin import Standin, StandinConfig

            standin = stack.enter_context(Standin(StandinConfig(latency_ms=(100, 400), seed=7)))
            base_url, api_key, key_label = standin.url, "standin", key_label or "standin"
            with db.connect(url) as conn:  # the stand-in is no provider to protect
                conn.execute(
                    "SELECT * FROM parecer.set_rate_limit(%s, rpm => 6000, tpm => 100000000)",
                    (f"{key_label}:{endpoint.model}",),
                )
            say(
                "model: no OPENAI_API_KEY -> the local stand-in (parecer-standin). Its reports are SYNTHETIC,"
                " not a real model's."
            )

        cfg = RunnerConfig(
            database_url=url,
            concurrency=concurrency,
            client_slug=DEMO_CLIENT,
            run_id=res["run_id"],
            model=endpoint.model,
            api_key=api_key,
            base_url=base_url,
            key_label=key_label,
            poll_seconds=2.0,
            request_timeout=60.0,
        )
        stats_r = asyncio.run(Runner(cfg).run())
        say(f"runner: {stats_r.line()}")

        with db.connect(url) as conn:
            summary = conn.execute(
                "SELECT * FROM parecer.run_summary(%s)", (res["run_id"],)
            ).fetchone()
            assert summary is not None
            say(f"\nSELECT * FROM parecer.run_summary({res['run_id']});")
            for k in ("processed", "failed", "retrying", "remaining", "total"):
                say(f"  {k:<10} {summary[k]}")
            rep = conn.execute(
                "SELECT r.* FROM parecer.reports r JOIN parecer.run_items i USING (analysis_id)"
                " WHERE i.run_id = %s ORDER BY r.processed_at DESC LIMIT 1",
                (res["run_id"],),
            ).fetchone()
            if rep:
                say(
                    f"\none report (session {rep['session_id']}, model {rep['model']}, prompt sha256 {rep['prompt_hash'][:16]}…):"
                )
                say(json.dumps(rep["report"], ensure_ascii=False, indent=2))
        # insights: the HTML report of the demo's client
        from ..insights_html import write_demo_report

        say(
            f"\ninsights report (parecer insights {DEMO_CLIENT} --html FILE): "
            f"{write_demo_report(url, DEMO_CLIENT)}"
        )
        if not database_url:
            say(
                "\n(the embedded database is deleted now; set PARECER_DATABASE_URL to keep the results)"
            )


def _clients(conn: Any) -> list[tuple[str, str]]:
    return [
        (r["slug"], r["name"])
        for r in conn.execute("SELECT slug, name FROM parecer.source_clients ORDER BY 1")
    ]


def _redact(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    p = conninfo_to_dict(url)
    if p.get("password"):
        p["password"] = "***"
    return make_conninfo(**p)  # type: ignore[arg-type]
