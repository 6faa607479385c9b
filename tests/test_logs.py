"""Logs ([log] in settings.toml): stderr by default, a rotated file, JSON lines with the
operation's fields (gateway/logs.py), and the summary lines of real DICOM operations."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, MRImageStorage, Verification

from gateway import logs
from tests.conftest import EXAMPLES
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, make_instance
from worklist.intake import parse_auths, parse_orders


@pytest.fixture(autouse=True)
def restore_logging():
    """Each test leaves the root logger as it found it (pytest's own handlers are never touched)."""
    root = logging.getLogger()
    level = root.level
    yield
    logs.remove_handlers()
    root.setLevel(level)


def ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_gatekeeper_handler", False)]


@contextlib.contextmanager
def bare_root():
    """The root logger as in a fresh process: without pytest's handlers (added per test phase)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    for handler in saved:
        root.removeHandler(handler)
    try:
        yield
    finally:
        logs.remove_handlers()
        for handler in saved:
            root.addHandler(handler)


def test_stderr_is_the_default_and_configuring_twice_does_not_duplicate(app, capsys):
    with bare_root():
        for _ in range(3):
            logs.configure(app.settings)
        assert len(ours()) == 1
        logging.getLogger("gateway.test").info("one line")
    assert capsys.readouterr().err.count("INFO gateway.test: one line") == 1


def test_a_root_logger_configured_elsewhere_keeps_standard_error(app, capsys):
    """As basicConfig: a program (here pytest) that configured logging keeps it; commands run in process stay quiet."""
    root = logging.getLogger()
    level = root.level
    assert root.handlers  # pytest's
    assert logs.configure(app.settings) == [] and ours() == [] and root.level == level
    logging.getLogger("gateway.test").warning("not on stderr twice")
    assert "not on stderr twice" not in capsys.readouterr().err


def test_with_a_file_the_file_gets_everything_and_stderr_warnings_only(app, tmp_path, capsys):
    settings = dataclasses.replace(app.settings, log_file=tmp_path / "logs" / "gatekeeper.log")
    with bare_root():
        logs.configure(settings)
        logs.configure(settings)
        assert len(ours()) == 2
        log = logging.getLogger("gateway.test")
        log.info("routine")
        log.warning("look at this")
    err = capsys.readouterr().err
    assert "look at this" in err and "routine" not in err
    text = (tmp_path / "logs" / "gatekeeper.log").read_text()
    assert "INFO gateway.test: routine" in text and "WARNING gateway.test: look at this" in text
    assert text.count("routine") == 1  # one file handler, not two


def test_the_file_rotates_to_keep_files_and_never_more(app, tmp_path):
    path = tmp_path / "gatekeeper.log"
    settings = dataclasses.replace(app.settings, log_file=path, log_max_mb=0.002, log_keep=3)  # about 2 KiB
    logs.configure(settings)
    log = logging.getLogger("gateway.test")
    for n in range(400):  # about 40 KiB: many rotations
        log.info("line %04d %s", n, "x" * 60)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("gatekeeper.log"))
    assert names == ["gatekeeper.log", "gatekeeper.log.1", "gatekeeper.log.2", "gatekeeper.log.3"]
    limit = int(0.002 * 1024 * 1024)
    assert all((tmp_path / name).stat().st_size <= limit for name in names)
    assert "line 0399" in path.read_text()  # the newest line is in the live file
    assert "line 0000" not in "".join((tmp_path / name).read_text() for name in names)  # the oldest are gone


def test_json_lines_carry_the_fields_and_exceptions(app, tmp_path):
    path = tmp_path / "gatekeeper.log"
    logs.configure(dataclasses.replace(app.settings, log_file=path, log_format="json"))
    log = logging.getLogger("gateway.test")
    log.info("plain %s", "text")
    log.info("with fields", extra={"calling_ae": "MR1", "operation": "C-FIND", "status": "0x0000", "duration_ms": 1.5})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    plain, fields, failed = [json.loads(line) for line in path.read_text().splitlines()]
    assert set(plain) == {"time", "level", "logger", "message"}
    assert (plain["level"], plain["logger"], plain["message"]) == ("INFO", "gateway.test", "plain text")
    assert "T" in plain["time"] and plain["time"][-6] in "+-"  # ISO 8601 with the UTC offset
    assert fields["calling_ae"] == "MR1" and fields["operation"] == "C-FIND" and fields["duration_ms"] == 1.5
    assert failed["level"] == "ERROR" and "RuntimeError: boom" in failed["exception"]


def test_other_commands_never_write_the_service_file(app, tmp_path):
    path = tmp_path / "gatekeeper.log"
    logs.configure(dataclasses.replace(app.settings, log_file=path, log_format="json"), service=False)
    logging.getLogger("gateway.test").warning("from a command")
    assert not path.exists()


def test_serve_with_a_log_file_it_cannot_open_exits_2(run, settings_path, tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    text = settings_path.read_text()
    assert text.count('file = ""') == 1
    settings_path.write_text(text.replace('file = ""', 'file = "taken/gatekeeper.log"'))
    code, out, err = run("serve")
    assert code == 2
    assert "cannot open the log file" in err and "log.file" in err


def _load_examples(app):
    app.gate.import_orders(parse_orders((EXAMPLES / "orders.json").read_text()))
    app.gate.import_auths(parse_auths((EXAMPLES / "auths.json").read_text()))


def test_dicom_operations_log_one_json_line_each_with_association_caller_status_and_duration(app, server, tmp_path):
    path = tmp_path / "gatekeeper.log"
    logs.configure(dataclasses.replace(app.settings, log_file=path, log_format="json"))
    _load_examples(app)
    ae = AE(ae_title="MR1")
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind, ImplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        identifier = Dataset()
        identifier.PatientName = ""
        identifier.AccessionNumber = ""
        step = Dataset()
        step.ScheduledStationAETitle = "MR1"
        step.ScheduledProcedureStepStartDate = "20261201"
        identifier.ScheduledProcedureStepSequence = [step]
        statuses = [status.Status for status, _ in assoc.send_c_find(identifier, ModalityWorklistInformationFind)]
        assert statuses[-1] == 0x0000
        assert assoc.send_c_store(make_instance()).Status == 0x0000
    finally:
        assoc.release()
    deadline = time.monotonic() + 5  # the server writes the association's last line once it has ended
    while '"A-RELEASE"' not in path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    by_op = {}
    for line in lines:
        by_op.setdefault(line.get("operation"), []).append(line)
    [find] = by_op["C-FIND"]
    [store] = by_op["C-STORE"]
    [accepted] = by_op["A-ASSOCIATE"]
    [released] = by_op["A-RELEASE"]
    for line in (find, store):
        assert line["calling_ae"] == "MR1" and line["status"] == "0x0000"
        assert isinstance(line["duration_ms"], (int, float)) and line["duration_ms"] >= 0
        assert line["level"] == "INFO"
    assert find["logger"] == "gateway.dicom.worklist" and find["message"].startswith("worklist query from MR1: success")
    assert store["logger"] == "gateway.dicom.storage" and store["message"].startswith("C-STORE from MR1: instance")
    # one association, one id, on every line of it
    assert find["association"] == store["association"] == accepted["association"] == released["association"]
    assert accepted["calling_ae"] == released["calling_ae"] == "MR1" and released["duration_ms"] >= 0
    text = path.read_text()
    assert PATIENT_NAME not in text and PATIENT_ID not in text
    assert "ROE^RICHARD" not in text and "MRN5002" not in text  # the example patients, as served on the worklist


def test_two_associations_get_two_ids(app, server, tmp_path, caplog):
    ae = AE(ae_title="ECHO")
    ae.add_requested_context(Verification)
    with caplog.at_level(logging.INFO, logger="gateway.dicom.server"):
        for _ in range(2):
            assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
            assert assoc.is_established
            assoc.release()
    ids = [r.association for r in caplog.records if getattr(r, "operation", None) == "A-ASSOCIATE"]
    assert len(ids) == 2 and ids[0] != ids[1]
