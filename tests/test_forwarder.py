"""The sender (gateway/dicom/forwarder.py) in process against pynetdicom peers on loopback:
a storage commitment report on the same association, a report on a new association to the
gatekeeper's own port (SCP/SCU role selection), a refused instance, a refused association."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import StorageCommitmentPushModel, StorageCommitmentPushModelInstance, Verification

from gateway.app import open_app
from gateway.dicom import forwarder
from gateway.settings import load
from store.models import ForwardRow
from tests.conftest import Clock, RunningServer, free_port, write_settings
from tests.dicom_factory import make_instance, make_order, write_instance
from tests.peers import wait_for
from tests.test_store_service import auth

STUDY = "1.2.826.0.1.3680043.8.498.3001"


class Peer:
    """A Storage and Storage Commitment SCP; ``status`` answers each C-STORE; the commitment
    report goes ``on`` the "same" association, or "none"."""

    def __init__(self, *, status: int = 0x0000, on: str = "same", ae_title: str = "PEER") -> None:
        self.port = free_port()
        self.status = status
        self.on = on
        self.stored: list[str] = []
        self.report_status: list[int] = []
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(StorageCommitmentPushModel)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_N_ACTION, self._action)])

    def _store(self, event):
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return self.status

    def _action(self, event):
        info = event.action_information
        if self.on == "same":
            threading.Thread(target=self._report, args=(event.assoc, info), daemon=True).start()
        return 0x0000, None

    def _report(self, assoc, info):
        time.sleep(0.1)  # after the N-ACTION response has gone
        result = Dataset()
        result.TransactionUID = info.TransactionUID
        result.ReferencedSOPSequence = info.ReferencedSOPSequence
        status, _ = assoc.send_n_event_report(result, 1, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
        self.report_status.append(status.Status)

    def stop(self):
        self.server.shutdown()


def app_for(tmp_path, peer_port: int, *, commitment: bool = True, peer_ae: str = "PEER"):
    extra = (f'\n[forward.PEER]\nae_title = "{peer_ae}"\nhost = "127.0.0.1"\nport = {peer_port}\n'
             f'storage_commitment = {"true" if commitment else "false"}\n')
    app = open_app(load(write_settings(tmp_path, extra=extra), environ={}), clock=Clock(dt.datetime(2026, 11, 30, 8)))
    app.gate.import_orders([make_order(study_instance_uid=STUDY)])
    app.gate.import_auths([auth()])
    app.store.outbox.quiet_seconds = 0
    return app


def receive(app, tmp_path, count=2):
    sops = []
    for n in range(count):
        ds = make_instance(StudyInstanceUID=STUDY)
        got = app.store.receive(write_instance(tmp_path / f"{n}-{ds.SOPInstanceUID}.dcm", ds), "MR1")
        sops.append(got.sop_instance_uid)
    return sops


def queue_states(app) -> dict[str, str]:
    return {r.sop_instance_uid: r.state for r in ForwardRow.select()}


@pytest.fixture
def running(tmp_path):
    made = []

    def make(peer: Peer, **kwargs):
        app = app_for(tmp_path, peer.port, **kwargs)
        sender = forwarder.Forwarder(app, poll_seconds=0.1)
        made.append((app, sender, peer))
        return app, sender

    yield make
    for app, sender, peer in made:
        sender.stop()
        peer.stop()
        app.close()


def test_a_report_on_the_same_association_commits_the_instances(running, tmp_path, caplog):
    peer = Peer(on="same")
    app, sender = running(peer)
    sops = receive(app, tmp_path)
    with caplog.at_level("INFO", logger="gateway.dicom.forwarder"):
        sender.start()
        wait_for(lambda: set(queue_states(app).values()) == {"committed"}, 20, "both committed")
    assert sorted(peer.stored) == sorted(sops) and peer.report_status == [0x0000]
    assert any("storage commitment report from PEER" in r.getMessage() and "2 instances committed" in r.getMessage()
               for r in caplog.records)


def test_a_report_on_a_new_association_reaches_the_server_with_the_scp_role(tmp_path):
    peer = Peer(on="none")
    app = app_for(tmp_path, peer.port)
    sops = receive(app, tmp_path)  # queued before the sender starts: one association
    server = RunningServer(app).start()  # the server starts the sender too
    try:
        wait_for(lambda: set(queue_states(app).values()) == {"sent"} and
                 ForwardRow.select().where(ForwardRow.transaction_uid.is_null(False)).count() == 2, 20,
                 "both sent with a commitment request")
        transaction = ForwardRow.select().first().transaction_uid
        # the PACS calls back later, as SCP of Storage Commitment (role selection)
        pacs = AE(ae_title="PEER")
        pacs.add_requested_context(StorageCommitmentPushModel)
        assoc = pacs.associate("127.0.0.1", server.port, ae_title="GATEKEEPER",
                               ext_neg=[build_role(StorageCommitmentPushModel, scu_role=False, scp_role=True)])
        assert assoc.is_established
        [context] = assoc.accepted_contexts
        assert (context.as_scu, context.as_scp) == (False, True)  # the PACS reports as SCP
        result = Dataset()
        result.TransactionUID = transaction
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", sops[0]
        failed = Dataset()
        failed.ReferencedSOPClassUID, failed.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", sops[1]
        failed.FailureReason = 0x0110
        result.ReferencedSOPSequence, result.FailedSOPSequence = [item], [failed]
        status, _ = assoc.send_n_event_report(result, 2, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
        assert status.Status == 0x0000
        nothing = Dataset()
        nothing.ReferencedSOPSequence = [item]
        status, _ = assoc.send_n_event_report(nothing, 1, StorageCommitmentPushModel,
                                              StorageCommitmentPushModelInstance)
        assert status.Status == 0x0115  # no Transaction UID
        assoc.release()
        assert queue_states(app) == {sops[0]: "committed", sops[1]: "failed"}
        assert ForwardRow.get(ForwardRow.sop_instance_uid == sops[1]).last_status == 0x0110
    finally:
        server.stop()
        peer.stop()
        app.close()


def test_a_refused_instance_waits_with_its_status_and_the_destination_rests(running, tmp_path):
    peer = Peer(status=0xA700)
    app, sender = running(peer, commitment=False)
    receive(app, tmp_path, count=1)
    sender.start()
    wait_for(lambda: ForwardRow.select().where(ForwardRow.attempts == 1).count() == 1, 20, "one failed attempt")
    row = ForwardRow.get()
    assert (row.state, row.last_status) == ("pending", 0xA700)
    assert "refused the instance with status 0xA700" in row.last_error
    assert row.next_attempt_at > app.store.outbox.clock()


def test_a_refused_association_is_an_attempt_naming_the_destination(running, tmp_path):
    peer = Peer()
    app, sender = running(peer, commitment=False, peer_ae="WRONGAE")  # the peer requires its own called AE
    receive(app, tmp_path, count=1)
    sender.start()
    wait_for(lambda: ForwardRow.select().where(ForwardRow.attempts == 1).count() == 1, 20, "one failed attempt")
    row = ForwardRow.get()
    assert row.state == "pending" and row.last_status is None
    assert row.last_error.startswith(f"PEER (WRONGAE at 127.0.0.1:{peer.port}) rejected the association")
    assert peer.stored == [] and "PEER" in sender._rest_list()


def test_stopping_mid_study_gives_the_rest_back_to_the_queue(running, tmp_path):
    peer = Peer()
    app, sender = running(peer, commitment=False)
    receive(app, tmp_path, count=30)
    slow = peer._store

    def store_slowly(event):
        time.sleep(0.05)
        return slow(event)

    peer._store = store_slowly
    peer.server.unbind(evt.EVT_C_STORE, slow)
    peer.server.bind(evt.EVT_C_STORE, store_slowly)
    sender.start()
    wait_for(lambda: len(peer.stored) >= 3, 20, "sending under way", interval=0.02)
    started = time.monotonic()
    sender.stop()
    assert time.monotonic() - started < 5
    rows = list(ForwardRow.select())
    sent = {r.sop_instance_uid for r in rows if r.state == "sent"}
    assert 3 <= len(sent) < 30 and sent <= set(peer.stored)
    assert all(r.claim is None for r in rows if r.state == "pending")  # free for the next start at once
    assert app.store.outbox.claim() is not None
