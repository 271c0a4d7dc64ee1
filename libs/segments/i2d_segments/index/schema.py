"""Versioned migrations of the index, shared by both adapters.

Files live in `i2d_segments/index/migrations/` as `NNNN_<name>.<engine>.sql` (engine: `sqlite` or
`postgres`). The two engines need different types (JSONB, BIGINT), so each version exists once
per engine, and both engines must have exactly the same versions: a version one engine lacks is a
packaging bug, caught here rather than as a drifting schema.

A version may also have a Python step (`STEPS`), run after its statements in the same
transaction: work SQL alone cannot do the same way in both engines, or should log its progress
(0006 fills the totals from the rows of an existing index; 0007 rewrites its rows compact;
0008 gives them slots).

Each adapter applies the pending versions in order, one transaction per version, recording each
in `schema_migrations` within that transaction; it serialises concurrent `migrate()` calls with
the engine's own lock (SQLite: BEGIN IMMEDIATE; Postgres: an advisory transaction lock) and
re-reads the applied versions under that lock, so two processes migrating at once apply each
version exactly once.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Literal

from i2d_segments.index.compact import COMPACT_VERSION, MigrationDb, compact_index
from i2d_segments.index.slotting import SLOTS_VERSION, slot_index
from i2d_segments.index.totals import TOTALS_VERSION, backfill_totals

Engine = Literal["sqlite", "postgres"]
ENGINES: tuple[Engine, ...] = ("sqlite", "postgres")

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sqlite|postgres)\.sql$")

# Created before any migration runs (it records them), so it is not itself a migration. The
# types are valid in both engines.
SCHEMA_MIGRATIONS_DDL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


# Python steps by version: run after the version's statements, in its transaction.
STEPS: dict[int, Callable[[MigrationDb], None]] = {
    TOTALS_VERSION: backfill_totals,
    COMPACT_VERSION: compact_index,
    SLOTS_VERSION: slot_index,
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    step: Callable[[MigrationDb], None] | None = None

    def statements(self) -> list[str]:
        return split_statements(self.sql)


def _scan() -> dict[Engine, dict[int, tuple[str, str]]]:
    """{engine: {version: (name, file name)}} of the packaged migration files."""
    found: dict[Engine, dict[int, tuple[str, str]]] = {e: {} for e in ENGINES}
    folder = resources.files("i2d_segments.index.migrations")
    for entry in folder.iterdir():
        m = _FILE_RE.match(entry.name)
        if not m:
            continue
        version, name, engine = int(m.group(1)), m.group(2), m.group(3)
        per_engine = found["sqlite" if engine == "sqlite" else "postgres"]
        if version in per_engine:
            raise RuntimeError(f"two {engine} migrations numbered {version:04d}")
        per_engine[version] = (name, entry.name)
    return found


def load_migrations(engine: Engine) -> list[Migration]:
    """The engine's migrations in version order; checks both engines have the same versions."""
    found = _scan()
    mine = found[engine]
    for other in ENGINES:
        if set(found[other]) != set(mine):
            raise RuntimeError(
                f"migration versions differ between engines: {engine} has {sorted(mine)}, "
                f"{other} has {sorted(found[other])}"
            )
    versions = sorted(mine)
    if versions != list(range(1, len(versions) + 1)):
        raise RuntimeError(f"migration versions must run 1..N without gaps, found {versions}")
    folder = resources.files("i2d_segments.index.migrations")
    out: list[Migration] = []
    for version in versions:
        name, file_name = mine[version]
        sql = folder.joinpath(file_name).read_text("utf-8")
        out.append(Migration(version, name, sql, STEPS.get(version)))
    return out


def split_statements(sql: str) -> list[str]:
    """Split a migration script into statements.

    Needed for SQLite, whose `executescript` commits the open transaction first and would break
    the one-transaction-per-migration rule. `sqlite3.complete_statement` knows about quotes and
    comments, so a `;` inside a string literal does not split.
    """
    statements: list[str] = []
    pending = ""
    for line in sql.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            stmt = _strip_comments(pending)
            if stmt:
                statements.append(stmt)
            pending = ""
    if _strip_comments(pending):
        raise ValueError(f"migration ends with an unterminated statement: {pending.strip()!r}")
    return statements


def _strip_comments(chunk: str) -> str:
    """Drop whole-line `--` comments and blank lines (statements keep their own text)."""
    lines = [ln for ln in chunk.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
    return "\n".join(lines).strip()
