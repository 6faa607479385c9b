"""Change 7 of gateway/dicom/tuning.py: pending C-FIND responses sent in batches.

What a console receives must be what pynetdicom sends on its own, PDU for PDU; a C-CANCEL
between responses still stops the query; the peer's maximum PDU length is kept; a peer that
goes away or stops reading mid-answer ends the answer without hanging or harming the server.
"""

from __future__ import annotations

import threading
from io import BytesIO

import pytest
from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.dimse_primitives import C_FIND
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from gateway.dicom import tuning, worklist
from tests.conftest import free_port
from tests.peers import wait_for

PENDING, CANCEL, SUCCESS = 0xFF00, 0xFE00, 0x0000


def item(i: int, size: int = 200) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber = f"ACC{i:06d}"
    ds.PatientName = f"DOE^PATIENT{i}"
    ds.PatientID = f"MRN{i}"
    ds.RequestedProcedureDescription = ("X" * size)[:size]
    step = Dataset()
    step.ScheduledStationAETitle = "MR1"
    step.ScheduledProcedureStepStartDate = "20261201"
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def responses(count: int, sizes=(200, 1_000, 20_000, 5, 70_000)) -> list[Dataset]:
    """Registered responses of varied sizes, some larger than one PDU, one larger than a batch."""
    return [tuning.encoded_once(item(i, sizes[i % len(sizes)])) for i in range(count)]


class Query:
    """A stand-in for worklist.query.WorklistQuery: yields ``answers``; counts what was taken.

    With ``hold_after``, the answer waits after that many responses until ``release`` is set
    (the console's C-CANCEL, say, has arrived meanwhile).
    """

    def __init__(self, answers, hold_after: int | None = None, until=None) -> None:
        self.answers = answers
        self.hold_after = hold_after
        self.until = until
        self.held = threading.Event()
        self.release = threading.Event()
        self.taken = 0
        self.ended = threading.Event()

    def find(self, identifier, calling):
        try:
            for i, answer in enumerate(self.answers):
                if i == self.hold_after:
                    self.held.set()
                    self.release.wait(10)
                    if self.until is not None:
                        wait_for(self.until, 10, "the condition the held answer waits for", interval=0.01)
                self.taken += 1
                yield answer
        finally:
            self.ended.set()


@pytest.fixture
def scp():
    """Start SCPs answering with worklist.on_find over a stand-in query; all stopped at the end."""
    started = []

    def start(query: Query, *, watched: bool = False, network_timeout: float | None = None):
        tuning.apply()
        ae = AE(ae_title="GATEKEEPER")
        ae.add_supported_context(ModalityWorklistInformationFind)
        ae.add_supported_context(Verification)
        if network_timeout is not None:
            ae.network_timeout = network_timeout
        handlers = [(evt.EVT_C_FIND, worklist.on_find, [query]), (evt.EVT_CONN_OPEN, tuning.no_delay)]
        if watched:  # a handler of our own on EVT_DIMSE_SENT: pynetdicom sends as it always did
            handlers.append((evt.EVT_DIMSE_SENT, lambda event: None))
        port = free_port()
        server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        started.append(server)
        return port

    yield start
    for server in started:
        server.shutdown()


def identifier() -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = ""
    ds.PatientName = ""
    return ds


def associate(port: int, max_pdu: int = 16382, handlers=()):
    ae = AE(ae_title="MR1")
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(Verification)
    ae.maximum_pdu_size = max_pdu
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER", max_pdu=max_pdu, evt_handlers=list(handlers))
    assert assoc.is_established
    return assoc


def received_pdus(port: int, max_pdu: int = 16382) -> tuple[list[bytes], list]:
    """Every P-DATA-TF PDU the console received for one query (re-encoded), and the answers."""
    pdus = []

    def on_pdu(event):
        if isinstance(event.pdu, P_DATA_TF):
            pdus.append(event.pdu.encode())

    assoc = associate(port, max_pdu, [(evt.EVT_PDU_RECV, on_pdu)])
    answers = [(status.Status, ds) for status, ds in assoc.send_c_find(identifier(), ModalityWorklistInformationFind)]
    assoc.release()
    return pdus, answers


@pytest.mark.parametrize("max_pdu", [16382, 1024, 257, 0])
def test_a_console_receives_the_same_pdus_as_from_pynetdicom_alone(scp, max_pdu):
    answers = responses(40)
    batched = scp(Query(answers))
    plain = scp(Query(answers), watched=True)
    ours, ours_answers = received_pdus(batched, max_pdu)
    theirs, theirs_answers = received_pdus(plain, max_pdu)
    assert ours == theirs
    assert [s for s, _ in ours_answers] == [PENDING] * 40 + [SUCCESS]
    assert [ds for _, ds in ours_answers[:-1]] == answers
    if max_pdu:  # the peer's maximum PDU length (PS3.8 D.1: the PDU's variable field)
        assert max(len(pdu) - 6 for pdu in ours) <= max_pdu
        assert any(len(pdu) - 6 == max_pdu for pdu in ours), "no response was split at the peer's maximum"


def test_the_framing_is_pynetdicoms_for_every_size_and_pending_status():
    class Assoc:
        def get_handlers(self, event):
            return []

    class Dimse:
        assoc = Assoc()
        maximum_pdu_size = 0

    for max_pdu in (0, 7, 8, 100, 16382):
        for status in (0xFF00, 0xFF01):
            for size in (1, 93, 94, 95, 5000):
                dimse = Dimse()
                dimse.maximum_pdu_size = max_pdu
                rsp = C_FIND()
                rsp.MessageIDBeingRespondedTo = 7
                rsp.AffectedSOPClassUID = ModalityWorklistInformationFind
                rsp.Status = status
                rsp.Identifier = BytesIO(b"\x08\x00\x50\x00" + bytes(size))
                message = C_FIND_RSP()
                message.primitive_to_message(rsp)
                expected = b"".join(P_DATA_TF(p).encode() for p in message.encode_msg(3, max_pdu))
                assert b"".join(tuning._pending_find_pdus(dimse, rsp, 3)) == expected, (max_pdu, status, size)


def test_only_pending_responses_nobody_watches_are_batched():
    class Assoc:
        bound: dict = {}

        def get_handlers(self, event):
            return self.bound.get(event, [])

    class Dimse:
        assoc = Assoc()
        maximum_pdu_size = 16382

    def rsp(status=PENDING, identifier=b"\x08\x00\x50\x00\x00\x00\x00\x00"):
        primitive = C_FIND()
        primitive.MessageIDBeingRespondedTo = 1
        primitive.AffectedSOPClassUID = ModalityWorklistInformationFind
        primitive.Status = status
        primitive.Identifier = BytesIO(identifier) if identifier is not None else None
        return primitive

    assert tuning._pending_find_pdus(Dimse(), rsp(), 1) is not None
    assert tuning._pending_find_pdus(Dimse(), rsp(0xFF01), 1) is not None
    for final in (SUCCESS, CANCEL, 0xA900, 0xC000, 0xB000):
        assert tuning._pending_find_pdus(Dimse(), rsp(final, None), 1) is None
    assert tuning._pending_find_pdus(Dimse(), rsp(identifier=None), 1) is None
    assert tuning._pending_find_pdus(Dimse(), rsp(identifier=b""), 1) is None
    request = rsp()
    request.MessageIDBeingRespondedTo = None  # a C-FIND-RQ
    request.MessageID = 1
    assert tuning._pending_find_pdus(Dimse(), request, 1) is None
    Assoc.bound = {evt.EVT_DATA_SENT: [(lambda e: None, None)]}
    assert tuning._pending_find_pdus(Dimse(), rsp(), 1) is None
    Assoc.bound = {evt.EVT_PDU_SENT: [(lambda e: None, None)]}
    assert tuning._pending_find_pdus(Dimse(), rsp(), 1) is None
    from pynetdicom import _handlers
    Assoc.bound = {evt.EVT_PDU_SENT: [(_handlers.standard_pdu_sent_handler, None)],
                   evt.EVT_DIMSE_SENT: [(_handlers.standard_dimse_sent_handler, None)]}
    assert tuning._pending_find_pdus(Dimse(), rsp(), 1) is not None


def test_pynetdicoms_debug_log_sees_every_response(scp, caplog):
    import logging

    port = scp(Query(responses(3)))
    with caplog.at_level(logging.DEBUG, logger="pynetdicom"):
        pdus, answers = received_pdus(port)
    assert [s for s, _ in answers] == [PENDING] * 3 + [SUCCESS]
    outgoing = [r for r in caplog.records if "OUTGOING DIMSE MESSAGE" in r.getMessage()]
    assert len(outgoing) == 1 + 4  # the console's C-FIND-RQ; the server's four responses, each logged


def test_a_cancel_between_responses_stops_the_answer(scp):
    answers = responses(5, sizes=(1_000,)) * 200  # 1,000 responses, a batch every ~60
    served = {}

    def cancel_seen():
        return bool(served["assoc"].dimse.cancel_req)

    query = Query(answers, hold_after=300, until=cancel_seen)
    original = query.find

    def find(identifier, calling):
        served["assoc"] = threading.current_thread()  # the association's own thread runs the handler
        return original(identifier, calling)

    query.find = find
    port = scp(query)
    assoc = associate(port)
    statuses = []
    for status, _ in assoc.send_c_find(identifier(), ModalityWorklistInformationFind, msg_id=9):
        statuses.append(status.Status)
        if len(statuses) == 1:  # mid-answer: the first batch is here, the rest is held back
            assert query.held.wait(10)
            assoc.send_c_cancel(9, assoc.accepted_contexts[0].context_id)
            query.release.set()
    assoc.release()
    assert statuses == [PENDING] * 300 + [CANCEL], "every response taken before the cancel, then Cancel"
    assert query.taken == 301


def test_a_console_that_goes_away_mid_answer_ends_it_and_the_server_goes_on(scp):
    answers = responses(5, sizes=(1_000,)) * 4_000  # 20,000 responses, about 20 MB
    query = Query(answers)
    port = scp(query)
    assoc = associate(port)
    for status, _ in assoc.send_c_find(identifier(), ModalityWorklistInformationFind):
        assoc.abort()
        break
    assert query.ended.wait(30), "the answer went on after the console left"
    assert query.taken < len(answers)
    follow = associate(port)
    assert follow.send_c_echo().Status == SUCCESS
    follow.release()


def test_a_console_that_stops_reading_is_dropped_after_the_network_timeout(scp):
    answers = responses(5, sizes=(4_000,)) * 2_000  # 10,000 responses, 40 MB: far more than socket buffers hold
    query = Query(answers)
    port = scp(query, network_timeout=1)
    stuck = threading.Event()

    def stop_reading(event):  # the console's DUL thread stops reading
        if isinstance(event.pdu, P_DATA_TF):
            stuck.wait(30)

    assoc = associate(port, handlers=[(evt.EVT_PDU_RECV, stop_reading)])
    found = assoc.send_c_find(identifier(), ModalityWorklistInformationFind)
    thread = threading.Thread(target=lambda: next(found, None), daemon=True)
    thread.start()
    try:
        assert query.ended.wait(30), "the server kept waiting on a console that reads nothing"
        assert query.taken < len(answers)
        follow = associate(port)
        assert follow.send_c_echo().Status == SUCCESS
        follow.release()
    finally:
        stuck.set()
        assoc.abort()
        thread.join(5)  # the console's own wait for a response may run out later: a daemon thread
