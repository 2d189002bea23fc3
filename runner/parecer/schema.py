"""The installed schema as text: every function, view, table, index, trigger,
grant and comment of the ``parecer`` schema, in a stable order.

``tests/snapshots/schema.sql`` is this text for a fresh install (``make schema``
writes it); ``tests/test_schema.py`` fails when it is stale, and checks that
applying the API files again changes nothing. The snapshot lives outside ``db/``
so that ``db/`` holds exactly one definition of each function: the snapshot is a
generated copy to diff against, not a source.

    python -m parecer.schema [DATABASE_URL]   # print it (no URL: a fresh embedded install)
"""

from __future__ import annotations

import sys
from typing import Any

import psycopg

from . import db

_QUERIES: list[tuple[str, str]] = [
    (
        "table",
        """
        SELECT c.relname AS name,
               string_agg(pg_catalog.format('    %I %s%s%s', a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
                                    CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                                    COALESCE(' DEFAULT ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid), '')),
                          E',\\n' ORDER BY a.attnum) AS def
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'parecer'::regnamespace AND c.relkind IN ('r', 'c')
        GROUP BY c.relname""",
    ),
    (
        "constraint",
        """
        SELECT conrelid::regclass::text || '.' || conname AS name, pg_catalog.pg_get_constraintdef(oid) AS def
        FROM pg_catalog.pg_constraint WHERE connamespace = 'parecer'::regnamespace AND conrelid <> 0""",
    ),
    (
        "index",
        """
        SELECT indexrelid::regclass::text AS name, pg_catalog.pg_get_indexdef(indexrelid) AS def
        FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = 'parecer'::regnamespace""",
    ),
    (
        "view",
        """
        SELECT c.relname AS name, pg_catalog.pg_get_viewdef(c.oid, true) AS def
        FROM pg_catalog.pg_class c WHERE c.relnamespace = 'parecer'::regnamespace AND c.relkind = 'v'""",
    ),
    (
        # A function as its signature, result and attributes, and its body's md5: the
        # body itself is in db/api/ (one definition); the digest still shows any drift.
        "function",
        """
        SELECT p.oid::regprocedure::text AS name,
               concat_ws(E'\\n',
                   'ARGUMENTS ' || pg_catalog.pg_get_function_arguments(p.oid),
                   'RETURNS ' || pg_catalog.pg_get_function_result(p.oid),
                   'LANGUAGE ' || l.lanname || ' '
                       || CASE p.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END
                       || CASE WHEN p.proisstrict THEN ' STRICT' ELSE '' END
                       || CASE WHEN p.prosecdef THEN ' SECURITY DEFINER' ELSE '' END,
                   (SELECT string_agg('SET ' || c, E'\\n' ORDER BY c) FROM unnest(p.proconfig) c),
                   'body md5 ' || md5(p.prosrc)) AS def
        FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
        WHERE p.pronamespace = 'parecer'::regnamespace""",
    ),
    (
        "trigger",
        """
        SELECT t.tgname AS name, pg_catalog.pg_get_triggerdef(t.oid) AS def
        FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'parecer'::regnamespace AND NOT t.tgisinternal""",
    ),
    (
        "acl",
        """
        SELECT c.relname AS name, array_to_string(ARRAY(SELECT x FROM unnest(c.relacl::text[]) x ORDER BY x), ' ') AS def
        FROM pg_catalog.pg_class c WHERE c.relnamespace = 'parecer'::regnamespace AND c.relacl IS NOT NULL
        UNION ALL
        SELECT p.oid::regprocedure::text, array_to_string(ARRAY(SELECT x FROM unnest(p.proacl::text[]) x ORDER BY x), ' ')
        FROM pg_catalog.pg_proc p WHERE p.pronamespace = 'parecer'::regnamespace AND p.proacl IS NOT NULL""",
    ),
    (
        "comment",
        """
        SELECT pg_catalog.pg_describe_object(d.classoid, d.objoid, d.objsubid) AS name, d.description AS def
        FROM pg_catalog.pg_description d
        WHERE (d.classoid = 'pg_catalog.pg_class'::regclass
               AND d.objoid IN (SELECT oid FROM pg_catalog.pg_class WHERE relnamespace = 'parecer'::regnamespace))
           OR (d.classoid = 'pg_catalog.pg_proc'::regclass
               AND d.objoid IN (SELECT oid FROM pg_catalog.pg_proc WHERE pronamespace = 'parecer'::regnamespace))
           OR (d.classoid = 'pg_catalog.pg_namespace'::regclass AND d.objoid = 'parecer'::regnamespace)""",
    ),
]


def snapshot(conn: psycopg.Connection[Any]) -> str:
    """The catalogue of the ``parecer`` schema as text (the adapter's ``source_*`` views excluded)."""
    server = conn.info.server_version // 10000
    out = [
        f"-- parecer schema snapshot (PostgreSQL {server}); generated by `make schema`, do not edit.\n"
        "-- The source of truth is db/migrations/ and db/api/; tests/test_schema.py checks this file.\n"
    ]
    for kind, sql in _QUERIES:
        rows = conn.execute(f'SELECT name, def FROM ({sql}) q ORDER BY name COLLATE "C"').fetchall()
        for r in rows:
            name, body = r["name"], r["def"]
            if kind in ("view", "acl", "comment") and str(name).startswith(
                ("source_", "view parecer.source_")
            ):
                continue
            out.append(f"-- {kind}: {name}\n{str(body).rstrip()}\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args:
        db.migrate(args[0])
        with db.connect(args[0]) as conn:
            sys.stdout.write(snapshot(conn))
        return
    from .devkit.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as srv:
        db.migrate(srv.url)
        with db.connect(srv.url) as conn:
            sys.stdout.write(snapshot(conn))


if __name__ == "__main__":
    main()
