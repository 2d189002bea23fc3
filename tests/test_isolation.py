"""Tenant isolation (issue 17): runners and readers see only the clients they serve.

Roles are cluster-wide, so every role here has a unique name and is dropped at
the end. Calls are made on connections that log in as those roles (session_user),
and through SET ROLE, as the two ways a caller is identified.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from parecer import db

from .factories import Session, make_script, make_session, report_for
from .helpers import one, runner_config, table_checksum

Conn = psycopg.Connection[dict[str, Any]]
CLIENTS = ("alpha", "beta")
KEY = {c: f"key-{c}:m" for c in CLIENTS}  # the limit key bound to each client
USAGE = json.dumps({"input_tokens": 1000, "cached_input_tokens": 0, "output_tokens": 100})


@dataclass
class World:
    url: str
    roles: dict[str, str]  # label -> role name
    sessions: dict[str, list[Session]] = field(default_factory=dict)
    leased: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # an item of each client leased by postgres
    runs: dict[str, int] = field(default_factory=dict)

    def login(self, label: str) -> Conn:
        return db.connect(make_conninfo(self.url, user=self.roles[label]))


def _done(conn: Conn, client: str, s: Session) -> None:
    """Claim, prompt and report the item of session s (as the connection's role)."""
    item = one(conn, "SELECT * FROM parecer.claim('setup', client_slug => %s)", (client,))
    assert item["session_id"] == s.session_id
    p = one(conn, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (item["analysis_id"],))
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'm', %s, %s)",
        (
            item["analysis_id"],
            item["lease_token"],
            json.dumps(report_for(s)),
            p["prompt_hash"],
            USAGE,
        ),
    )


@pytest.fixture
def world(db_url: str) -> Iterator[World]:
    tag = uuid.uuid4().hex[:8]
    labels = {
        "runner_a": "IN ROLE parecer_runner",
        "group_a": "NOLOGIN",
        "runner_g": "IN ROLE parecer_runner",  # member of group_a (granted alpha)
        "runner_none": "IN ROLE parecer_runner",
        "reader_a": "IN ROLE parecer_reader",
        "reader_b": "IN ROLE parecer_reader",
        "admin": "IN ROLE parecer_admin",
    }
    roles = {k: f"t17_{k}_{tag}" for k in labels}
    w = World(db_url, roles)
    with db.connect(db_url) as c:
        try:
            for k, opts in labels.items():
                c.execute(
                    f"CREATE ROLE {roles[k]} {opts if opts == 'NOLOGIN' else 'LOGIN ' + opts}"
                )
            c.execute(f"GRANT {roles['group_a']} TO {roles['runner_g']}")
            for client in CLIENTS:
                script = make_script(c, client)
                w.sessions[client] = [make_session(c, client) for _ in range(3)]
                run = one(
                    c,
                    "SELECT * FROM parecer.start_run(%s, 'qa', min_idle => '0')",
                    (client,),
                )
                w.runs[client] = run["run_id"]
                c.execute(
                    "SELECT * FROM parecer.enqueue(%s, %s)",
                    ([s.session_id for s in w.sessions[client]], script["script_id"]),
                )
            for client in CLIENTS:  # one done item per client (a report, an attempt, spend)
                first = one(
                    c,
                    "SELECT session_id FROM parecer.analyses WHERE client_slug = %s "
                    "ORDER BY session_ended_at DESC LIMIT 1",
                    (client,),
                )["session_id"]
                _done(c, client, next(s for s in w.sessions[client] if s.session_id == first))
                # its session changes afterwards: a stale report
                c.execute(
                    "INSERT INTO chat.messages (id, session_id, from_me, media_type, body, created_at)"
                    " VALUES (%s, %s, false, 'text', 'mais uma', now())",
                    (f"{first}-late", first),
                )
                w.leased[client] = one(
                    c, "SELECT * FROM parecer.claim('other', client_slug => %s)", (client,)
                )
            for label, client in [
                ("runner_a", "alpha"),
                ("group_a", "alpha"),
                ("reader_a", "alpha"),
                ("reader_b", "beta"),
            ]:
                c.execute("SELECT * FROM parecer.grant_client(%s, %s)", (roles[label], client))
            for client in CLIENTS:  # each client's runners have a limit key of their own
                c.execute("SELECT * FROM parecer.bind_rate_limit(%s, %s)", (KEY[client], [client]))
            c.execute("SELECT parecer.set_setting('isolation', 'on')")
            yield w
        finally:
            for r in roles.values():
                c.execute(f"DROP ROLE IF EXISTS {r}")


def _rolled_back(conn: Conn, body: Callable[[], bool]) -> bool:
    """Whether body succeeds (False on a database error), in a transaction rolled back either way."""
    conn.execute("BEGIN")
    try:
        return body()
    except psycopg.Error:
        return False
    finally:
        conn.execute("ROLLBACK")


def _ok(
    conn: Conn, sql: str, args: Any = None, test: Callable[[list[dict[str, Any]]], bool] = bool
) -> bool:
    """Whether the call succeeds and its rows pass `test`; rolled back either way."""
    return _rolled_back(conn, lambda: test(conn.execute(sql, args).fetchall()))


def _claimed(conn: Conn, client: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM parecer.claim('w', client_slug => %s)", (client,)).fetchone()


def _claim_then(conn: Conn, client: str, sql: str) -> bool:
    """Claim an item of client as the caller, then run sql on it (analysis_id, lease_token)."""

    def body() -> bool:
        item = _claimed(conn, client)
        return item is not None and bool(
            conn.execute(sql, (item["analysis_id"], item["lease_token"])).fetchall()
        )

    return _rolled_back(conn, body)


def _claim_done(w: World, conn: Conn, client: str) -> bool:
    """Claim an item of client as the caller, ask its prompt and report it."""

    def body() -> bool:
        it = _claimed(conn, client)
        if it is None:
            return False
        p = one(conn, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (it["analysis_id"],))
        s = next(x for x in w.sessions[client] if x.session_id == it["session_id"])
        row = conn.execute(
            "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
            (it["analysis_id"], it["lease_token"], json.dumps(report_for(s)), p["prompt_hash"]),
        ).fetchone()
        return row is not None and row["status"] == "done"

    return _rolled_back(conn, body)


def _has_client(client: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda rows: any(r.get("client_slug") == client for r in rows)


def probes(w: World, conn: Conn, client: str) -> set[str]:
    """Every function and view that reads or changes something of client, tried as conn's role."""
    other = w.leased[client]
    s = w.sessions[client][0]
    run = w.runs[client]
    got = {
        "claim": _ok(conn, "SELECT * FROM parecer.claim('w', 10, client_slug => %s)", (client,)),
        "claim (any client)": _ok(
            conn, "SELECT * FROM parecer.claim('w', 10)", None, _has_client(client)
        ),
        "claim_with_prompts": _ok(
            conn,
            "SELECT * FROM parecer.claim_with_prompts('w', 10, client_slug => %s)",
            (client,),
            lambda rows: bool(rows) and all(r["prompt_hash"] for r in rows),
        ),
        "claim_with_prompts (any client)": _ok(
            conn, "SELECT * FROM parecer.claim_with_prompts('w', 10)", None, _has_client(client)
        ),
        # a row for another holder's item, but nothing of it unless the caller sees it
        "prompts_for (another's lease)": _ok(
            conn,
            "SELECT * FROM parecer.prompts_for(%s)",
            ([other["analysis_id"]],),
            lambda rows: any(
                r[k] is not None
                for r in rows
                for k in ("instructions", "input", "report_schema", "model")
            ),
        ),
        "prompt_for (own lease)": _claim_then(
            conn, client, "SELECT * FROM parecer.prompt_for(%s) WHERE %s::uuid IS NOT NULL"
        ),
        "prompt_for (another's lease)": _ok(
            conn, "SELECT * FROM parecer.prompt_for(%s)", (other["analysis_id"],)
        ),
        "leased_transcript (own lease)": _claim_then(
            conn, client, "SELECT * FROM parecer.leased_transcript(%s, %s)"
        ),
        "leased_transcript (its token)": _ok(
            conn,
            "SELECT * FROM parecer.leased_transcript(%s, %s)",
            (other["analysis_id"], other["lease_token"]),
        ),
        "session_transcript": _ok(
            conn, "SELECT * FROM parecer.session_transcript(%s)", (s.session_id,)
        ),
        "extend_lease (own lease)": _claim_then(
            conn, client, "SELECT parecer.extend_lease(%s, %s) AS t"
        ),
        "mark_failed (own lease)": _claim_then(
            conn, client, "SELECT * FROM parecer.mark_failed(%s, %s, 'x')"
        ),
        "release (own lease)": _claim_then(conn, client, "SELECT * FROM parecer.release(%s, %s)"),
        "mark_done (own lease)": _claim_done(w, conn, client),
        # another holder's item, its token in hand (leaked): within the caller's clients
        # the token is the capability; outside them the item is unknown (PR011)
        "extend_lease (its token)": _ok(
            conn,
            "SELECT parecer.extend_lease(%s, %s) AS t",
            (other["analysis_id"], other["lease_token"]),
        ),
        "release (its token)": _ok(
            conn,
            "SELECT * FROM parecer.release(%s, %s)",
            (other["analysis_id"], other["lease_token"]),
        ),
        "mark_failed (its token)": _ok(
            conn,
            "SELECT * FROM parecer.mark_failed(%s, %s, 'x')",
            (other["analysis_id"], other["lease_token"]),
        ),
        "mark_done_many (its token)": _ok(
            conn,
            "SELECT * FROM parecer.mark_done_many(%s)",
            (
                json.dumps(
                    [
                        {
                            "analysis_id": str(other["analysis_id"]),
                            "lease_token": str(other["lease_token"]),
                        }
                    ]
                ),
            ),
            lambda rows: rows[0]["outcome"] != "stale",  # reached the item (invalid report)
        ),
        "next_due": _ok(
            conn,
            "SELECT parecer.next_due(%s) AS t",
            (client,),
            lambda rows: rows[0]["t"] is not None,
        ),
        # the client's limit key: take from it, pause it
        "acquire_rate (its key)": _ok(
            conn, "SELECT * FROM parecer.acquire_rate(%s, 10)", (KEY[client],)
        ),
        "report_rate (its key)": _ok(
            conn,
            "SELECT parecer.report_rate(%s, retry_after_seconds => 60) AS t",
            (KEY[client],),
            lambda rows: rows[0]["t"] is not None,
        ),
        "rate_limits (its key)": _ok(
            conn,
            "SELECT * FROM parecer.rate_limits WHERE limit_key = %s",
            (KEY[client],),
        ),
        # an admin's calls, with the client's slug and ids
        "list_scripts": _ok(conn, "SELECT * FROM parecer.list_scripts(%s)", (client,)),
        "eligible_sessions": _ok(
            conn, "SELECT * FROM parecer.eligible_sessions(%s, min_idle => '0')", (client,)
        ),
        "set_budget": _ok(conn, "SELECT * FROM parecer.set_budget(%s, 1)", (client,)),
        "retry_failed": _ok(
            conn, "SELECT * FROM parecer.retry_failed(client_slug => %s)", (client,), lambda r: True
        ),
        "bind_rate_limit": _ok(
            conn, "SELECT * FROM parecer.bind_rate_limit(%s, %s)", (KEY[client], [client])
        ),
        "grant_client": _ok(
            conn, "SELECT * FROM parecer.grant_client('parecer_runner', %s)", (client,)
        ),
        "run_summary": _ok(conn, "SELECT * FROM parecer.run_summary(%s)", (run,)),
        "insights": _ok(conn, "SELECT parecer.insights(%s) AS i", (client,)),
        "insight_sessions": _ok(
            conn, "SELECT * FROM parecer.insight_sessions(%s)", (client,), lambda rows: True
        ),
    }
    for view in (
        "reports",
        "attempts",
        "queue_status",
        "runs_overview",
        "budgets",
        "spend_daily",
        "spend_monthly",
        "client_status",
        "stale_reports",
    ):
        got[view] = _ok(conn, f"SELECT * FROM parecer.{view}", None, _has_client(client))
    got["run_costs"] = _ok(
        conn,
        "SELECT * FROM parecer.run_costs WHERE run_id = %s",
        (run,),
    )
    return {k for k, v in got.items() if v}


RUNNER = {
    "claim",
    "claim (any client)",
    "claim_with_prompts",
    "claim_with_prompts (any client)",
    "prompt_for (own lease)",
    "leased_transcript (own lease)",
    "extend_lease (own lease)",
    "mark_failed (own lease)",
    "release (own lease)",
    "mark_done (own lease)",
    # the token is the capability, within its clients
    "leased_transcript (its token)",
    "extend_lease (its token)",
    "release (its token)",
    "mark_failed (its token)",
    "mark_done_many (its token)",
    "next_due",
    "acquire_rate (its key)",
    "report_rate (its key)",
}
READER = {
    "run_summary",
    "insights",
    "insight_sessions",
    "reports",
    "attempts",
    "queue_status",
    "runs_overview",
    "budgets",
    "spend_daily",
    "spend_monthly",
    "client_status",
    "stale_reports",
    "run_costs",
    "rate_limits (its key)",
}
# parecer_admin holds no runner privilege: it reads and manages every client, it works no item
ADMIN = READER | {
    "prompt_for (another's lease)",
    "prompts_for (another's lease)",
    "session_transcript",
    "list_scripts",
    "eligible_sessions",
    "set_budget",
    "retry_failed",
    "bind_rate_limit",
    "grant_client",
}
# role -> client -> what it may do with that client's data (docs/concepts.md, "Security")
CLIENT_MATRIX: dict[str, dict[str, set[str]]] = {
    "runner_a": {"alpha": RUNNER, "beta": set()},
    "runner_g": {"alpha": RUNNER, "beta": set()},
    "runner_none": {"alpha": set(), "beta": set()},
    "reader_a": {"alpha": READER, "beta": set()},
    "reader_b": {"alpha": set(), "beta": READER},
    "admin": {"alpha": ADMIN, "beta": ADMIN},
}


def test_client_matrix(world: World) -> None:
    """For each role and each client, what it can reach equals the documented matrix."""
    got: dict[str, dict[str, set[str]]] = {}
    for label in CLIENT_MATRIX:
        with world.login(label) as c:
            got[label] = {client: probes(world, c, client) for client in CLIENTS}
    assert got == CLIENT_MATRIX


def test_set_role_is_the_caller_too(world: World) -> None:
    """A login that SETs ROLE to a role bound to alpha acts for that role (it can only narrow)."""
    with db.connect(world.url) as c:
        c.execute(f"SET ROLE {world.roles['reader_a']}")
        assert {r["client_slug"] for r in c.execute("SELECT * FROM parecer.reports")} == {"alpha"}
        c.execute(f"SET ROLE {world.roles['runner_none']}")
        assert c.execute("SELECT * FROM parecer.claim('w', 10)").fetchall() == []
        c.execute("RESET ROLE")  # the superuser sees every client
        assert {r["client_slug"] for r in c.execute("SELECT * FROM parecer.reports")} == set(
            CLIENTS
        )


def test_runner_of_alpha_cannot_touch_beta(world: World) -> None:
    """By any runner call, with beta's analysis ids: nothing of beta is read or changed."""
    beta = world.leased["beta"]
    beta_rows = "SELECT md5(string_agg(a::text, ',' ORDER BY a.analysis_id)) AS h FROM parecer.analyses a WHERE client_slug = 'beta'"
    with db.connect(world.url) as su:
        before = table_checksum(su)
        before_beta = one(su, beta_rows)
    with world.login("runner_a") as c:
        fake = str(uuid.uuid4())
        for sql, args, code in [
            ("SELECT * FROM parecer.prompt_for(%s)", (beta["analysis_id"],), "PR011"),
            ("SELECT * FROM parecer.prompt_for(%s)", (fake,), "PR011"),
            (
                "SELECT * FROM parecer.leased_transcript(%s, %s)",
                (beta["analysis_id"], fake),
                "PR006",
            ),
            ("SELECT * FROM parecer.leased_transcript(%s, %s)", (fake, fake), "PR006"),
            # beta's item, with a wrong token, with its own token (leaked), and an id that
            # does not exist: one error, PR011, before anything about the lease is told
            *[
                (sql, (aid, tok, *extra), "PR011")
                for aid, tok in [
                    (beta["analysis_id"], fake),
                    (beta["analysis_id"], beta["lease_token"]),
                    (fake, fake),
                ]
                for sql, extra in [
                    ("SELECT * FROM parecer.extend_lease(%s, %s)", ()),
                    ("SELECT * FROM parecer.mark_failed(%s, %s, 'x')", ()),
                    ("SELECT * FROM parecer.release(%s, %s)", ()),
                    ("SELECT * FROM parecer.mark_done(%s, %s, '{}', 'm', %s)", ("0" * 64,)),
                ]
            ],
            (
                "SELECT * FROM parecer.leased_transcript(%s, %s)",
                (beta["analysis_id"], beta["lease_token"]),
                "PR006",
            ),
            ("SELECT * FROM parecer.session_transcript(%s)", (beta["session_id"],), "42501"),
        ]:
            with pytest.raises(psycopg.Error) as exc:
                c.execute(sql, args)
            assert exc.value.sqlstate == code, sql
        # beta's work is not claimable by alpha's runner, whatever client_slug it passes
        assert (
            c.execute("SELECT * FROM parecer.claim('w', 100, client_slug => 'beta')").fetchall()
            == []
        )
        rows = c.execute("SELECT * FROM parecer.claim('w', 100)").fetchall()
        assert rows and {r["client_slug"] for r in rows} == {"alpha"}
        assert c.execute("SELECT parecer.next_due('beta') AS t").fetchone() == {"t": None}
        # mark_done_many goes through mark_done: beta's item stays as it was
        out = c.execute(
            "SELECT * FROM parecer.mark_done_many(%s)",
            (json.dumps([{"analysis_id": str(beta["analysis_id"]), "lease_token": fake}]),),
        ).fetchall()
        assert [r["outcome"] for r in out] == ["stale"]
    with db.connect(world.url) as su:
        after = table_checksum(su)
        # only the analyses table changed (alpha's claim), and none of beta's rows in it
        assert {k for k in after if after[k] != before[k]} == {"analyses"}
        assert one(su, beta_rows) == before_beta
        got = one(
            su,
            "SELECT status, lease_token, leased_to FROM parecer.analyses WHERE analysis_id = %s",
            (beta["analysis_id"],),
        )
        assert got == {
            "status": "processing",
            "lease_token": beta["lease_token"],
            "leased_to": "postgres",
        }
        n = one(
            su,
            "SELECT count(*) AS n FROM parecer.analyses WHERE client_slug = 'beta' AND status = 'pending'",
        )
        assert n["n"] == 1  # of three: one done, one leased by postgres, one waiting


def test_two_readers_see_their_own_client(world: World) -> None:
    for label, client in [("reader_a", "alpha"), ("reader_b", "beta")]:
        with world.login(label) as c:
            for view in (
                "reports",
                "attempts",
                "queue_status",
                "runs_overview",
                "budgets",
                "spend_daily",
                "spend_monthly",
                "client_status",
                "stale_reports",
            ):
                slugs = {r["client_slug"] for r in c.execute(f"SELECT * FROM parecer.{view}")}
                assert slugs == {client}, (label, view)
            m = one(c, "SELECT * FROM parecer.metrics")
            assert (m["pending"], m["processing"]) == (1, 1)  # its client's only
            with pytest.raises(psycopg.Error) as exc:
                c.execute(
                    "SELECT parecer.insights(%s)", ("beta" if client == "alpha" else "alpha",)
                )
            assert exc.value.sqlstate == "PR001"  # the other client is unknown, as a missing one
            with pytest.raises(psycopg.Error) as exc:
                c.execute("SELECT parecer.insights('no-such-client')")
            assert exc.value.sqlstate == "PR001"
    with world.login("admin") as c:
        m = one(c, "SELECT * FROM parecer.metrics")
        assert (m["pending"], m["processing"]) == (2, 2)


def test_isolation_off_keeps_single_tenant_behaviour(world: World) -> None:
    with db.connect(world.url) as su:
        su.execute("SELECT parecer.set_setting('isolation', 'off')")
    with world.login("runner_none") as c:
        rows = c.execute("SELECT * FROM parecer.claim('w', 100)").fetchall()
        assert {r["client_slug"] for r in rows} == set(CLIENTS)
    with world.login("reader_a") as c:
        assert {r["client_slug"] for r in c.execute("SELECT * FROM parecer.reports")} == set(
            CLIENTS
        )


def test_grants_are_listed_and_revoked(world: World) -> None:
    with world.login("admin") as c:
        rows = c.execute(
            "SELECT role_name, client_slug FROM parecer.client_grants WHERE role_name = %s",
            (world.roles["runner_a"],),
        ).fetchall()
        assert rows == [{"role_name": world.roles["runner_a"], "client_slug": "alpha"}]
        again = c.execute(
            "SELECT * FROM parecer.grant_client(%s, 'alpha')", (world.roles["runner_a"],)
        ).fetchall()
        assert len(again) == 1  # granting twice is harmless
        with pytest.raises(psycopg.Error) as exc:
            c.execute("SELECT * FROM parecer.grant_client('t17_no_such_role', 'alpha')")
        assert exc.value.sqlstate == "PR018"
        with pytest.raises(psycopg.Error) as exc:
            c.execute("SELECT * FROM parecer.grant_client(%s, 'nope')", (world.roles["runner_a"],))
        assert exc.value.sqlstate == "PR001"
        assert one(
            c, "SELECT parecer.revoke_client(%s, 'alpha') AS n", (world.roles["runner_a"],)
        ) == {"n": 1}
    with world.login("runner_a") as c:  # fail closed: no client left
        assert c.execute("SELECT * FROM parecer.claim('w', 100)").fetchall() == []
    with world.login("runner_g") as c:  # the group's grant still holds for its member
        assert c.execute("SELECT * FROM parecer.claim('w', 100)").fetchall() != []


def test_prompt_hash_is_checked(world: World) -> None:
    with world.login("runner_a") as c:
        items = c.execute("SELECT * FROM parecer.claim('w', 2)").fetchall()
        assert len(items) == 1
        it = items[0]
        s = next(x for x in world.sessions["alpha"] if x.session_id == it["session_id"])
        args = (it["analysis_id"], it["lease_token"], json.dumps(report_for(s)))
        # isolation on: no prompt given under this lease, no report
        with pytest.raises(psycopg.Error) as exc:
            c.execute("SELECT parecer.mark_done(%s, %s, %s, 'm', %s)", (*args, "a" * 64))
        assert exc.value.sqlstate == "PR017"
        p = one(c, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (it["analysis_id"],))
        with pytest.raises(psycopg.Error) as exc:
            c.execute("SELECT parecer.mark_done(%s, %s, %s, 'm', %s)", (*args, "a" * 64))
        assert exc.value.sqlstate == "PR017"
        c.execute("SELECT parecer.mark_done(%s, %s, %s, 'm', %s)", (*args, p["prompt_hash"]))
    with db.connect(world.url) as su:
        row = one(
            su,
            "SELECT prompt_hash, given_prompt_hash, leased_to FROM parecer.analyses WHERE analysis_id = %s",
            (it["analysis_id"],),
        )
        assert row == {
            "prompt_hash": p["prompt_hash"],
            "given_prompt_hash": p["prompt_hash"],
            "leased_to": world.roles["runner_a"],
        }


def test_prompt_for_by_someone_else_records_nothing(conn: Conn) -> None:
    """Isolation off: an admin looking at an item in flight does not change what its holder must report."""
    script = make_script(conn)
    s = make_session(conn)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    it = one(conn, "SELECT * FROM parecer.claim('w')")
    conn.execute("SET ROLE parecer_admin")
    conn.execute("SELECT * FROM parecer.prompt_for(%s)", (it["analysis_id"],))
    conn.execute("RESET ROLE")
    assert one(conn, "SELECT given_prompt_hash FROM parecer.analyses") == {
        "given_prompt_hash": None
    }
    # isolation off and no prompt given: the reported hash is taken at its word
    conn.execute(
        "SELECT parecer.mark_done(%s, %s, %s, 'm', %s)",
        (it["analysis_id"], it["lease_token"], json.dumps(report_for(s)), "b" * 64),
    )


def test_caps_a_runner_cannot_exceed(conn: Conn) -> None:
    script = make_script(conn)
    ss = [make_session(conn) for _ in range(3)]
    conn.execute(
        "SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id for s in ss], script["script_id"])
    )
    conn.execute("SELECT parecer.set_setting('max_claim_items', '2')")
    conn.execute("SET ROLE parecer_runner")
    assert len(conn.execute("SELECT * FROM parecer.claim('w', 1000)").fetchall()) == 2
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT * FROM parecer.claim('w', 1, lease_seconds => 3601)")
    assert exc.value.sqlstate == "PR010"
    it = one(conn, "SELECT * FROM parecer.claim('w', 1, lease_seconds => 3600)")
    with pytest.raises(psycopg.Error) as exc:
        conn.execute(
            "SELECT parecer.extend_lease(%s, %s, 86400)", (it["analysis_id"], it["lease_token"])
        )
    assert exc.value.sqlstate == "PR010"
    until = one(
        conn,
        "SELECT parecer.report_rate('k:m', retry_after_seconds => 86400) - clock_timestamp() AS d",
    )["d"]
    assert 3590 < until.total_seconds() <= 3600
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT * FROM parecer.acquire_rate('k2:m', 400001)")
    assert exc.value.sqlstate == "PR016"
    assert one(conn, "SELECT (parecer.acquire_rate('k2:m', 400000)).granted AS g") == {"g": True}
    conn.execute("RESET ROLE")


@contextmanager
def _evil_path(conn: Conn) -> Iterator[None]:
    conn.execute("CREATE SCHEMA evil")
    conn.execute(
        "CREATE FUNCTION evil.pg_has_role(name, oid, text) RETURNS boolean LANGUAGE sql AS 'SELECT true'"
    )
    conn.execute(
        "CREATE FUNCTION evil.current_setting(text) RETURNS text LANGUAGE sql AS $$ SELECT 'none' $$"
    )
    conn.execute("CREATE TABLE evil._client_grants (role_oid oid, client_id text)")
    conn.execute("CREATE TABLE evil._settings (name text, value text, default_value text)")
    conn.execute("INSERT INTO evil._settings VALUES ('isolation', 'off', 'off')")
    conn.execute("CREATE TABLE evil._rate_limits (limit_key text, client_ids text[])")
    conn.execute("CREATE FUNCTION evil._serves(text) RETURNS boolean LANGUAGE sql AS 'SELECT true'")
    conn.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
    conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA evil TO PUBLIC")
    conn.execute("SET search_path = evil, public")
    yield
    conn.execute("RESET search_path")


def test_isolation_cannot_be_hijacked_through_search_path(world: World) -> None:
    with db.connect(world.url) as su, _evil_path(su):
        su.execute(f"SET ROLE {world.roles['runner_none']}")
        assert su.execute("SELECT * FROM parecer.claim('w', 100)").fetchall() == []
        su.execute(f"SET ROLE {world.roles['reader_b']}")
        assert {r["client_slug"] for r in su.execute("SELECT * FROM parecer.reports")} == {"beta"}
        su.execute(f"SET ROLE {world.roles['runner_a']}")
        it = one(su, "SELECT * FROM parecer.claim('w')")
        rows = su.execute(
            "SELECT * FROM parecer.leased_transcript(%s, %s)",
            (it["analysis_id"], it["lease_token"]),
        ).fetchall()
        assert rows and all(r["message_id"].startswith(it["session_id"]) for r in rows)
        # the limit keys stay bound: alpha's runner takes from alpha's key, not beta's
        assert one(su, "SELECT (parecer.acquire_rate(%s, 1)).granted AS g", (KEY["alpha"],))["g"]
        with pytest.raises(psycopg.Error) as exc:
            su.execute("SELECT parecer.report_rate(%s, retry_after_seconds => 60)", (KEY["beta"],))
        assert exc.value.sqlstate == "PR025"
        # an admin binds keys with the same path: the binding is what it says
        su.execute(f"SET ROLE {world.roles['admin']}")
        row = one(su, "SELECT * FROM parecer.bind_rate_limit(%s, '{alpha}')", (KEY["alpha"],))
        assert row["client_slugs"] == ["alpha"]
        su.execute(f"SET ROLE {world.roles['runner_a']}")
        # and a lease of beta's stays unknown to it, its token in hand
        beta = world.leased["beta"]
        with pytest.raises(psycopg.Error) as exc:
            su.execute("SELECT parecer.release(%s, %s)", (beta["analysis_id"], beta["lease_token"]))
        assert exc.value.sqlstate == "PR011"
        su.execute("RESET ROLE")


GROUP_OF = {
    "runner_a": "parecer_runner",
    "runner_g": "parecer_runner",
    "runner_none": "parecer_runner",
    "reader_a": "parecer_reader",
    "reader_b": "parecer_reader",
    "admin": "parecer_admin",
}


def test_login_roles_have_their_group_privileges(world: World) -> None:
    """Every public function and view, tried by each login role: what it may call is its group's row of the role matrix."""
    from .test_roles import CALLS, MATRIX, RELATIONS

    def may(c: Conn, sql: str) -> bool:
        c.execute("BEGIN")
        try:
            c.execute(sql)
            return True
        except psycopg.errors.InsufficientPrivilege:
            return False
        except psycopg.Error:
            return True  # past the privilege check, into the function's own errors
        finally:
            c.execute("ROLLBACK")

    for label, group in GROUP_OF.items():
        with world.login(label) as c:
            got = {name for name, sql in CALLS.items() if may(c, sql)}
            got |= {r for r in RELATIONS if may(c, f"SELECT * FROM parecer.{r} LIMIT 1")}
        assert got == MATRIX[group], label


def test_runner_bound_to_alpha_drains_alpha_only(world: World) -> None:
    """The real runner, logged in as a role bound to alpha, with isolation on: alpha's work only, every report's hash the one given."""
    from parecer.devkit.standin import Standin, StandinConfig
    from parecer.runner import run

    url = make_conninfo(world.url, user=world.roles["runner_a"])

    def drain() -> Any:
        with Standin(StandinConfig(latency_ms=(1, 5), seed=5)) as s:
            cfg = runner_config(
                url, s, "test", concurrency=2, once=True, request_timeout=5.0, poll_seconds=30.0
            )
            return run(cfg)

    # its limit key is bound to no client yet: PR025, a fatal pause (the item goes back, no attempt spent)
    stats = drain()
    assert stats.outcomes == {"released": 1} and stats.fatal is not None
    assert "limit key key-9f86d081:gpt-5-mini" in stats.fatal
    with db.connect(world.url) as su:
        su.execute("SELECT * FROM parecer.bind_rate_limit('key-9f86d081:gpt-5-mini', '{alpha}')")
    stats = drain()
    assert stats.outcomes.get("done") == 1
    with db.connect(world.url) as su:
        rows = su.execute(
            "SELECT client_slug, status, leased_to, prompt_hash = given_prompt_hash AS same "
            "FROM parecer.analyses WHERE worker NOT IN ('setup', 'other') ORDER BY 1"
        ).fetchall()
        assert rows == [
            {
                "client_slug": "alpha",
                "status": "done",
                "leased_to": world.roles["runner_a"],
                "same": True,
            }
        ]
        beta = su.execute(
            "SELECT status, count(*) AS n FROM parecer.analyses WHERE client_slug = 'beta' GROUP BY 1 ORDER BY 1"
        ).fetchall()
        assert beta == [
            {"status": "done", "n": 1},
            {"status": "pending", "n": 1},
            {"status": "processing", "n": 1},
        ]


def _lease_calls(it: dict[str, Any], report: str, prompt_hash: str) -> dict[str, tuple[str, Any]]:
    """Every call a runner makes on an item it holds, with the item's own lease token."""
    a, t = it["analysis_id"], it["lease_token"]
    return {
        "prompt_for": ("SELECT * FROM parecer.prompt_for(%s)", (a,)),
        "leased_transcript": ("SELECT * FROM parecer.leased_transcript(%s, %s)", (a, t)),
        "extend_lease": ("SELECT parecer.extend_lease(%s, %s)", (a, t)),
        "mark_done": (
            "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
            (a, t, report, prompt_hash),
        ),
        "mark_failed": ("SELECT * FROM parecer.mark_failed(%s, %s, 'x')", (a, t)),
        "release": ("SELECT * FROM parecer.release(%s, %s)", (a, t)),
    }


def _refused(conn: Conn, calls: dict[str, tuple[str, Any]]) -> dict[str, str | None]:
    """The SQLSTATE each call fails with (None: it succeeded), each rolled back."""
    got: dict[str, str | None] = {}
    for name, (sql, args) in calls.items():
        conn.execute("BEGIN")
        try:
            conn.execute(sql, args).fetchall()
            got[name] = None
        except psycopg.Error as exc:
            got[name] = exc.sqlstate
        finally:
            conn.execute("ROLLBACK")
    return got


REVOKED = {
    "prompt_for": "PR011",
    "leased_transcript": "PR006",
    "extend_lease": "PR011",
    "mark_done": "PR011",
    "mark_failed": "PR011",
    "release": "PR011",
}


def test_revoked_mid_lease_finishes_nothing_and_the_item_goes_back(world: World) -> None:
    """Revoked while it holds a lease: every call on the item is refused as for an
    unknown one, the item is back in the queue at once (no attempt spent), and a
    runner still allowed finishes it."""
    with world.login("runner_a") as c:
        it = one(c, "SELECT * FROM parecer.claim('w')")
        s = next(x for x in world.sessions["alpha"] if x.session_id == it["session_id"])
        p = one(c, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (it["analysis_id"],))
        calls = _lease_calls(it, json.dumps(report_for(s)), p["prompt_hash"])
        assert set(_refused(c, calls).values()) == {None}  # all fine while granted
        with world.login("admin") as adm:
            assert one(
                adm, "SELECT parecer.revoke_client(%s, 'alpha') AS n", (world.roles["runner_a"],)
            ) == {"n": 1}
        with db.connect(world.url) as su:
            before = table_checksum(su)
        assert _refused(c, calls) == REVOKED
        out = c.execute(
            "SELECT * FROM parecer.mark_done_many(%s)",
            (
                json.dumps(
                    [
                        {
                            "analysis_id": str(it["analysis_id"]),
                            "lease_token": str(it["lease_token"]),
                            "report": report_for(s),
                            "model": "m",
                            "prompt_hash": p["prompt_hash"],
                        }
                    ]
                ),
            ),
        ).fetchall()
        assert [(r["outcome"], r["sqlstate"]) for r in out] == [("stale", "PR011")]
    with db.connect(world.url) as su:
        assert table_checksum(su) == before  # the refused calls changed nothing
        row = one(
            su,
            "SELECT status, lease_token, retry_count, releases, claims FROM parecer.analyses"
            " WHERE analysis_id = %s",
            (it["analysis_id"],),
        )
        assert row == {
            "status": "pending",
            "lease_token": None,
            "retry_count": 0,
            "releases": 0,
            "claims": 1,
        }
        att = one(
            su,
            "SELECT outcome, error FROM parecer.attempts WHERE analysis_id = %s",
            (it["analysis_id"],),
        )
        assert att == {
            "outcome": "released",
            "error": f"released by revoke_client: {world.roles['runner_a']} no longer serves alpha",
        }
        # postgres's own lease of alpha (worker 'other') is untouched: it still serves alpha
        other = world.leased["alpha"]
        assert one(
            su,
            "SELECT lease_token FROM parecer.analyses WHERE analysis_id = %s",
            (other["analysis_id"],),
        ) == {"lease_token": other["lease_token"]}
    with world.login("runner_g") as c:  # a runner still allowed takes it over at once
        assert _claim_done(world, c, "alpha")


def test_revoked_while_isolation_was_off_is_refused_once_on(world: World) -> None:
    """The lease check itself, without the release: a grant revoked while isolation was
    off leaves the lease in place; with isolation on again, the holder can finish
    nothing and the lease runs out as usual."""
    with world.login("runner_a") as c:
        it = one(c, "SELECT * FROM parecer.claim('w')")
        s = next(x for x in world.sessions["alpha"] if x.session_id == it["session_id"])
        p = one(c, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (it["analysis_id"],))
        with db.connect(world.url) as su:
            su.execute("SELECT parecer.set_setting('isolation', 'off')")
            su.execute("SELECT parecer.revoke_client(%s)", (world.roles["runner_a"],))
            assert one(
                su,
                "SELECT status FROM parecer.analyses WHERE analysis_id = %s",
                (it["analysis_id"],),
            ) == {"status": "processing"}
            su.execute("SELECT parecer.set_setting('isolation', 'on')")
        calls = _lease_calls(it, json.dumps(report_for(s)), p["prompt_hash"])
        assert _refused(c, calls) == REVOKED
    with db.connect(world.url) as su:
        assert one(
            su,
            "SELECT status, lease_token FROM parecer.analyses WHERE analysis_id = %s",
            (it["analysis_id"],),
        ) == {"status": "processing", "lease_token": it["lease_token"]}


def test_rate_keys_are_bound_to_clients(world: World) -> None:
    """A runner of alpha can neither drain nor pause a key beta's runners use; a key
    bound to both is shared; isolation off: as before, any key."""
    from .test_cli_errors import cli

    shared = "key-shared:m"
    r = cli(world.url, "limits", "bind", shared, "beta", "alpha")
    assert (r.exit_code, r.output) == (0, f"{shared}: bound to alpha, beta\n")
    r = cli(world.url, "limits", "bind", shared, "nope")
    assert r.exit_code == 1 and "[PR001]" in r.output
    with world.login("admin") as adm:
        row = one(adm, "SELECT * FROM parecer.bind_rate_limit(%s, %s)", (shared, list(CLIENTS)))
        assert row["client_slugs"] == list(CLIENTS)
        with pytest.raises(psycopg.Error) as exc:
            adm.execute("SELECT * FROM parecer.bind_rate_limit('k:m', '{no-such-client}')")
        assert exc.value.sqlstate == "PR001"
    with db.connect(world.url) as su:
        before = su.execute("SELECT * FROM parecer._rate_limits ORDER BY limit_key").fetchall()
    with world.login("runner_a") as c:
        for key in (KEY["beta"], "key-unbound:m"):
            for sql in (
                "SELECT * FROM parecer.acquire_rate(%s, 100000)",
                "SELECT parecer.report_rate(%s, retry_after_seconds => 3600)",
            ):
                with pytest.raises(psycopg.Error) as exc:
                    c.execute(sql, (key,))
                assert exc.value.sqlstate == "PR025", (sql, key)
    with db.connect(world.url) as su:  # nothing changed, no key created
        assert (
            su.execute("SELECT * FROM parecer._rate_limits ORDER BY limit_key").fetchall() == before
        )
    with world.login("runner_a") as c:
        for key in (KEY["alpha"], shared):
            assert one(c, "SELECT (parecer.acquire_rate(%s, 10)).granted AS g", (key,)) == {
                "g": True
            }
        assert one(
            c,
            "SELECT parecer.report_rate(%s, retry_after_seconds => 5) IS NOT NULL AS p",
            (shared,),
        ) == {"p": True}
    with world.login("runner_none") as c:  # granted nothing: no key at all
        with pytest.raises(psycopg.Error) as exc:
            c.execute("SELECT * FROM parecer.acquire_rate(%s)", (shared,))
        assert exc.value.sqlstate == "PR025"
    for label, keys in [
        ("reader_a", {KEY["alpha"], shared}),
        ("reader_b", {KEY["beta"], shared}),
    ]:
        with world.login(label) as c:
            got = {r["limit_key"] for r in c.execute("SELECT * FROM parecer.rate_limits")}
            assert got == keys, label
    with world.login("admin") as c:
        got = {r["limit_key"] for r in c.execute("SELECT * FROM parecer.rate_limits")}
        assert {KEY["alpha"], KEY["beta"], shared} <= got
    with db.connect(world.url) as su:
        su.execute("SELECT parecer.set_setting('isolation', 'off')")
    with world.login("runner_a") as c:  # single tenant: every key, as before bindings existed
        assert one(c, "SELECT (parecer.acquire_rate(%s, 10)).granted AS g", (KEY["beta"],)) == {
            "g": True
        }
        c.execute("SELECT parecer.report_rate('key-unbound:m', retry_after_seconds => 1)")


def test_prompt_hash_rule_holds_with_isolation_off(conn: Conn) -> None:
    """Isolation off: once prompt_for gave the holder a prompt under the lease, only its
    hash is accepted (PR017), as with isolation on."""
    script = make_script(conn)
    s = make_session(conn)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    conn.execute("SET ROLE parecer_runner")
    it = one(conn, "SELECT * FROM parecer.claim('w')")
    p = one(conn, "SELECT prompt_hash FROM parecer.prompt_for(%s)", (it["analysis_id"],))
    args = (it["analysis_id"], it["lease_token"], json.dumps(report_for(s)))
    with pytest.raises(psycopg.Error) as exc:
        conn.execute("SELECT parecer.mark_done(%s, %s, %s, 'm', %s)", (*args, "c" * 64))
    assert exc.value.sqlstate == "PR017"
    row = one(
        conn, "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)", (*args, p["prompt_hash"])
    )
    assert row["status"] == "done"
    conn.execute("RESET ROLE")


def test_doctor_warns_about_isolation(world: World) -> None:
    def check(c: Conn) -> dict[str, Any]:
        return one(c, "SELECT * FROM parecer.doctor() WHERE check_name = 'isolation'")

    with world.login("admin") as c:
        got = check(c)
        assert got["status"] == "warn"
        # on, and a runner login granted nothing: it gets nothing (fail closed)
        assert world.roles["runner_none"] in got["detail"]
        assert world.roles["runner_a"] not in got["detail"]  # granted alpha
        assert world.roles["runner_g"] not in got["detail"]  # through its group
        assert world.roles["admin"] not in got["detail"]
        assert "parecer access grant ROLE CLIENT" in got["fix"]
    with db.connect(world.url) as su:
        gone = f"t17_gone_{uuid.uuid4().hex[:8]}"
        su.execute(f"CREATE ROLE {gone}")
        su.execute("SELECT * FROM parecer.grant_client(%s, 'alpha')", (gone,))
        oid = one(su, "SELECT oid::int AS o FROM pg_roles WHERE rolname = %s", (gone,))["o"]
        su.execute(f"DROP ROLE {gone}")
        got = check(su)
        assert f"grants to dropped roles: #{oid} (alpha)" in got["detail"]
        su.execute("SELECT parecer.revoke_client(%s)", (f"#{oid}",))
        su.execute("SELECT parecer.set_setting('isolation', 'off')")
        got = check(su)
        assert got["status"] == "warn"
        assert got["detail"] == (
            "isolation is off while 2 clients have grants: every runner and reader serves every client"
        )
        su.execute("SELECT parecer.revoke_client(%s, 'beta')", (world.roles["reader_b"],))
        got = check(su)
        assert (got["status"], got["fix"]) == ("ok", None)
        assert got["detail"].startswith("isolation off; ")


def test_the_runner_drops_a_result_when_revoked_mid_call(world: World) -> None:
    """The real runner, revoked while the model answers: its report is refused
    (PR011, counted stale and dropped), the item is back in the queue, and with
    nothing left it may claim, the --once runner stops."""
    import threading
    import time

    from parecer.devkit.standin import Standin, StandinConfig
    from parecer.runner import run

    with db.connect(world.url) as su:
        su.execute("SELECT * FROM parecer.bind_rate_limit('key-9f86d081:gpt-5-mini', '{alpha}')")
        out: dict[str, Any] = {}
        with Standin(StandinConfig(latency_ms=(3000, 3000), seed=5)) as s:
            t = threading.Thread(
                target=lambda: out.update(
                    stats=run(
                        runner_config(
                            make_conninfo(world.url, user=world.roles["runner_a"]),
                            s,
                            "test",
                            concurrency=1,
                            once=True,
                            request_timeout=10.0,
                            poll_seconds=30.0,
                        )
                    )
                )
            )
            t.start()
            item = None
            for _ in range(100):  # until the runner holds alpha's item and asked its prompt
                item = su.execute(
                    "SELECT analysis_id FROM parecer.analyses WHERE leased_to = %s"
                    " AND status = 'processing' AND given_prompt_hash IS NOT NULL",
                    (world.roles["runner_a"],),
                ).fetchone()
                if item:
                    break
                time.sleep(0.05)
            assert item is not None
            su.execute("SELECT parecer.revoke_client(%s, 'alpha')", (world.roles["runner_a"],))
            t.join(60)
        assert not t.is_alive()
        assert out["stats"].outcomes == {"stale": 1}
        row = one(
            su,
            "SELECT status, report IS NULL AS no_report FROM parecer.analyses WHERE analysis_id = %s",
            (item["analysis_id"],),
        )
        assert row == {"status": "pending", "no_report": True}
