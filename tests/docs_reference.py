"""The catalogue part of docs/sql-reference.md, generated from the database.

Each public function and view of schema ``parecer`` has, in its section of
docs/sql-reference.md, one block between markers::

    <!-- catalogue: parecer.claim -->
    ...signature, RETURNS, COMMENT and the roles that may use it...
    <!-- /catalogue -->

This module renders those blocks from pg_proc / pg_class / the privileges, so
the signatures, comment lines and role lines are never written by hand.
tests/test_docs_sql.py regenerates them and fails when the doc is stale; to
rewrite the doc in place, against any database where parecer is migrated::

    .venv/bin/python -m tests.docs_reference postgresql://you@localhost/parecer_demo
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "sql-reference.md"
ROLES = ("parecer_admin", "parecer_runner", "parecer_reader")
BLOCK = re.compile(
    r"^<!-- catalogue: (parecer\.[a-z_]+) -->\n(.*?)^<!-- /catalogue -->$", re.MULTILINE | re.DOTALL
)
WIDTH = 100


def as_documented(sig: str) -> str:
    """pg_get_function_arguments/result as the reference writes them."""
    sig = sig.replace("timestamp with time zone", "timestamptz")
    sig = re.sub(
        r"::(double precision|[a-z_]+)(\[\])?", "", sig
    )  # DEFAULT NULL::text -> DEFAULT NULL
    return " ".join(sig.split())


def _wrap_args(head: str, args: str) -> str:
    """`head(args)` wrapped at WIDTH on argument boundaries, continuation lines indented 4."""
    parts = [a.strip() for a in re.split(r",\s(?=(?:[^']*'[^']*')*[^']*$)", args)] if args else []
    lines: list[str] = []
    cur = head + "("
    for i, a in enumerate(parts):
        piece = a + ("," if i < len(parts) - 1 else ")")
        if cur.strip() and cur not in (head + "(",) and len(cur) + 1 + len(piece) > WIDTH:
            lines.append(cur)
            cur = "    " + piece
        else:
            cur = cur + ("" if cur.endswith("(") else " ") + piece
    if not parts:
        cur += ")"
    lines.append(cur)
    return "\n".join(lines)


def _wrap_text(text: str, prefix: str = "") -> str:
    return "\n".join(
        textwrap.wrap(
            " ".join(text.split()),
            width=80,
            initial_indent=prefix,
            subsequent_indent=prefix,
            break_on_hyphens=False,
            break_long_words=False,
        )
    )


def _roles(granted: list[str]) -> str:
    if not granted:
        return "Roles: none (only the owner of schema `parecer`)."
    return "Roles: " + ", ".join(granted) + "."


def _allowed(conn: psycopg.Connection[Any], query: str, args: tuple[Any, ...]) -> bool:
    """The ``ok`` column of a one-row privilege query."""
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return bool(row["ok"])


def render(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Object name -> its generated block (between the markers, without them)."""
    out: dict[str, str] = {}
    funcs = conn.execute(
        "SELECT p.proname, p.oid, pg_get_function_arguments(p.oid) AS args, "
        "       pg_get_function_result(p.oid) AS res, obj_description(p.oid, 'pg_proc') AS comment, "
        "       p.prorettype "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'parecer' AND p.proname !~ '^_' ORDER BY 1"
    ).fetchall()
    for f in funcs:
        lines = [
            "```",
            _wrap_args(f"parecer.{f['proname']}", as_documented(f["args"])),
            f"RETURNS {as_documented(f['res'])}",
        ]
        # a composite type of its own (not a table's or view's row type): spell out its columns
        typ = conn.execute(
            "SELECT t.typname, "
            "       string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum) AS cols "
            "FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid AND c.relkind = 'c' "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
            "WHERE t.oid = %s GROUP BY t.typname",
            (f["prorettype"],),
        ).fetchone()
        if typ is not None:
            cols = as_documented(typ["cols"])
            lines.append(
                textwrap.fill(
                    f"-- parecer.{typ['typname']}: ({cols})",
                    width=WIDTH,
                    subsequent_indent="--     ",
                    break_on_hyphens=False,
                    break_long_words=False,
                )
            )
        lines.append("```")
        lines.append("")
        lines.append(_wrap_text(f["comment"] or "(no comment)", "> "))
        lines.append("")
        granted = [
            r
            for r in ROLES
            if _allowed(
                conn, "SELECT has_function_privilege(%s, %s::oid, 'EXECUTE') AS ok", (r, f["oid"])
            )
        ]
        lines.append(_roles(granted))
        out[f"parecer.{f['proname']}"] = "\n".join(lines) + "\n"
    views = conn.execute(
        "SELECT c.relname, c.oid, obj_description(c.oid, 'pg_class') AS comment "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'parecer' AND c.relkind = 'v' AND c.relname !~ '^_' ORDER BY 1"
    ).fetchall()
    for v in views:
        granted = [
            r
            for r in ROLES
            if _allowed(
                conn, "SELECT has_table_privilege(%s, %s::oid, 'SELECT') AS ok", (r, v["oid"])
            )
        ]
        out[f"parecer.{v['relname']}"] = (
            _wrap_text(v["comment"] or "(no comment)", "> ") + "\n\n" + _roles(granted) + "\n"
        )
    return out


def blocks_in(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for m in BLOCK.finditer(text):
        assert m.group(1) not in found, f"two catalogue blocks for {m.group(1)}"
        found[m.group(1)] = m.group(2)
    return found


def regenerate(text: str, generated: dict[str, str]) -> str:
    """The doc with every catalogue block replaced by its generated text."""
    return BLOCK.sub(
        lambda m: (
            f"<!-- catalogue: {m.group(1)} -->\n{generated.get(m.group(1), m.group(2))}"
            "<!-- /catalogue -->"
        ),
        text,
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with psycopg.connect(argv[1], row_factory=dict_row) as conn:
        generated = render(conn)
    text = REFERENCE.read_text(encoding="utf-8")
    missing = sorted(set(generated) - set(blocks_in(text)))
    new = regenerate(text, generated)
    REFERENCE.write_text(new, encoding="utf-8")
    print(f"{REFERENCE}: {'unchanged' if new == text else 'rewritten'}")
    if missing:
        print(
            "no catalogue block (add a section with the markers): " + ", ".join(missing),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
