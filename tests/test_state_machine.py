"""Stateful test of the work queue: random interleavings against a model.

Why hypothesis' RuleBasedStateMachine rather than a seeded random walk: when an
invariant breaks, hypothesis shrinks the run to a short sequence of steps
(e.g. "enqueue, claim, expire lease, force-enqueue, claim") that reproduces it,
which is what one needs to find a root cause; a seeded walk only says "step 412
of seed 7 failed". Examples are derandomized (the same runs every time, so CI
is reproducible); ``PARECER_FUZZ_RANDOM=1`` explores fresh ones.

Rules (each on one of three connections): enqueue (with and without
force_reprocess), claim, claim inside an open transaction on one connection
while another claims (SKIP LOCKED; then commit or roll back), extend_lease,
mark_done, mark_failed (retryable or not), release (with or without delay),
retry_failed, and test-only manipulation of time: a lease expiring
(lease_expires_at in the past) and backoff running out (next_retry_at in the
past). Lease-holding calls are made with the current token, a stale one or a
random one.

After every step the invariants below are checked against parecer.analyses and
parecer._attempts, and every item's status, retry_count and claims against the
model; each call's result (counts, retry_count, which items a claim may return)
is checked against the model as it happens.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from parecer import db, errors

from .factories import Session, make_script, make_session, report_for

Conn = psycopg.Connection[dict[str, Any]]
TAGS = ["v1", "v2"]
HOW = st.sampled_from(
    [0, 0, 0, 0, 1, 2, 3]
)  # which token: current, most recently invalidated, random, another item's
N_SESSIONS = 5


@dataclass
class Item:
    """The model of one analysis."""

    analysis_id: uuid.UUID
    session_id: str
    status: str = "pending"
    retry_count: int = 0
    claims: int = 0
    reset_mark: int = 0  # claims at the last reset (force_reprocess, retry_failed)
    token: uuid.UUID | None = None
    expired: bool = False  # lease forced into the past, not yet collected by a claim
    due: bool = True  # next_retry_at NULL or in the past
    terminal: bool = False  # status failed (terminal)
    delayed: bool = False  # pending with next_retry_at set (a release with a delay)

    def claimable(self, max_attempts: int) -> bool:
        return self.status == "pending" and self.due


def expect_error(code: str, fn: Any) -> None:
    try:
        fn()
    except psycopg.Error as exc:
        assert errors.sqlstate(exc) == code, exc
        return
    raise AssertionError(f"expected {code}")


def test_queue_state_machine(db_url: str) -> None:
    conns = [db.connect(db_url) for _ in range(3)]
    admin = conns[0]
    script = make_script(admin)
    sessions: list[Session] = [make_session(admin) for _ in range(N_SESSIONS)]
    by_id = {s.session_id: s for s in sessions}
    stats: dict[str, int] = {}

    class Queue(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            admin.execute("TRUNCATE parecer.analyses, parecer.runs CASCADE")
            self.items: dict[tuple[str, str], Item] = {}
            self.stale: list[uuid.UUID] = []
            self.max_attempts = 4

        # ------------------------------------------------------------ helpers
        def count(self, what: str) -> None:
            stats[what] = stats.get(what, 0) + 1

        def ordered(self) -> list[Item]:
            return [self.items[k] for k in sorted(self.items)]

        def pick_item(self, i: int) -> Item:
            """Mostly an item with a live lease, sometimes one whose lease expired, sometimes any item."""
            items = self.ordered()
            live = [it for it in items if it.status == "processing" and not it.expired]
            dead = [it for it in items if it.status == "processing" and it.expired]
            pool = live if i % 5 < 3 else dead if i % 5 == 3 else items
            pool = pool or items
            return pool[(i // 5) % len(pool)]

        def token_for(self, item: Item, how: int) -> uuid.UUID | None:
            if how == 0 or (how == 1 and not self.stale):
                return item.token
            if how == 1:
                return self.stale[-1]  # the most recently invalidated token
            if how == 2:
                return uuid.uuid4()
            others = [x.token for x in self.ordered() if x.token and x is not item]
            return others[0] if others else None

        def leased(self, item: Item, token: uuid.UUID | None) -> bool:
            return (
                item.status == "processing"
                and token is not None
                and token == item.token
                and not item.expired
            )

        def drop_lease(self, item: Item) -> None:
            if item.token:
                self.stale.append(item.token)
            item.token, item.expired = None, False

        def collect_expired(self) -> None:
            """What _expire_leases does at the start of a claim: an expired lease is a failed attempt."""
            for it in self.ordered():
                if it.status == "processing" and it.expired:
                    it.retry_count += 1
                    it.terminal = it.retry_count >= self.max_attempts
                    it.status = "failed" if it.terminal else "pending"
                    it.due, it.delayed = False, False
                    self.drop_lease(it)

        def apply_claim(self, rows: list[dict[str, Any]], claimable: list[Item], n: int) -> None:
            ids = {it.analysis_id: it for it in claimable}
            got = [r["analysis_id"] for r in rows]
            assert len(set(got)) == len(got), "an item handed out twice in one claim"
            assert set(got) <= set(ids), (
                f"claimed an item that was not claimable: {set(got) - set(ids)}"
            )
            assert len(got) == min(n, len(claimable)), (
                f"claimed {len(got)} of {len(claimable)} claimable (max {n})"
            )
            for r in rows:
                it = ids[r["analysis_id"]]
                it.status, it.claims, it.token, it.due, it.delayed = (
                    "processing",
                    it.claims + 1,
                    r["lease_token"],
                    True,
                    False,
                )
                if it.retry_count:
                    self.count("claim of a retry")
                assert r["attempt"] == it.claims and r["retry_count"] == it.retry_count, (r, it)

        # ------------------------------------------------------------ rules
        @initialize(max_attempts=st.sampled_from([4, 4, 2, 1]))
        def settings_(self, max_attempts: int) -> None:
            admin.execute(
                "SELECT * FROM parecer.set_setting('max_attempts', %s)", (str(max_attempts),)
            )
            self.max_attempts = max_attempts

        @rule(
            c=st.integers(0, 2),
            picks=st.lists(st.integers(0, N_SESSIONS - 1), min_size=1, max_size=4),
            tag=st.sampled_from(TAGS),
            force=st.booleans(),
        )
        def enqueue(self, c: int, picks: list[int], tag: str, force: bool) -> None:
            sids = [sessions[i].session_id for i in picks]
            row = (
                conns[c]
                .execute(
                    "SELECT * FROM parecer.enqueue(%s, %s, %s, %s)",
                    (sids, script["script_id"], tag, force),
                )
                .fetchone()
            )
            new = [s for s in dict.fromkeys(sids) if (s, tag) not in self.items]
            old = [s for s in dict.fromkeys(sids) if (s, tag) in self.items]
            assert row == {
                "enqueued": len(new),
                "reset": len(old) if force else 0,
                "skipped": 0 if force else len(old),
            }, (row, new, old)
            for s in new:
                aid = (
                    conns[c]
                    .execute(
                        "SELECT analysis_id FROM parecer.analyses WHERE session_id = %s AND "
                        "analysis_version_tag = %s",
                        (s, tag),
                    )
                    .fetchone()
                )
                assert aid is not None
                self.items[(s, tag)] = Item(aid["analysis_id"], s)
            if force:
                for s in old:
                    it = self.items[(s, tag)]
                    self.drop_lease(it)
                    it.status, it.retry_count, it.reset_mark = "pending", 0, it.claims
                    it.due, it.terminal, it.delayed = True, False, False
                self.count("force reset") if old else None
            self.count("enqueue")

        @precondition(lambda self: self.items)
        @rule(c=st.integers(0, 2), n=st.integers(1, 4))
        def claim(self, c: int, n: int) -> None:
            self.collect_expired()
            claimable = [it for it in self.ordered() if it.claimable(self.max_attempts)]
            rows = conns[c].execute("SELECT * FROM parecer.claim(%s, %s)", (f"w{c}", n)).fetchall()
            self.apply_claim(rows, claimable, n)
            self.count("claim" if rows else "claim (nothing)")

        @precondition(lambda self: self.items)
        @rule(
            b=st.integers(0, 2),
            a=st.integers(0, 2),
            nb=st.integers(1, 3),
            na=st.integers(1, 3),
            commit=st.booleans(),
        )
        def claim_while_another_claim_is_open(
            self, b: int, a: int, nb: int, na: int, commit: bool
        ) -> None:
            """B claims inside an open transaction; A claims meanwhile (SKIP LOCKED); then B commits or rolls back."""
            if a == b:
                a = (b + 1) % 3
            before_expiry = [it for it in self.ordered() if it.claimable(self.max_attempts)]
            expired = [it for it in self.ordered() if it.status == "processing" and it.expired]

            class Rollback(Exception):
                pass

            try:
                with conns[b].transaction():
                    rows_b = (
                        conns[b]
                        .execute("SELECT * FROM parecer.claim('tx-b', %s)", (nb,))
                        .fetchall()
                    )
                    rows_a = (
                        conns[a].execute("SELECT * FROM parecer.claim('a', %s)", (na,)).fetchall()
                    )
                    if not commit:
                        raise Rollback
            except Rollback:
                pass
            got_b = {r["analysis_id"] for r in rows_b}
            # B expired the dead leases (their items get a backoff: not claimable now) and took nb items.
            assert got_b <= {it.analysis_id for it in before_expiry}
            assert len(got_b) == min(nb, len(before_expiry))
            # A skipped what B locked: the expired items (still processing for A) and B's items.
            left = [it for it in before_expiry if it.analysis_id not in got_b]
            if commit:
                self.collect_expired()
                self.apply_claim(rows_b, before_expiry, nb)
            else:
                assert all(it.expired for it in expired)
            self.apply_claim(rows_a, left, na)
            self.count(f"claim in open transaction, {'commit' if commit else 'rollback'}")

        @precondition(lambda self: self.items)
        @rule(
            c=st.integers(0, 2),
            i=st.integers(0, 50),
            how=HOW,
            seconds=st.sampled_from([None, 5, 600]),
        )
        def extend_lease(self, c: int, i: int, how: int, seconds: int | None) -> None:
            it = self.pick_item(i)
            token = self.token_for(it, how)
            sql = "SELECT parecer.extend_lease(%s, %s, %s) AS exp"
            if self.leased(it, token):
                row = conns[c].execute(sql, (it.analysis_id, token, seconds)).fetchone()
                assert row is not None and row["exp"] is not None
                self.count("extend_lease")
            else:
                expect_error(
                    "PR006", lambda: conns[c].execute(sql, (it.analysis_id, token, seconds))
                )
                self.count("extend_lease refused")

        @precondition(lambda self: self.items)
        @rule(c=st.integers(0, 2), i=st.integers(0, 50), how=HOW, bad_report=st.booleans())
        def mark_done(self, c: int, i: int, how: int, bad_report: bool) -> None:
            it = self.pick_item(i)
            token = self.token_for(it, how)
            report = report_for(by_id[it.session_id])
            if bad_report:
                report["outcome"]["evidence"] = [
                    {"message_id": "not-in-this-session", "excerpt": "internet caiu"}
                ]
            args = (it.analysis_id, token, json.dumps(report), "m", "0" * 64)
            sql = "SELECT * FROM parecer.mark_done(%s, %s, %s::jsonb, %s, %s)"
            if not self.leased(it, token):
                expect_error("PR006", lambda: conns[c].execute(sql, args))
                self.count("mark_done refused (lease)")
            elif bad_report:
                expect_error("PR008", lambda: conns[c].execute(sql, args))
                self.count("mark_done refused (report)")
            else:
                row = conns[c].execute(sql, args).fetchone()
                assert row == {
                    "status": "done",
                    "retry_count": it.retry_count,
                    "next_retry_at": None,
                }
                it.status, it.terminal, it.due = "done", False, True
                self.drop_lease(it)
                self.count("mark_done")

        @precondition(lambda self: self.items)
        @rule(
            c=st.integers(0, 2),
            i=st.integers(0, 50),
            how=HOW,
            retryable=st.sampled_from([True, True, True, False]),
        )
        def mark_failed(self, c: int, i: int, how: int, retryable: bool) -> None:
            it = self.pick_item(i)
            token = self.token_for(it, how)
            sql = "SELECT * FROM parecer.mark_failed(%s, %s, 'boom', %s)"
            if not self.leased(it, token):
                expect_error(
                    "PR006", lambda: conns[c].execute(sql, (it.analysis_id, token, retryable))
                )
                self.count("mark_failed refused")
                return
            row = conns[c].execute(sql, (it.analysis_id, token, retryable)).fetchone()
            assert row is not None
            it.retry_count += 1
            it.terminal = not retryable or it.retry_count >= self.max_attempts
            it.status = "failed" if it.terminal else "pending"
            it.due, it.delayed = False, False
            self.drop_lease(it)
            assert row["status"] == it.status and row["retry_count"] == it.retry_count, (row, it)
            assert (row["next_retry_at"] is None) == it.terminal, (row, it)
            self.count("mark_failed terminal" if it.terminal else "mark_failed retry")

        @precondition(lambda self: self.items)
        @rule(
            c=st.integers(0, 2),
            i=st.integers(0, 50),
            how=HOW,
            delay=st.sampled_from([0, 0, 30]),
            lower_first=st.booleans(),
        )
        def release(self, c: int, i: int, how: int, delay: int, lower_first: bool) -> None:
            it = self.pick_item(i)
            token = self.token_for(it, how)
            sql = "SELECT * FROM parecer.release(%s, %s, %s)"
            if lower_first and it.status == "processing" and it.retry_count > 0:
                # Meanwhile an operator lowers max_attempts to what this item has already used.
                self.change_max_attempts(it.retry_count, False)
            if not self.leased(it, token):
                expect_error("PR006", lambda: conns[c].execute(sql, (it.analysis_id, token, delay)))
                self.count("release refused")
                return
            row = conns[c].execute(sql, (it.analysis_id, token, delay)).fetchone()
            assert row is not None
            # No retry left (max_attempts lowered while it was in flight): terminal, not stranded.
            it.terminal = it.retry_count >= self.max_attempts
            it.status = "failed" if it.terminal else "pending"
            it.due, it.delayed = delay == 0, it.status == "pending" and delay > 0
            self.drop_lease(it)
            assert row["status"] == it.status and row["retry_count"] == it.retry_count, (row, it)
            assert (row["next_retry_at"] is None) == (delay == 0 or it.terminal), row
            self.count("release, no retry left" if it.terminal else "release")

        @precondition(lambda self: any(it.retry_count > 0 for it in self.items.values()))
        @rule(max_attempts=st.sampled_from([1, 2, 3, 4]), to_inflight=st.booleans())
        def change_max_attempts(self, max_attempts: int, to_inflight: bool) -> None:
            """An operator changes max_attempts while items are in the queue (sometimes down to exactly
            the retry_count of an item in flight, which then has no retry left)."""
            inflight = [
                it.retry_count
                for it in self.ordered()
                if it.status == "processing" and it.retry_count > 0
            ]
            if to_inflight and inflight:
                max_attempts = inflight[0]
            admin.execute(
                "SELECT * FROM parecer.set_setting('max_attempts', %s)", (str(max_attempts),)
            )
            self.max_attempts = max_attempts
            # Lowered: items waiting for a retry they no longer have become terminal at once.
            for it in self.items.values():
                if it.status == "pending" and it.retry_count >= max_attempts:
                    it.status, it.terminal, it.due, it.delayed = "failed", True, True, False
                    self.count("retry cancelled by lower max_attempts")
            self.count("max_attempts changed")

        @precondition(lambda self: self.items)
        @rule(c=st.integers(0, 2))
        def retry_failed(self, c: int) -> None:
            terminal = [it for it in self.ordered() if it.status == "failed" and it.terminal]
            row = (
                conns[c]
                .execute("SELECT parecer.retry_failed(client_slug => 'acme') AS n")
                .fetchone()
            )
            assert row == {"n": len(terminal)}
            for it in terminal:
                it.status, it.retry_count, it.reset_mark, it.terminal, it.due = (
                    "pending",
                    0,
                    it.claims,
                    False,
                    True,
                )
            self.count("retry_failed")

        @precondition(lambda self: any(it.status == "processing" for it in self.items.values()))
        @rule(i=st.integers(0, 50))
        def lease_expires(self, i: int) -> None:
            inflight = [it for it in self.ordered() if it.status == "processing"]
            it = inflight[i % len(inflight)]
            admin.execute(
                "UPDATE parecer.analyses SET lease_expires_at = now() - interval '1 second'"
                " WHERE analysis_id = %s",
                (it.analysis_id,),
            )
            it.expired = True
            self.count("lease expires")

        @precondition(lambda self: self.items)
        @rule()
        def time_passes(self) -> None:
            """Every backoff and release delay runs out."""
            admin.execute(
                "UPDATE parecer.analyses SET next_retry_at = now() - interval '1 second'"
                " WHERE next_retry_at IS NOT NULL"
            )
            for it in self.items.values():
                it.due = True
            self.count("time passes")

        # ------------------------------------------------------------ invariants
        @invariant()
        def queue_invariants(self) -> None:
            rows = {
                r["analysis_id"]: r
                for r in admin.execute(
                    "SELECT analysis_id, session_id, script_id, analysis_version_tag, status, lease_token,"
                    " lease_expires_at, next_retry_at, retry_count, claims, report FROM parecer.analyses"
                ).fetchall()
            }
            atts: dict[uuid.UUID, list[dict[str, Any]]] = {}
            for att in admin.execute(
                "SELECT analysis_id, attempt, outcome, lease_token FROM parecer._finished_attempts"
                " ORDER BY analysis_id, attempt"
            ).fetchall():
                atts.setdefault(att["analysis_id"], []).append(att)
            model = {it.analysis_id: it for it in self.items.values()}
            assert set(rows) == set(model), "items in the database differ from the model"
            keys = [
                (r["session_id"], r["script_id"], r["analysis_version_tag"]) for r in rows.values()
            ]
            assert len(keys) == len(set(keys)), "an item appears twice"
            assert set(atts) <= set(rows)
            for aid, r in rows.items():
                it, a = model[aid], atts.get(aid, [])
                inflight = [x for x in a if x["outcome"] is None]
                assert r["status"] in ("pending", "processing", "done", "failed")
                # A lease exists exactly while an item is processing.
                assert (
                    (r["lease_token"] is not None)
                    == (r["lease_expires_at"] is not None)
                    == (r["status"] == "processing")
                )
                # next_retry_at only on a pending item (a delayed release or a retry); failed is terminal.
                if r["next_retry_at"] is not None:
                    assert r["status"] == "pending", r
                # No item waits for an attempt it can never get.
                assert r["status"] != "pending" or r["retry_count"] < self.max_attempts, (
                    "stranded",
                    r,
                )
                assert (r["status"] == "failed") == (it.status == "failed") == it.terminal
                # retry_count = attempts failed or expired since the last reset.
                counted = [
                    x
                    for x in a
                    if x["attempt"] > it.reset_mark and x["outcome"] in ("failed", "expired")
                ]
                assert r["retry_count"] == len(counted), (r, a, it)
                # Every claim that ended left exactly one finished attempt, numbered 1..claims; the
                # claim in flight (status processing) has none yet: it is the item's own row, as
                # is the attempt that finished a done item.
                assert inflight == [], (r, a)
                ended = r["claims"] - (1 if r["status"] == "processing" else 0)
                assert [x["attempt"] for x in a] == list(range(1, ended + 1)), (r, a)
                assert r["status"] != "done" or r["report"] is not None
                # The model agrees.
                assert (r["status"], r["retry_count"], r["claims"]) == (
                    it.status,
                    it.retry_count,
                    it.claims,
                ), (r, it)
                if it.token is not None:
                    assert r["lease_token"] == it.token
            # next_due is in the past exactly when something is claimable now (or a dead lease awaits collection).
            due = admin.execute("SELECT parecer.next_due() <= now() AS due").fetchone()
            assert due is not None
            now = any(
                it.claimable(self.max_attempts) or (it.status == "processing" and it.expired)
                for it in self.items.values()
            )
            assert bool(due["due"]) == now, (due, self.ordered())

    kinds = (
        "claim",
        "mark_done",
        "mark_failed retry",
        "mark_failed terminal",
        "release",
        "lease expires",
        "force reset",
        "claim in open transaction, commit",
        "claim in open transaction, rollback",
    )
    try:
        # The derandomized examples depend on the byte code of this class: an unrelated
        # edit can leave a kind of step out. Then up to two more batches of fresh examples
        # run (every invariant checked in each) until every kind has run at least once.
        for attempt in range(3):
            run_state_machine_as_test(
                Queue,
                settings=settings(
                    max_examples=int(os.environ.get("PARECER_STATEFUL_EXAMPLES", "60")),
                    stateful_step_count=30,
                    deadline=None,
                    derandomize=attempt == 0 and not os.environ.get("PARECER_FUZZ_RANDOM"),
                    database=None,
                    suppress_health_check=[
                        HealthCheck.function_scoped_fixture,
                        HealthCheck.too_slow,
                        HealthCheck.filter_too_much,
                    ],
                ),
            )
            if all(stats.get(what, 0) > 0 for what in kinds):
                break
    finally:
        for c in conns:
            c.close()
    print(f"\nstate machine steps: {dict(sorted(stats.items()))}")
    # The interleavings reached every kind of step.
    for what in kinds:
        assert stats.get(what, 0) > 0, f"never ran: {what}"


def test_regression_release_with_no_retry_left_is_terminal(conn: Conn) -> None:
    """Found by the state machine: enqueue, claim, mark_failed (retryable), backoff runs out, claim,
    max_attempts lowered to the item's retry_count, release. release scheduled a retry that claim
    (retry_count < max_attempts) would never take: the item waited as "retrying" forever, and
    retry_failed (terminal failures only) could not re-queue it either. It is now terminal."""
    script = make_script(conn)
    s = make_session(conn)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script["script_id"]))
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None
    conn.execute(
        "SELECT * FROM parecer.mark_failed(%s, %s, 'boom')",
        (item["analysis_id"], item["lease_token"]),
    )
    conn.execute("UPDATE parecer.analyses SET next_retry_at = now() - interval '1 second'")
    item = conn.execute("SELECT * FROM parecer.claim('w')").fetchone()
    assert item is not None and item["retry_count"] == 1
    conn.execute("SELECT * FROM parecer.set_setting('max_attempts', '1')")
    out = conn.execute(
        "SELECT * FROM parecer.release(%s, %s)", (item["analysis_id"], item["lease_token"])
    ).fetchone()
    assert out is not None and (out["status"], out["retry_count"], out["next_retry_at"]) == (
        "failed",
        1,
        None,
    )
    assert conn.execute("SELECT failed, retrying FROM parecer.queue_status").fetchone() == {
        "failed": 1,
        "retrying": 0,
    }
    assert conn.execute("SELECT parecer.retry_failed(client_slug => 'acme') AS n").fetchone() == {
        "n": 1
    }
