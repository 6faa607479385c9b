"""Several processes on one SQLite file: writers wait for each other instead of failing.

Two ``gatekeeper orders import`` at once used to fail with "database is locked" in most
runs: each read, then asked for the write lock the other had just taken, which SQLite
refuses without waiting. Writers now begin IMMEDIATE (infra/db.py); a wait that still
times out is one sentence from the command line, not a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys

import pytest

from bench.synthetic import orders_and_auths
from tests.conftest import EXAMPLES, ROOT, write_settings

PER_FILE = 3_000
RUNS = 3


def _import_at_once(folder, files) -> list[subprocess.CompletedProcess]:
    settings = write_settings(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}  # the file's SQLite, real clock
    started = [
        subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(settings), "orders", "import", str(f)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for f in files
    ]
    outputs = [p.communicate(timeout=120) for p in started]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(started, outputs)]


@pytest.mark.parametrize("run", range(RUNS))
def test_two_large_imports_at_once_both_succeed(tmp_path, run):
    orders, _ = orders_and_auths(2 * PER_FILE, first_day=dt.date(2026, 12, 1), days=5, seed=run)
    files = []
    for k in range(2):
        path = tmp_path / f"orders{k}.json"
        path.write_text(json.dumps(orders[k * PER_FILE:(k + 1) * PER_FILE]))
        files.append(path)
    done = _import_at_once(tmp_path, files)
    for result in done:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr and "locked" not in result.stderr  # INFO lines may appear
        assert f"{PER_FILE} orders imported ({PER_FILE} created, 0 updated)" in result.stdout
    with sqlite3.connect(tmp_path / "var" / "gatekeeper.db") as db:
        assert db.execute("SELECT count(*) FROM orders").fetchone()[0] == 2 * PER_FILE
        assert db.execute("SELECT count(*) FROM audit_log WHERE action = 'orders.import'").fetchone()[0] == 2


def test_import_waiting_too_long_for_the_lock_is_one_sentence(run, settings_path, monkeypatch):
    assert run("orders", "import", str(EXAMPLES / "orders.json"))[0] == 0  # the database exists, up to date
    monkeypatch.setattr("infra.db.BUSY_TIMEOUT_MS", 100)
    other = sqlite3.connect(settings_path.parent / "var" / "gatekeeper.db", isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the busy timeout
    try:
        code, out, err = run("auths", "import", str(EXAMPLES / "auths.json"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (code, out) == (1, "")
    assert err == ("gatekeeper: the database is busy: another process kept it locked for more than 0.1 s and "
                   "nothing was changed; try again\n")
    assert run("auths", "import", str(EXAMPLES / "auths.json"))[0] == 0  # and once it is free, it works
