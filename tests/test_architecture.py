"""The shape of the code (README, "Architecture"): which package may import which, and where IO lives.

Front ends (gateway/) -> core (store/, worklist/) -> shared infrastructure (infra/); store/
may use worklist/, never the other way. Database access and file moves stay in the core and
infra/. The rule modules stay pure: no database, no network, no clock, no files.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("infra", "worklist", "store", "gateway")
#: What each package may import of the project (itself always).
ALLOWED = {
    "infra": set(),
    "worklist": {"infra"},
    "store": {"infra", "worklist"},
    "gateway": {"infra", "worklist", "store"},
}
#: Pure rule modules: plain functions over plain data.
PURE = ("worklist/gating.py", "worklist/npi.py", "worklist/policy.py", "worklist/orders.py", "worklist/intake.py",
        "worklist/watch.py", "worklist/mpps.py", "worklist/claim_response.py", "worklist/mwl.py", "worklist/mwl_item.py",
        "worklist/mwl_match.py", "worklist/necessity.py", "store/reconcile.py", "store/aging.py", "store/daily.py",
        "store/commitment.py", "store/states.py", "store/report.py", "store/watch.py", "store/qr_match.py",
        "store/forwarding.py")
IMPURE_MODULES = {"peewee", "playhouse", "pynetdicom", "socket", "os", "shutil", "sqlite3", "psycopg2", "time",
                  "apscheduler", "infra.db", "infra.audit", "infra.clock"}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_inward(package):
    wrong = []
    for path in modules(package):
        for name in imports(path):
            top = name.split(".")[0]
            if top in PACKAGES and top != package and top not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert wrong == []


def test_no_database_or_file_moves_in_the_front_ends():
    wrong = []
    for path in modules("gateway"):
        text = path.read_text()
        for name in imports(path):
            if name.split(".")[0] in ("peewee", "playhouse", "sqlite3", "psycopg2") or name.endswith(".models"):
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
        for call in ("os.replace(", "os.rename(", "shutil.move(", "shutil.copy", "execute_sql(", ".select(", "Row."):
            if call in text:
                wrong.append(f"{path.relative_to(ROOT)} uses {call}")
    assert wrong == []


def test_only_records_and_the_index_query_their_tables():
    """Use cases go through worklist/records.py and store/index.py (the MPPS steps and the forwarding
    queue keep their own rows)."""
    allowed = {"worklist/records.py", "worklist/models.py", "worklist/steps.py", "store/index.py", "store/models.py",
               "infra/audit.py", "infra/users.py", "store/outbox.py"}
    query = re.compile(r"\b\w+(Row|Event)\.(select|update|delete|create|get|get_or_none|insert)\(")
    wrong = [f"{p.relative_to(ROOT)}: {m.group(0)}" for package in ("infra", "worklist", "store") for p in modules(package)
             if str(p.relative_to(ROOT)) not in allowed for m in query.finditer(p.read_text())]
    assert wrong == []


@pytest.mark.parametrize("module", PURE)
def test_rule_modules_are_pure(module):
    used = {name for name in imports(ROOT / module) if name in IMPURE_MODULES or name.split(".")[0] in IMPURE_MODULES}
    assert used == set(), f"{module} does IO through {sorted(used)}; move it to a use case"


def test_there_is_one_database_handle_per_caller():
    """No module-level database proxy: the database is opened from settings and passed down."""
    for package in ("infra", "worklist", "store"):
        for path in modules(package):
            assert "DatabaseProxy" not in path.read_text(), path


def test_statuses_are_named_and_errors_mapped_in_one_place():
    """Status codes are constants of gateway/dicom/status.py; every handler's outer guard maps through it."""
    for path in modules("gateway/dicom"):
        text = path.read_text()
        if path.name == "status.py":
            continue
        assert not re.search(r"^[A-Z_]+ = 0x[0-9A-Fa-f]{4}", text, re.M), f"{path.name} defines a status code"
        if "# the one outer guard" in text:
            assert text.count("# the one outer guard") == text.count("st.failure("), path.name
