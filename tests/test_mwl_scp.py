"""Modality Worklist C-FIND over a real association, in process."""

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from gateway.app import open_app
from gateway.settings import load
from tests.conftest import EXAMPLES, RunningServer, write_settings
from worklist.intake import parse_auths, parse_orders


def load_examples(app):
    app.gate.import_orders(parse_orders((EXAMPLES / "orders.json").read_text()))
    app.gate.import_auths(parse_auths((EXAMPLES / "auths.json").read_text()))


@pytest.fixture
def mwl(app, server):
    load_examples(app)
    return server


def query(step: dict | None = None, **top) -> Dataset:
    ds = Dataset()
    for key, value in top.items():
        setattr(ds, key, value)
    if step is not None:
        item = Dataset()
        for key, value in step.items():
            setattr(item, key, value)
        ds.ScheduledProcedureStepSequence = [item]
    return ds


def find(port: int, identifier: Dataset, calling: str = "MR1"):
    """(list of pending identifiers, final status) of one C-FIND."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    assert assoc.is_established
    pending, final = [], None
    for status, ident in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
        if status.Status in (0xFF00, 0xFF01):
            pending.append(ident)
        else:
            final = status.Status
    assoc.release()
    return pending, final


def test_console_query_for_one_station_and_day(mwl):
    found, status = find(mwl.port, query(
        {"ScheduledStationAETitle": "MR1", "ScheduledProcedureStepStartDate": "20261201", "Modality": ""},
        AccessionNumber="", PatientName="", RequestedProcedureComments=""))
    assert status == 0x0000
    assert [(d.AccessionNumber, d.RequestedProcedureComments) for d in found] == [("ACC1001", "AUTH PA-778899")]
    assert set(found[0].dir()) == {"AccessionNumber", "PatientName", "RequestedProcedureComments",
                                   "ScheduledProcedureStepSequence", "SpecificCharacterSet"}


def test_query_retrieve_level_is_tolerated(mwl):
    found, status = find(mwl.port, query(QueryRetrieveLevel="PATIENT", AccessionNumber="ACC1003"))
    assert status == 0x0000 and [d.AccessionNumber for d in found] == ["ACC1003"]


def test_wildcard_and_case_insensitive_name(mwl):
    found, _ = find(mwl.port, query(PatientName="doe^ja*", AccessionNumber=""))
    assert [d.AccessionNumber for d in found] == ["ACC1001"]


def test_non_ascii_query_in_iso_ir_192(app, server):
    orders = parse_orders((EXAMPLES / "orders.json").read_text().replace("MUSTERMANN^MAX", "MÜLLER^JÜRGEN"))
    app.gate.import_orders(orders)
    q = query(PatientName="MÜLLER^JÜRGEN", AccessionNumber="")
    q.SpecificCharacterSet = "ISO_IR 192"
    found, status = find(server.port, q)
    assert status == 0x0000 and [str(d.PatientName) for d in found] == ["MÜLLER^JÜRGEN"]


def test_bad_identifier_gets_a900_and_server_keeps_serving(mwl):
    bad = query(AccessionNumber="")
    bad.ScheduledProcedureStepSequence = [Dataset(), Dataset()]  # only one item is allowed
    found, status = find(mwl.port, bad)
    assert (found, status) == ([], 0xA900)
    assert find(mwl.port, query(AccessionNumber="ACC1003"))[1] == 0x0000


def test_failure_while_answering_gets_c000(app, mwl, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(app.query, "find", broken)
    assert find(mwl.port, query(AccessionNumber=""))[1] == 0xC000


def test_c_cancel_stops_pending_responses(app, server):
    import json

    records = json.loads((EXAMPLES / "orders.json").read_text())
    many = []
    for i in range(300):
        rec = json.loads(json.dumps(records[2]))  # the chest X-ray needs no auth
        rec["accession_number"] = f"C{i:05d}"
        many.append(rec)
    app.gate.import_orders(parse_orders(json.dumps(many)))

    ae = AE(ae_title="DX1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="GATEKEEPER")
    received, final = 0, None
    responses = assoc.send_c_find(query(AccessionNumber=""), ModalityWorklistInformationFind, msg_id=7)
    for status, _ in responses:
        if status.Status == 0xFF00:
            received += 1
            if received == 3:
                assoc.send_c_cancel(7, query_model=ModalityWorklistInformationFind)
        else:
            final = status.Status
    assoc.release()
    assert final == 0xFE00
    assert 3 <= received < 300


def test_unnamed_station_restricted_to_caller_when_set(tmp_path, clock):
    path = write_settings(tmp_path)
    path.write_text(path.read_text().replace("restrict_unnamed_station_to_caller = false",
                                             "restrict_unnamed_station_to_caller = true"))
    app = open_app(load(path, environ={}), clock=clock)
    load_examples(app)
    running = RunningServer(app).start()
    try:
        found, _ = find(running.port, query({"ScheduledStationAETitle": ""}, AccessionNumber=""), calling="DX1")
        assert [d.AccessionNumber for d in found] == ["ACC1003"]
        found, _ = find(running.port, query({"ScheduledStationAETitle": "MR1"}, AccessionNumber=""), calling="DX1")
        assert [d.AccessionNumber for d in found] == ["ACC1001"]
    finally:
        running.stop()
        app.close()


def test_auth_expiring_at_midnight_stops_serving_at_midnight(mwl, clock):
    import datetime as dt

    from worklist.models import OrderRow

    # ACC1001's auth ends 2026-12-20; the order is still open then (say, rescheduled late).
    OrderRow.update(status="in-progress").where(OrderRow.accession_number == "ACC1001").execute()
    clock.now = dt.datetime(2026, 12, 20, 23, 59, 59)
    assert [d.AccessionNumber for d in find(mwl.port, query(AccessionNumber="ACC1001"))[0]] == ["ACC1001"]
    clock.now = dt.datetime(2026, 12, 21, 0, 0, 0)
    assert find(mwl.port, query(AccessionNumber="ACC1001"))[0] == []
