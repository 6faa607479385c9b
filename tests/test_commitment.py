"""Storage commitment (PS3.4 J.3, rule 6 of docs/rules.md): the judgement alone, then the SCP end to end.

Stored instances are made by writing index rows and files directly under the storage
root, so these tests do not depend on the Storage SCP.
"""

from __future__ import annotations

import logging
import queue
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from gateway.app import open_app
from gateway.dicom.commitment import event_information
from gateway.settings import load
from store import commitment
from store.commitment import (
    CLASS_CONFLICT,
    NO_SUCH_OBJECT,
    NOT_DURABLE,
    CommitmentRequest,
    CommitmentRequestError,
    Reference,
    StoredInstance,
)
from store.models import InstanceRow, StudyRow
from tests.conftest import RunningServer, free_port, write_settings

REPORT_WAIT = 10  # seconds; the report normally arrives about half a second after the response

# ---------------------------------------------------------------- the judgement, pure

CT = str(CTImageStorage)
MR = str(MRImageStorage)


def _kept(uid="1.2.3", cls=CT, state="archived", file_present=True):
    return StoredInstance(uid, cls, state, file_present)


@pytest.mark.parametrize("stored, reason", [
    (_kept(), None),
    (_kept(state="held"), None),  # held for review is stored whole: committed
    (None, NO_SUCH_OBJECT),
    (_kept(cls=MR), CLASS_CONFLICT),
    (_kept(file_present=False), NOT_DURABLE),
    (_kept(state="rejected"), NOT_DURABLE),
    (_kept(state="purged"), NOT_DURABLE),
    (_kept(state=None), NOT_DURABLE),  # index row without its study
])
def test_judge(stored, reason):
    failure = commitment.judge(Reference(CT, "1.2.3"), stored)
    assert (failure.reason if failure else None) == reason
    if failure:
        assert "1.2.3" in failure.text


def test_assess_keeps_request_order_and_names_every_instance():
    refs = (Reference(CT, "1"), Reference(CT, "2"), Reference(CT, "3"))
    report = commitment.assess(CommitmentRequest("9.9", refs), {"1": _kept("1"), "3": _kept("3", file_present=False)})
    assert report.transaction_uid == "9.9"
    assert report.committed == (refs[0],)
    assert [(f.reference, f.reason) for f in report.failed] == [(refs[1], NO_SUCH_OBJECT), (refs[2], NOT_DURABLE)]
    assert not report.all_committed
    assert commitment.assess(CommitmentRequest("9.9", refs[:1]), {"1": _kept("1")}).all_committed


@pytest.mark.parametrize("transaction, items, match", [
    (None, [(CT, "1")], "Transaction UID"),
    ("  ", [(CT, "1")], "Transaction UID"),
    ("9.9", [], "empty"),
    ("9.9", [(CT, "1"), (None, "2")], "item 2"),
    ("9.9", [(CT, "")], "item 1"),
])
def test_bad_action_information_is_refused(transaction, items, match):
    with pytest.raises(CommitmentRequestError, match=match):
        commitment.request_from(transaction, items)


def test_request_from_builds_references():
    request = commitment.request_from("9.9", [(CT, "1"), (MR, "2")])
    assert request == CommitmentRequest("9.9", (Reference(CT, "1"), Reference(MR, "2")))


def test_event_information_all_committed_is_event_type_1():
    report = commitment.CommitmentReport("9.9", (Reference(CT, "1"),), ())
    event_type, ds = event_information(report)
    assert event_type == 1
    assert ds.TransactionUID == "9.9"
    assert [i.ReferencedSOPInstanceUID for i in ds.ReferencedSOPSequence] == ["1"]
    assert "FailedSOPSequence" not in ds


def test_event_information_with_failures_is_event_type_2_with_reasons():
    failed = (
        commitment.Failure(Reference(CT, "2"), NO_SUCH_OBJECT, ""),
        commitment.Failure(Reference(MR, "3"), CLASS_CONFLICT, ""),
        commitment.Failure(Reference(CT, "4"), NOT_DURABLE, ""),
    )
    event_type, ds = event_information(commitment.CommitmentReport("9.9", (), failed))
    assert event_type == 2
    assert "ReferencedSOPSequence" not in ds  # 1C: only when something was committed
    assert [(i.ReferencedSOPInstanceUID, i.ReferencedSOPClassUID, i.FailureReason) for i in ds.FailedSOPSequence] == [
        ("2", CT, 0x0112), ("3", MR, 0x0119), ("4", CT, 0x0110)]


# ---------------------------------------------------------------- helpers for the SCU tests


def store_study(app, state: str = "archived", count: int = 2, files: bool = True) -> list[Reference]:
    """Index a study of ``count`` CT instances, with their files under the storage root."""
    now = app.now()
    study = generate_uid()
    series = generate_uid()
    StudyRow.create(study_instance_uid=study, state=state, first_received_at=now, last_received_at=now,
                    state_changed_at=now, instance_count=count)
    refs = []
    for _ in range(count):
        uid = generate_uid()
        relative = f"archive/{study}/{series}/{uid}.dcm"
        if files:
            path = app.settings.storage_root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\0" * 128 + b"DICM")
        InstanceRow.create(sop_instance_uid=uid, study_instance_uid=study, series_instance_uid=series,
                           sop_class_uid=CT, path=relative, size=132, sha256="0" * 64, received_at=now)
        refs.append(Reference(CT, uid))
    return refs


def action_information(refs, transaction: str | None) -> Dataset:
    ds = Dataset()
    if transaction is not None:
        ds.TransactionUID = transaction
    items = []
    for ref in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


def _report_handler(reports: queue.Queue):
    def on_report(event):
        roles = [(cx.as_scu, cx.as_scp) for cx in event.assoc.accepted_contexts
                 if cx.abstract_syntax == StorageCommitmentPushModel]
        reports.put({
            "event_type": event.event_type,
            "info": event.event_information,
            "from": event.assoc.requestor.ae_title if event.assoc.is_acceptor else event.assoc.acceptor.ae_title,
            "roles": roles,
        })
        return 0x0000, None

    return on_report


class Requester:
    """A modality asking for storage commitment; reports on its own association land in ``reports``."""

    def __init__(self, port: int, ae_title: str = "REQ"):
        self.reports: queue.Queue = queue.Queue()
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(StorageCommitmentPushModel)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER",
                                  evt_handlers=[(evt.EVT_N_EVENT_REPORT, _report_handler(self.reports))])
        assert self.assoc.is_established

    def request(self, refs, transaction: str | None = "new", action_type: int = 1,
                instance: str = StorageCommitmentPushModelInstance) -> int:
        transaction = generate_uid() if transaction == "new" else transaction
        status, _ = self.assoc.send_n_action(action_information(refs, transaction), action_type,
                                             StorageCommitmentPushModel, instance)
        self.transaction = transaction
        return status.Status

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


class Listener:
    """The requester's own SCP, where reports on a new association arrive."""

    def __init__(self, ae_title: str = "REQ"):
        self.port = free_port()
        self.reports: queue.Queue = queue.Queue()
        ae = AE(ae_title=ae_title)
        # Accept the gatekeeper proposing the SCP role for storage commitment (PS3.4 J.3.3.1.3).
        ae.add_supported_context(StorageCommitmentPushModel, scu_role=False, scp_role=True)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_N_EVENT_REPORT, _report_handler(self.reports))])


@pytest.fixture
def requester(server):
    req = Requester(server.port)
    yield req
    req.release()


@pytest.fixture
def listener():
    lst = Listener()
    yield lst
    lst.server.shutdown()


@pytest.fixture
def peered_server(tmp_path, clock, listener):
    """A gateway whose settings list the requester REQ under [peers], at the listener's port."""
    path = write_settings(tmp_path, extra=f'\n[peers.REQ]\nhost = "127.0.0.1"\nport = {listener.port}\n')
    app = open_app(load(path, environ={}), clock=clock)
    running = RunningServer(app).start()
    yield running
    running.stop()
    app.close()


def wait_for_log(caplog, text: str) -> logging.LogRecord:
    """The first record containing ``text``, waiting for the reporting thread to write it."""
    deadline = time.monotonic() + REPORT_WAIT
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if text in r.getMessage()]
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError(f"no log line with {text!r} within {REPORT_WAIT} s")


def failures(info: Dataset) -> dict[str, int]:
    return {i.ReferencedSOPInstanceUID: i.FailureReason for i in info.get("FailedSOPSequence", [])}


def committed(info: Dataset) -> list[str]:
    return [i.ReferencedSOPInstanceUID for i in info.get("ReferencedSOPSequence", [])]


# ---------------------------------------------------------------- the SCP, end to end


def test_all_committed_reported_on_the_same_association(server, requester, caplog):
    refs = store_study(server.app, "archived") + store_study(server.app, "held")
    with caplog.at_level(logging.INFO, logger="gateway.dicom.commitment"):
        assert requester.request(refs) == 0x0000
        report = requester.reports.get(timeout=REPORT_WAIT)
        assert "on the same association" in wait_for_log(caplog, "report for transaction").getMessage()
    assert report["event_type"] == 1
    assert report["from"] == "GATEKEEPER"
    assert report["info"].TransactionUID == requester.transaction
    assert committed(report["info"]) == [r.sop_instance_uid for r in refs]
    assert "FailedSOPSequence" not in report["info"]


def test_instances_not_durably_stored_fail_with_their_reason(server, requester):
    good, lost = store_study(server.app, "archived")
    (lost_path,) = [r.path for r in InstanceRow.select().where(InstanceRow.sop_instance_uid == lost.sop_instance_uid)]
    (server.app.settings.storage_root / lost_path).unlink()
    (rejected,) = store_study(server.app, "rejected", count=1)
    unknown = Reference(CT, generate_uid())
    wrong_class = Reference(MR, store_study(server.app, count=1)[0].sop_instance_uid)

    assert requester.request([good, lost, rejected, unknown, wrong_class]) == 0x0000
    report = requester.reports.get(timeout=REPORT_WAIT)
    assert report["event_type"] == 2
    assert committed(report["info"]) == [good.sop_instance_uid]
    assert failures(report["info"]) == {
        lost.sop_instance_uid: 0x0110,
        rejected.sop_instance_uid: 0x0110,
        unknown.sop_instance_uid: 0x0112,
        wrong_class.sop_instance_uid: 0x0119,
    }


def test_report_goes_on_a_new_association_when_the_requester_releases(peered_server, listener, caplog):
    refs = store_study(peered_server.app)
    requester = Requester(peered_server.port)
    with caplog.at_level(logging.INFO, logger="gateway.dicom.commitment"):
        assert requester.request(refs) == 0x0000
        requester.release()  # right after the N-ACTION response, as many modalities do
        report = listener.reports.get(timeout=REPORT_WAIT)
        logged = wait_for_log(caplog, "report for transaction")
    assert report["event_type"] == 1
    assert report["from"] == "GATEKEEPER"  # the same AE title as on the original association
    assert report["roles"] == [(True, False)]  # the listener acts as SCU: the gatekeeper took the SCP role
    assert report["info"].TransactionUID == requester.transaction
    assert committed(report["info"]) == [r.sop_instance_uid for r in refs]
    assert requester.reports.empty()
    assert "on a new association to 127.0.0.1" in logged.getMessage()


def test_same_association_is_preferred_while_it_stays_open(peered_server, listener):
    refs = store_study(peered_server.app, count=1)
    requester = Requester(peered_server.port)
    try:
        assert requester.request(refs) == 0x0000
        report = requester.reports.get(timeout=REPORT_WAIT)
    finally:
        requester.release()
    assert report["info"].TransactionUID == requester.transaction
    assert listener.reports.empty()


def test_requester_not_in_peers_is_warned_about(server, caplog):
    refs = store_study(server.app, count=1)
    requester = Requester(server.port)
    with caplog.at_level(logging.WARNING, logger="gateway.dicom.commitment"):
        assert requester.request(refs) == 0x0000
        requester.release()
        warning = wait_for_log(caplog, "[peers")
    assert warning.levelno == logging.WARNING
    assert "REQ" in warning.getMessage() and "settings.toml" in warning.getMessage()
    assert requester.reports.empty()


@pytest.mark.parametrize("kwargs, status", [
    ({"action_type": 2}, 0x0123),
    ({"instance": "1.2.3.4"}, 0x0112),
    ({"transaction": None}, 0x0115),
])
def test_bad_requests_are_refused(server, requester, kwargs, status):
    refs = store_study(server.app, count=1)
    assert requester.request(refs, **kwargs) == status
    assert requester.assoc.is_established


def test_empty_reference_list_is_refused(server, requester):
    assert requester.request([]) == 0x0115
