"""The command line as people use it: where --config goes, hints, accession numbers for studies,
settings and environment errors blamed on what is wrong, each reason once, singular and plural."""

from __future__ import annotations

import json
import socket

import pytest

from gateway.cli.main import main
from tests.conftest import EXAMPLES, pg_unavailable
from tests.dicom_factory import make_instance, make_order, write_instance


@pytest.mark.parametrize("args", [("worklist", "--date", "2026-12-01", "--json"), ("held", "list"),
                                  ("jobs", "list"), ("worklist", "why", "ACC1002")])
def test_config_is_accepted_after_the_command(loaded, args):
    before = loaded(*args)
    after = loaded(*args, config_first=False)
    assert before[0] == after[0] == 0 and before[1] == after[1]


def test_worklist_with_an_accession_hints_at_why(loaded):
    code, out, err = loaded("worklist", "ACC1001")
    assert code == 2 and out == ""
    assert "gatekeeper worklist why ACC1001" in err


def test_why_lists_each_reason_once(loaded):
    code, out, _ = loaded("worklist", "why", "ACC1002")
    assert code == 0
    for code_name, words in (("AUTH_DATE_OUT_OF_RANGE", "valid 2026-11-01 to 2026-11-30"),
                             ("AUTH_LATERALITY_MISMATCH", "laterality L, the order is for R")):
        assert out.count(code_name) == 1 and out.count(words) == 1
    assert "withheld, for 2 reasons." in out
    assert "Compared against auth PA-112233, the closest of 1 auth on file for this patient:" in out


def test_one_record_is_said_in_the_singular(run, tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps(json.loads((EXAMPLES / "orders.json").read_text())[:1]))
    code, out, _ = run("orders", "import", str(one))
    assert code == 0 and "1 order imported (1 created, 0 updated)." in out
    code, out, _ = run("auths", "import", str(EXAMPLES / "auths.json"))
    assert "2 auths imported" in out


def _held_study(app, tmp_path, study_uid: str, accession: str = "ACC1001"):
    ds = make_instance(StudyInstanceUID=study_uid, AccessionNumber=accession, PatientID="WRONG")
    return app.store.receive(write_instance(tmp_path / f"{ds.SOPInstanceUID}.dcm", ds), "MR1")


def test_held_show_finds_a_study_by_its_accession_number(app, run, tmp_path):
    app.gate.import_orders([make_order(payer_id="SELF_PAY")])
    _held_study(app, tmp_path, "1.2.826.0.1.3680043.8.498.501")
    code, out, _ = run("held", "show", "ACC1001")
    assert code == 0 and "Study 1.2.826.0.1.3680043.8.498.501: accession ACC1001" in out
    assert "1 instance from MR1" in out and "PATIENT_ID_MISMATCH" in out
    code, out, _ = run("held", "list")
    assert out.startswith("1 held study, oldest first:")
    code, out, _ = run("held", "release", "ACC1001", "--user", "tech", "--reason", "checked")
    assert code == 0 and "Study 1.2.826.0.1.3680043.8.498.501 (1 instance) released" in out


def test_held_show_lists_the_studies_of_an_ambiguous_accession(app, run, tmp_path):
    app.gate.import_orders([make_order(payer_id="SELF_PAY")])
    _held_study(app, tmp_path, "1.2.826.0.1.3680043.8.498.601")
    _held_study(app, tmp_path, "1.2.826.0.1.3680043.8.498.602")
    code, out, err = run("held", "show", "ACC1001")
    assert code == 1 and out == ""
    assert "Accession ACC1001 has 2 held studies:" in err
    assert "1.2.826.0.1.3680043.8.498.601" in err and "1.2.826.0.1.3680043.8.498.602" in err
    assert "name one by its Study Instance UID" in err


def test_held_show_of_nothing_known_exits_1(run):
    code, _, err = run("held", "show", "ACC404")
    assert code == 1 and "no held study has that accession number" in err


@pytest.mark.parametrize("port", [0, 65536, 70000])
def test_a_port_out_of_range_is_a_settings_error(tmp_path, capsys, port):
    path = tmp_path / "settings.toml"
    path.write_text(f"[server]\nport = {port}\n")
    assert main(["--config", str(path), "worklist"]) == 2
    err = capsys.readouterr().err
    assert "server.port" in err and "1 to 65535" in err


def test_a_port_in_use_is_one_sentence_naming_the_port_and_the_setting(settings_path, capsys, monkeypatch):
    monkeypatch.setenv("GATEKEEPER_NOW", "2026-11-30T08:00:00")
    port = int(next(line.split("=")[1] for line in settings_path.read_text().splitlines() if line.startswith("port = ")))
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert main(["--config", str(settings_path), "serve"]) == 1
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("gatekeeper:")]
    assert f"port {port} is already in use" in line and "server.port" in line and str(settings_path) in line
    assert "Traceback" not in err


@pytest.mark.parametrize("keyword, words", [("NoSuchKeyword", "not a DICOM keyword"),
                                            ("PatientBirthDate", "cannot hold")])
def test_the_auth_attribute_must_be_a_text_keyword(settings_path, capsys, keyword, words):
    text = settings_path.read_text().replace('auth_attribute = "RequestedProcedureComments"',
                                             f'auth_attribute = "{keyword}"')
    settings_path.write_text(text)
    assert main(["--config", str(settings_path), "worklist"]) == 2
    err = capsys.readouterr().err
    assert "worklist.auth_attribute" in err and words in err


@pytest.mark.parametrize("value", ["tomorrow", "2026-13-01T00:00:00", "2026-11-30T08:00:00+01:00"])
def test_a_bad_clock_override_is_blamed_on_itself(settings_path, capsys, monkeypatch, value):
    monkeypatch.setenv("GATEKEEPER_NOW", value)
    assert main(["--config", str(settings_path), "worklist"]) == 2
    err = capsys.readouterr().err
    assert "GATEKEEPER_NOW" in err and "database" not in err


def test_postgres_unavailable_is_explained():
    assert "not set" in pg_unavailable(None)
    assert "no PostgreSQL server answers" in pg_unavailable("postgresql://postgres@127.0.0.1:1/test")


def test_moving_images_to_another_patient_needs_patient_change(app, run, tmp_path):
    app.gate.import_orders([make_order(payer_id="SELF_PAY"),
                            make_order(accession_number="ACC7", patient_id="MRN7", patient_name="ROE^RICHARD",
                                       payer_id="SELF_PAY")])
    _held_study(app, tmp_path, "1.2.826.0.1.3680043.8.498.701")
    code, out, err = run("held", "correct", "ACC1001", "--accession", "ACC7", "--user", "tech", "--reason", "r")
    assert code == 1 and out == "" and "needs --patient-change" in err
    code, out, _ = run("held", "correct", "1.2.826.0.1.3680043.8.498.701", "--accession", "ACC7",
                       "--patient-change", "--user", "tech", "--reason", "wrong patient picked at the console")
    assert code == 0 and "corrected from order ACC7 and archived" in out


def test_held_list_marks_a_reopened_study(app, run, tmp_path):
    app.gate.import_orders([make_order(payer_id="SELF_PAY")])
    study = "1.2.826.0.1.3680043.8.498.801"
    ds = make_instance(StudyInstanceUID=study)
    app.store.receive(write_instance(tmp_path / "first.dcm", ds), "MR1")
    _held_study(app, tmp_path, study)
    code, out, _ = run("held", "list")
    assert "(reopened: was archived)" in out
    code, out, _ = run("held", "list", "--json")
    assert json.loads(out)["held"][0]["reopened"] is True


@pytest.mark.parametrize("key", ["max_associations", "associate_timeout", "network_timeout"])
def test_server_limits_of_zero_are_settings_errors(tmp_path, capsys, key):
    path = tmp_path / "settings.toml"
    path.write_text(f"[server]\n{key} = 0\n")
    assert main(["--config", str(path), "worklist"]) == 2
    assert f"server.{key} must be at least 1" in capsys.readouterr().err
