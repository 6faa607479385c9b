"""Write ``v<N>_sqlite.sql`` and ``v<N>_postgres.sql``: the schema a release's own code creates.

The upgrade tests (``tests/test_schema.py``) build a database of an older release from
these files, because CI has only this repository. Run this once per release, from a
checkout of that release (the step that comes after it is then tested from its schema)::

    git worktree add /tmp/before v0.1.0      # or any checkout of the release
    .venv/bin/python tests/schemas/dump_schema.py --tree /tmp/before --version 1

The release makes its databases as it does in the field: its own ``gatekeeper`` entry
point (read from its ``pyproject.toml``) runs ``jobs list`` once on a fresh SQLite file and
once on a scratch PostgreSQL database (``--pg-url`` names a server and a database to connect
to; the scratch database ``gatekeeper_schema_dump`` is created there and dropped after).
SQLite's schema is the SQL kept in ``sqlite_master`` (tables, indexes, triggers), in the
order the release created it; PostgreSQL's is ``pg_dump --schema-only --no-owner
--no-privileges`` without its session settings (``SET``, ``search_path``, ``\\restrict``),
so that the file runs on any connection through psycopg2. Statements only: the tests
insert their own rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
SCRATCH = "gatekeeper_schema_dump"


def run_release(tree: Path, database_url: str, folder: Path) -> None:
    """Open ``database_url`` with the release in ``tree``, as its command line does."""
    module, function = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["scripts"]["gatekeeper"].split(":")
    text = (tree / "settings.toml").read_text()
    default = 'url = "sqlite:///var/gatekeeper.db"'
    if default not in text:
        raise SystemExit(f"{tree}/settings.toml has no line {default!r} to point at the scratch database")
    settings = folder / "settings.toml"
    settings.write_text(text.replace(default, f'url = "{database_url}"'))
    code = f"import sys, {module} as m; sys.exit(m.{function}(['--config', {str(settings)!r}, 'jobs', 'list']))"
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("GATEKEEPER_DATABASE_URL", None)
    subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)


def sqlite_schema(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid").fetchall()
    return "".join(f"{sql};\n" for (sql,) in rows)


def postgres_schema(url: str) -> str:
    dump = subprocess.run(["pg_dump", "--schema-only", "--no-owner", "--no-privileges", url],
                          check=True, capture_output=True, text=True).stdout
    session = ("SET ", "SELECT pg_catalog.set_config(", "\\")
    return "".join(line for line in dump.splitlines(keepends=True) if not line.startswith(session))


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True, help="a checkout of the release")
    parser.add_argument("--version", type=int, required=True, help="the schema version that release has")
    parser.add_argument("--pg-url", default=os.environ.get("GATEKEEPER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    tree = args.tree.resolve()
    release = tomllib.loads((tree / "pyproject.toml").read_text())["project"]["version"]
    header = (f"-- Schema version {args.version}: the database gatekeeper {release} creates, made by its own code\n"
              f"-- and written by tests/schemas/dump_schema.py. tests/test_schema.py builds the old database from it.\n")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        run_release(tree, f"sqlite:///{folder / 'gatekeeper.db'}", folder)
        (HERE / f"v{args.version}_sqlite.sql").write_text(header + sqlite_schema(folder / "gatekeeper.db"))

        admin = ["psql", "-q", "-v", "ON_ERROR_STOP=1", args.pg_url, "-c"]
        subprocess.run([*admin, f"DROP DATABASE IF EXISTS {SCRATCH}"], check=True)
        subprocess.run([*admin, f"CREATE DATABASE {SCRATCH}"], check=True)
        try:
            scratch = with_database(args.pg_url, SCRATCH)
            shutil.rmtree(folder / "var", ignore_errors=True)
            run_release(tree, scratch, folder)
            (HERE / f"v{args.version}_postgres.sql").write_text(header + postgres_schema(scratch))
        finally:
            subprocess.run([*admin, f"DROP DATABASE IF EXISTS {SCRATCH}"], check=True)
    print(f"wrote {HERE}/v{args.version}_sqlite.sql and v{args.version}_postgres.sql")


if __name__ == "__main__":
    main()
