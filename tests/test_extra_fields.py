"""Custom report fields per script version (extra_fields): seed 003's remarketing analysis."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from parecer import errors

from .factories import make_script, make_session, report_for
from .helpers import one, table_checksum

REMARKETING: list[dict[str, Any]] = [
    {
        "name": "remarketing_type",
        "type": "enum",
        "values": ["reativacao", "upsell", "recuperacao", "nenhum"],
        "description": "O tipo de remarketing indicado para este contato.",
    },
    {
        "name": "suggested_message",
        "type": "string",
        "description": "A mensagem sugerida para o contato.",
    },
    {
        "name": "priority",
        "type": "enum",
        "values": ["alta", "media", "baixa"],
        "description": "Prioridade.",
    },
    {"name": "keywords", "type": "string_list", "max_items": 5, "description": "Palavras-chave."},
    {
        "name": "confidence",
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "description": "De 0 a 1.",
    },
    {
        "name": "internet_problem",
        "type": "boolean",
        "evidence": True,
        "description": "O cliente relatou problema de internet.",
    },
]


def _version(conn: psycopg.Connection[Any], fields: Any = REMARKETING) -> dict[str, Any]:
    make_script(conn)  # v1 without extra fields
    return one(
        conn,
        "SELECT * FROM parecer.create_script_version('acme', 'qa', 'Analise para remarketing.',"
        " topics => '{cancelamento,internet}', activate => true, extra_fields => %s)",
        (json.dumps(fields),),
    )


def _claimed(conn: psycopg.Connection[Any], script_id: int) -> tuple[Any, dict[str, Any]]:
    s = make_session(conn)
    conn.execute("SELECT * FROM parecer.enqueue(%s, %s)", ([s.session_id], script_id))
    return s, one(conn, "SELECT * FROM parecer.claim('w')")


def _extra(s: Any, **over: Any) -> dict[str, Any]:
    e = {
        "remarketing_type": "recuperacao",
        "suggested_message": "Olá! Sua internet está estável agora?",
        "priority": "alta",
        "keywords": ["internet", "queda"],
        "confidence": 0.8,
        "internet_problem": {
            "evidence": [{"message_id": s.message_ids[0], "excerpt": "internet caiu"}],
            "value": True,
        },
    }
    e.update(over)
    return e


def _done(conn: psycopg.Connection[Any], item: dict[str, Any], report: dict[str, Any]) -> None:
    conn.execute(
        "SELECT * FROM parecer.mark_done(%s, %s, %s, 'm', %s)",
        (item["analysis_id"], item["lease_token"], json.dumps(report), "a" * 64),
    )


def test_extra_fields_are_merged_into_the_strict_schema_in_order(
    conn: psycopg.Connection[Any],
) -> None:
    v2 = _version(conn)
    assert v2["extra_fields"] == REMARKETING
    schemas = {
        r["version"]: r["report_schema"]
        for r in conn.execute(
            "SELECT version, report_schema::text AS report_schema FROM parecer.scripts"
        )
    }
    v1, s2 = json.loads(schemas[1]), json.loads(schemas[2])
    # the standard part is unchanged, "extra" comes last
    assert list(s2["properties"]) == [*v1["properties"], "extra"]
    assert s2["required"] == [*v1["required"], "extra"]
    assert {k: s2["properties"][k] for k in v1["properties"]} == v1["properties"]
    extra = s2["properties"]["extra"]
    assert extra["additionalProperties"] is False
    assert extra["required"] == [f["name"] for f in REMARKETING]
    assert list(extra["properties"]) == extra["required"]
    assert extra["properties"]["confidence"] == {
        "description": "De 0 a 1.",
        "type": "number",
        "minimum": 0,
        "maximum": 1,
    }
    assert extra["properties"]["keywords"]["maxItems"] == 5
    ev = extra["properties"]["internet_problem"]
    assert ev["required"] == ["evidence", "value"]
    assert ev["properties"]["evidence"] == v1["properties"]["outcome"]["properties"]["evidence"]
    # prompt_for hands the merged schema to the runner
    _, item = _claimed(conn, v2["script_id"])
    p = one(conn, "SELECT report_schema FROM parecer.prompt_for(%s)", (item["analysis_id"],))
    assert p["report_schema"]["properties"]["extra"] == extra


def test_mark_done_checks_and_grounds_extra_fields(conn: psycopg.Connection[Any]) -> None:
    v2 = _version(conn)
    s, item = _claimed(conn, v2["script_id"])
    bad: list[tuple[dict[str, Any], str]] = [
        (_extra(s, confidence=1.5), errors.INVALID_REPORT),
        (_extra(s, priority="urgente"), errors.INVALID_REPORT),
        (_extra(s, keywords=["a", "b", "c", "d", "e", "f"]), errors.INVALID_REPORT),
        (_extra(s, keywords=[1]), errors.INVALID_REPORT),
        (_extra(s, internet_problem=True), errors.INVALID_REPORT),
        ({k: v for k, v in _extra(s).items() if k != "priority"}, errors.INVALID_REPORT),
        ({**_extra(s), "other": 1}, errors.INVALID_REPORT),
        (
            _extra(
                s,
                internet_problem={
                    "evidence": [{"message_id": s.message_ids[0], "excerpt": "nunca dito"}],
                    "value": True,
                },
            ),
            errors.UNGROUNDED_REPORT,
        ),
    ]
    before = table_checksum(conn)
    for extra, code in [*bad, (None, errors.INVALID_REPORT)]:
        report = report_for(s)
        if extra is not None:
            report["extra"] = extra
        with pytest.raises(psycopg.Error) as e:
            _done(conn, item, report)
        assert errors.sqlstate(e.value) == code, extra
        assert e.value.diag.message_hint
    assert table_checksum(conn) == before
    _done(conn, item, {**report_for(s), "extra": _extra(s)})
    r = one(conn, "SELECT report, grounding FROM parecer.reports")
    assert r["report"]["extra"]["remarketing_type"] == "recuperacao"
    assert "extra.internet_problem.evidence[0]" in [g["path"] for g in r["grounding"]]


def test_mark_done_many_refuses_only_the_item_with_bad_custom_fields(
    conn: psycopg.Connection[Any],
) -> None:
    """The custom fields are part of the report check (PR007, before grounding): in a
    batch, the item that breaks them is refused with mark_done's error and the others
    are stored."""
    v2 = _version(conn)
    (s1, i1), (s2, i2) = _claimed(conn, v2["script_id"]), _claimed(conn, v2["script_id"])
    ungrounded = {
        "evidence": [{"message_id": s2.message_ids[0], "excerpt": "nunca dito"}],
        "value": True,
    }
    items = [
        {**i, "report": {**report_for(s), "extra": extra}, "model": "m", "prompt_hash": "a" * 64}
        for i, s, extra in (
            (i1, s1, _extra(s1)),
            (i2, s2, _extra(s2, confidence=1.5, internet_problem=ungrounded)),
        )
    ]
    rows = conn.execute(
        "SELECT analysis_id, outcome, sqlstate, message FROM parecer.mark_done_many(%s)",
        (json.dumps(items, default=str),),
    ).fetchall()
    assert [(r["outcome"], r["sqlstate"]) for r in rows] == [
        ("done", None),
        ("invalid", errors.INVALID_REPORT),
    ]
    assert rows[1]["message"] == "invalid report: extra.confidence must be a number from 0 to 1"
    assert one(conn, "SELECT count(*) AS n FROM parecer.reports")["n"] == 1


def test_a_version_without_extra_fields_refuses_an_extra_object(
    conn: psycopg.Connection[Any],
) -> None:
    v1 = make_script(conn)
    s, item = _claimed(conn, v1["script_id"])
    with pytest.raises(psycopg.Error) as e:
        _done(conn, item, {**report_for(s), "extra": {}})
    assert errors.sqlstate(e.value) == errors.INVALID_REPORT
    _done(conn, item, report_for(s))


@pytest.mark.parametrize(
    "fields",
    [
        {"name": "x"},
        [{"name": "x", "type": "date", "description": "d"}],
        [{"name": "x", "type": "string"}],
        [{"name": "x y", "type": "string", "description": "d"}],
        [{"name": "x", "type": "enum", "description": "d"}],
        [{"name": "x", "type": "string", "values": ["a"], "description": "d"}],
        [{"name": "x", "type": "number", "minimum": 2, "maximum": 1, "description": "d"}],
        [{"name": "x", "type": "string", "description": "d"}] * 2,
        [{"name": "x", "type": "string", "description": "d", "evidence": "yes"}],
    ],
)
def test_bad_declarations_are_refused(conn: psycopg.Connection[Any], fields: Any) -> None:
    make_script(conn)
    with pytest.raises(psycopg.Error) as e:
        conn.execute(
            "SELECT * FROM parecer.create_script_version('acme', 'qa', 't', extra_fields => %s)",
            (json.dumps(fields),),
        )
    assert errors.sqlstate(e.value) == errors.INVALID_SCRIPT
    assert e.value.diag.message_hint and "extra_fields" in e.value.diag.message_hint


def test_cli_creates_a_version_with_extra_fields_and_exports_them(
    db_url: str, tmp_path: Any
) -> None:
    from click.testing import CliRunner

    from parecer import db
    from parecer.cli import main

    fields = tmp_path / "remarketing.json"
    fields.write_text(json.dumps(REMARKETING), encoding="utf-8")
    text = tmp_path / "script.txt"
    text.write_text("Analise para remarketing.", encoding="utf-8")
    env = {"PARECER_DATABASE_URL": db_url}
    with db.connect(db_url) as c:
        make_script(c)
    r = CliRunner().invoke(
        main,
        [
            "scripts",
            "create",
            "acme",
            "qa",
            "--file",
            str(text),
            "--topic",
            "cancelamento",
            "--topic",
            "internet",
            "--activate",
            "--extra-fields",
            str(fields),
            "--json",
        ],
        env=env,
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["extra_fields"] == REMARKETING
    with db.connect(db_url) as c:
        s, item = _claimed(c, json.loads(r.output)["script_id"])
        _done(c, item, {**report_for(s), "extra": _extra(s)})
    r = CliRunner().invoke(main, ["reports", "export", "acme", "--format", "csv"], env=env)
    assert r.exit_code == 0, r.output
    assert '""remarketing_type"": ""recuperacao""' in r.output
    bad = tmp_path / "bad.json"
    bad.write_text("[{", encoding="utf-8")
    r = CliRunner().invoke(
        main,
        ["scripts", "create", "acme", "qa", "--file", str(text), "--extra-fields", str(bad)],
        env=env,
    )
    assert r.exit_code != 0 and "--extra-fields" in r.output


def test_insights_sum_up_extra_fields(conn: psycopg.Connection[Any]) -> None:
    v2 = _version(conn)
    assert "extra" not in one(conn, "SELECT parecer.insights('acme') AS d")["d"]
    for conf, prio, kw in ((0.5, "alta", ["internet"]), (0.9, "alta", ["internet", "fatura"])):
        s, item = _claimed(conn, v2["script_id"])
        _done(
            conn,
            item,
            {**report_for(s), "extra": _extra(s, confidence=conf, priority=prio, keywords=kw)},
        )
    extra = one(conn, "SELECT parecer.insights('acme') AS d")["d"]["extra"]
    assert extra["priority"] == {"type": "enum", "n": 2, "counts": {"alta": 2}}
    assert extra["confidence"] == {"type": "number", "n": 2, "avg": 0.7, "min": 0.5, "max": 0.9}
    assert extra["keywords"]["top"] == [
        {"value": "internet", "count": 2},
        {"value": "fatura", "count": 1},
    ]
    assert extra["internet_problem"] == {"type": "boolean", "n": 2, "counts": {"true": 2}}
    assert extra["suggested_message"] == {"type": "string", "n": 2}
