"""Modality Worklist C-FIND over a real association, in process."""

import threading
import time
import warnings

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of values longer than their VR allows
        for key, value in top.items():
            setattr(ds, key, value)
    if step is not None:
        item = Dataset()
        for key, value in step.items():
            setattr(item, key, value)
        ds.ScheduledProcedureStepSequence = [item]
    return ds


def find(port: int, identifier: Dataset, calling: str = "MR1", timeout: float | None = None):
    """(list of pending identifiers, final status) of one C-FIND; final is None when the
    server did not answer within ``timeout`` seconds (the association is then aborted).
    Implicit VR only: an explicit VR value longer than 64 KiB would go as UN (PS3.5 7.1.2)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(ModalityWorklistInformationFind, ImplicitVRLittleEndian)
    if timeout is not None:
        ae.acse_timeout = ae.dimse_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    assert assoc.is_established
    pending, final = [], None
    for status, ident in assoc.send_c_find(identifier, ModalityWorklistInformationFind):
        code = status.get("Status")
        if code in (0xFF00, 0xFF01):
            pending.append(ident)
        else:
            final = code
    assoc.release()
    return pending, final


def echo(port: int, timeout: float) -> int | None:
    """The status of one C-ECHO on a new association, None when there was no answer in time."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    if not assoc.is_established:
        return None
    status = assoc.send_c_echo()
    assoc.release()
    return status.get("Status")


def accessions(found) -> list[str]:
    return [d.AccessionNumber for d in found]


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


def test_c_cancel_stops_pending_responses(app, server, monkeypatch):
    import json
    import time

    records = json.loads((EXAMPLES / "orders.json").read_text())
    many = []
    for i in range(300):
        rec = json.loads(json.dumps(records[2]))  # the chest X-ray needs no auth
        rec["accession_number"] = f"C{i:05d}"
        many.append(rec)
    app.gate.import_orders(parse_orders(json.dumps(many)))
    find = app.query.find

    def paced(*args, **kwargs):  # a console's C-CANCEL must find responses still to send
        for response in find(*args, **kwargs):
            time.sleep(0.005)
            yield response

    monkeypatch.setattr(app.query, "find", paced)
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


# --- abuse: a backtracking wild card, the end of time, large identifiers -------------


def test_pathological_wild_card_is_answered_at_once_and_holds_up_no_one(mwl):
    """``***********?#`` (13 bytes) took 41 s as a backtracking regular expression, and a
    C-ECHO on another association waited 30 s (the match held the GIL). Wild cards are
    now matched without backtracking (PS3.4 C.2.2.2.4); the bounds here are generous."""
    identifier = query(AccessionNumber="", RequestedProcedureDescription="***********?#")
    outcome = {}

    def pathological():
        started = time.monotonic()
        outcome["find"] = find(mwl.port, identifier, timeout=60)
        outcome["took"] = time.monotonic() - started

    worker = threading.Thread(target=pathological, daemon=True)
    worker.start()
    started = time.monotonic()
    echoed = echo(mwl.port, timeout=60)
    echo_took = time.monotonic() - started
    worker.join(90)
    assert outcome["find"] == ([], 0x0000)
    assert echoed == 0x0000
    assert outcome["took"] < 10 and echo_took < 10
    found, status = find(mwl.port, query(AccessionNumber="", RequestedProcedureDescription="*BRAIN*?ONTRAS?"))
    assert (accessions(found), status) == (["ACC1001"], 0x0000)


@pytest.fixture
def mwl_with_earlier_order(app, mwl):
    """The examples and a chest X-ray (no auth needed) on the day before them."""
    import json

    record = json.loads((EXAMPLES / "orders.json").read_text())[2]
    record["accession_number"] = "ACC0900"
    record["scheduled"]["start"] = "2026-11-30T15:00:00"
    app.gate.import_orders(parse_orders(json.dumps([record])))
    return mwl


@pytest.mark.parametrize("dates, expected", [
    ("20261201-99991231", ["ACC1001", "ACC1003"]),
    ("20261201", ["ACC1001", "ACC1003"]),
    ("-99991231", ["ACC0900", "ACC1001", "ACC1003"]),
    ("99991231", []),
    ("00010101-", ["ACC0900", "ACC1001", "ACC1003"]),
    ("00010101-99991231", ["ACC0900", "ACC1001", "ACC1003"]),
])
def test_date_ranges_to_the_end_of_time(mwl_with_earlier_order, dates, expected):
    """A range ending 99991231 raised OverflowError (0xC000); it is valid and open ended (PS3.4 C.2.2.2.5.1)."""
    identifier = query({"ScheduledProcedureStepStartDate": dates}, AccessionNumber="")
    found, status = find(mwl_with_earlier_order.port, identifier)
    assert (accessions(found), status) == (expected, 0x0000)


def test_date_and_time_ranges_to_the_end_of_time(mwl):
    found, status = find(mwl.port, query({"ScheduledProcedureStepStartDate": "20261201-99991231",
                                          "ScheduledProcedureStepStartTime": "1000-2359"}, AccessionNumber=""))
    assert (accessions(found), status) == (["ACC1003"], 0x0000)


def rss_mb() -> float:
    """Resident memory of this process (the in-process server's) in MiB."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def large(i: int) -> Dataset:
    """A distinct 1 MB identifier that finds ACC1001 and ACC1003: a universal wild card key."""
    return query(AccessionNumber="", RequestedProcedureDescription="*" * (1_000_000 + i))


@pytest.mark.filterwarnings("ignore:The value length")
def test_large_identifiers_leave_memory_bounded(mwl):
    """150 distinct 1 MB identifiers left RSS 310 MB higher: the response cache was keyed by
    whole identifiers. Keys are digests now, and large identifiers' responses are not kept."""
    import gc

    ae = AE(ae_title="MR1")
    ae.add_requested_context(ModalityWorklistInformationFind, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", mwl.port, ae_title="GATEKEEPER")

    def count(identifier: Dataset) -> list[int]:
        return [s.get("Status") for s, _ in assoc.send_c_find(identifier, ModalityWorklistInformationFind)]

    try:
        for i in range(5):  # the allocator's working set for 1 MB messages
            count(large(i))
        gc.collect()
        before = rss_mb()
        answers = [count(large(i)) for i in range(5, 155)]
        gc.collect()
        grown = rss_mb() - before
    finally:
        assoc.release()
    assert all(a == [0xFF00, 0xFF00, 0x0000] for a in answers)
    assert grown < 60, f"RSS grew {grown:.0f} MiB"


@pytest.mark.filterwarnings("ignore:The value length")
def test_a_polled_identifier_reuses_its_responses(app, mwl, monkeypatch):
    """Consoles poll with the same identifier: its responses are built once per order version."""
    from worklist import query as worklist_query

    built = []
    real = worklist_query.build_response
    monkeypatch.setattr(worklist_query, "build_response", lambda *a, **k: built.append(1) or real(*a, **k))
    console = query({"ScheduledStationAETitle": "MR1", "ScheduledProcedureStepStartDate": "20261201", "Modality": ""},
                    AccessionNumber="", PatientName="", RequestedProcedureComments="")
    first = find(mwl.port, console)
    assert (accessions(first[0]), first[1], len(built)) == (["ACC1001"], 0x0000, 1)
    for _ in range(3):
        again = find(mwl.port, console)
        assert again == first and len(built) == 1
    console.PatientName = "DOE*"  # another identifier: its own responses
    assert accessions(find(mwl.port, console)[0]) == ["ACC1001"] and len(built) == 2
    for _ in range(2):  # a large one is answered in full, and built afresh each time
        assert accessions(find(mwl.port, large(0))[0]) == ["ACC1001", "ACC1003"]
    assert len(built) == 6


def test_response_cache_is_bounded_by_weight_as_well_as_count():
    from worklist.query import _Cache

    cache = _Cache(100, max_bytes=10, weigh=len)
    for i in range(10):
        cache.get(i, lambda: "abc")
    assert (len(cache), cache.bytes) == (3, 9)
    assert cache.get(9, lambda: "other") == "abc"  # a hit is not rebuilt
    assert cache.get("big", lambda: "x" * 11) == "x" * 11  # heavier than the whole cache: not kept
    assert (len(cache), cache.bytes) == (0, 0)
