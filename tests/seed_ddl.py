"""Host fixtures built from the seeds' own text (tests/fixtures/seeds/, verbatim copies).

Seed 000 gives the index DDL and the message ordering of its Prisma host; seed
001 gives LIA CORTEX's tables as Markdown tables (column, type, constraints) and
index lists. The DDL here is parsed from that text, not written from what the
adapters assume, so a mismatch between an adapter and its seed fails a test.
"""

from __future__ import annotations

import re
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "fixtures" / "seeds"


def seed000() -> str:
    return (SEEDS / "000_prisma_plan.txt").read_text(encoding="utf-8")


def seed000_index_ddl() -> str:
    """Seed 000's mandatory index, exactly as the seed writes it."""
    m = re.search(r"`(CREATE INDEX IF NOT EXISTS ix_messages_sessionId ON [^`]+;)`", seed000())
    assert m, "seed 000 no longer gives the index DDL"
    return m.group(1)


def seed000_order_columns() -> list[str]:
    """The message ordering key of seed 000: COALESCE(a, b, c), then id."""
    m = re.search(r'ORDER BY COALESCE\(("[^)]*")\) ASC, "id" ASC', seed000())
    assert m, "seed 000 no longer gives the ordering"
    return re.findall(r'"(\w+)"', m.group(1))


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", name).lower()


_TYPES = {
    "varchar (uuid)": "varchar",
    "varchar": "varchar",
    "text": "text",
    "text[]": "text[]",
    "timestamp": "timestamp",
    "integer": "integer",
    "boolean": "boolean",
    "jsonb": "jsonb",
    "serial": "serial",
}


def seed001_ddl(tables: list[str], *, snake_case: bool = False) -> str:
    """CREATE TABLE / CREATE INDEX statements for seed 001's tables, parsed from its
    Markdown: columns, types and constraints from the table, indexes from the
    "Índices" list. snake_case: the spelling of the seed's example queries."""
    text = (SEEDS / "001_lia_cortex_schema.md").read_text(encoding="utf-8")
    out: list[str] = []
    for table in tables:
        m = re.search(rf"^### `{table}` .*?(?=^### |^## )", text, re.M | re.S)
        assert m, f"seed 001 has no table {table}"
        block = m.group(0)
        rows = [ln for ln in block.splitlines() if ln.startswith("| `")]
        cols: list[str] = []
        for ln in rows:
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            name = cells[0].strip("`")
            typ = _TYPES[cells[1].lower()]
            cons = cells[3] if len(cells) > 3 else ""
            if len(cells) <= 3 and name == "id":
                cons = "PRIMARY KEY"  # the seed: every id is a varchar primary key
            col = _snake(name) if snake_case else name
            parts = [f'"{col}" {typ}']
            for c in (c.strip() for c in cons.split(",") if c.strip()):
                if c.upper().startswith("DEFAULT"):
                    parts.append(c.replace("NOW()", "now()"))
                elif c in ("PRIMARY KEY", "NOT NULL", "UNIQUE"):
                    parts.append(c)
            cols.append(" ".join(parts))
        out.append(f"CREATE TABLE public.{table} (\n    " + ",\n    ".join(cols) + "\n);")
        idx = re.search(r"\*\*Índices:\*\*\n((?:- .*\n)+)", block)
        for ln in idx.group(1).splitlines() if idx else []:
            im = re.match(r"- `(\w+)` → \(?([^)]*)\)?$", ln.strip())
            assert im, ln
            keys = [k.strip() for k in im.group(2).split(",")]
            keys = [_snake(k) if snake_case else k for k in keys]
            out.append(
                f"CREATE INDEX {im.group(1)} ON public.{table} ("
                + ", ".join(f'"{k}"' for k in keys)
                + ");"
            )
    return "\n".join(out)
