"""The worklist verbs of the command line, run in process with their exit codes."""

import json


from gateway.cli.main import main
from tests.conftest import EXAMPLES


def test_import_reports_counts(run):
    code, out, _ = run("orders", "import", str(EXAMPLES / "orders.json"))
    assert code == 0 and "3 orders imported (3 created, 0 updated)" in out
    code, out, _ = run("orders", "import", str(EXAMPLES / "orders.json"))
    assert "0 created, 3 updated" in out


def test_bad_file_is_rejected_whole_with_exit_2(run, tmp_path):
    records = json.loads((EXAMPLES / "orders.json").read_text())
    records[2]["facility_npi"] = "1234567890"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records, indent=1))
    code, out, err = run("orders", "import", str(bad))
    assert code == 2 and out == ""
    assert "record 3" in err and "facility_npi" in err and "nothing imported" in err
    code, out, _ = run("worklist", "--date", "2026-12-01", "--json")
    assert json.loads(out)["orders"] == []


def test_missing_file_is_bad_input(run, tmp_path):
    code, _, err = run("auths", "import", str(tmp_path / "nope.csv"))
    assert code == 2 and "cannot read" in err


def test_worklist_table_and_why(loaded):
    code, out, _ = loaded("worklist", "--date", "2026-12-01")
    assert code == 0 and "2 served, 1 withheld" in out
    assert "ACC1002" in out and "AUTH_DATE_OUT_OF_RANGE AUTH_LATERALITY_MISMATCH" in out
    code, out, _ = loaded("worklist", "why", "ACC1002")
    assert code == 0
    assert "Compared against auth PA-112233" in out
    assert "valid 2026-11-01 to 2026-11-30, the exam is on 2026-12-01" in out
    assert "laterality L, the order is for R" in out


def test_worklist_station_filter(loaded):
    out = json.loads(loaded("worklist", "--date", "2026-12-01", "--station", "DX1", "--json")[1])
    assert [o["accession_number"] for o in out["orders"]] == ["ACC1003"]
    assert out["orders"][0]["basis"] == "no-auth-needed"


def test_why_unknown_order_is_refused(loaded):
    code, _, err = loaded("worklist", "why", "NOPE")
    assert code == 1 and "no order with accession number 'NOPE'" in err


def test_override_serves_and_is_shown(loaded):
    code, out, _ = loaded("orders", "override", "ACC1002", "--user", "dr.ortho", "--reason", "acute injury")
    assert code == 0 and "served by override of dr.ortho" in out
    entry = json.loads(loaded("worklist", "why", "ACC1002", "--json")[1])
    assert entry["served"] and entry["basis"] == "override"
    assert entry["override"]["user"] == "dr.ortho"
    assert [r["code"] for r in entry["reasons"]] == ["AUTH_DATE_OUT_OF_RANGE", "AUTH_LATERALITY_MISMATCH"]


def test_override_of_unknown_order_exits_1(loaded):
    code, _, err = loaded("orders", "override", "NOPE", "--user", "u", "--reason", "r")
    assert code == 1 and "import the order first" in err


def test_bad_settings_exit_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "settings.toml"
    path.write_text("[server]\nport = 'x'\n")
    assert main(["--config", str(path), "worklist"]) == 2
    assert "server.port" in capsys.readouterr().err
