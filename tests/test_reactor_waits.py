"""Change 8 of gateway/dicom/tuning.py: the association and DUL reactors wait instead of polling.

Two properties: an idle association costs (almost) nothing, as neither loop turns while
nothing happens; and nothing that should move an association on is left waiting. For the
second, the safety net (``tuning.IDLE_WAIT``) is set to a minute: any event that failed to
wake its reactor would stall the exchange for that minute, and the test fails at its
deadline of a few seconds. The peers are plain pynetdicom AEs in this process, acceptor and
requestor both under the change.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.sop_class import CTImageStorage, Verification

from gateway.dicom import tuning
from tests.conftest import free_port
from tests.peers import wait_for

#: Far longer than any deadline below: a missed wake-up cannot hide behind the safety net.
NO_NET = 60.0
#: How long an exchange may take here before it counts as stalled (seconds).
DEADLINE = 10.0


@pytest.fixture
def no_safety_net(monkeypatch):
    tuning.apply()
    monkeypatch.setattr(tuning, "IDLE_WAIT", NO_NET)


@pytest.fixture
def scp():
    """Start a Verification and CT storage SCP on loopback: ``scp(handlers=..., network_timeout=...)``."""
    servers = []

    def start(handlers=(), network_timeout: float | None = 60):
        tuning.apply()
        ae = AE("REACTOR")
        ae.add_supported_context(Verification)
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        ae.network_timeout = network_timeout
        port = free_port()
        server = ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, lambda event: 0x0000), *handlers])
        servers.append(server)
        return server, port

    yield start
    for server in servers:
        if server in server.ae._servers:  # not shut down by the test itself
            server.shutdown()


def requestor():
    ae = AE("MODALITY")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = DEADLINE
    ae.network_timeout = NO_NET  # never what ends an association here
    return ae


def ct(study: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.PatientID = "MRN-REACTOR"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def within(what: str, action):
    """Run ``action``; fail if it took the safety net's time rather than a moment."""
    started = time.monotonic()
    result = action()
    assert time.monotonic() - started < DEADLINE, f"{what} stalled: a reactor was not woken"
    return result


def no_associations(server):
    return wait_for(lambda: not server.active_associations, DEADLINE, "the server's associations to end", 0.05)


def test_echoes_stores_and_a_release_never_wait_for_the_safety_net(scp, no_safety_net):
    server, port = scp()
    assoc = within("associating", lambda: requestor().associate("127.0.0.1", port, ae_title="REACTOR"))
    assert assoc.is_established
    for _ in range(20):
        assert within("a C-ECHO", lambda: assoc.send_c_echo()).Status == 0x0000
    study = generate_uid()
    for _ in range(5):
        assert within("a C-STORE", lambda: assoc.send_c_store(ct(study))).Status == 0x0000
    within("the release", assoc.release)
    assert assoc.is_released
    within("the server's side ending", lambda: no_associations(server))


def test_an_abort_by_either_side_ends_both_at_once(scp, no_safety_net):
    def abort_on_echo(event):
        threading.Thread(target=event.assoc.abort).start()  # from another thread than the reactor's
        return 0x0000

    server, port = scp()
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    within("the requestor's abort", assoc.abort)
    assert assoc.is_aborted
    within("the server's side ending", lambda: no_associations(server))

    server, port = scp(handlers=[(evt.EVT_C_ECHO, abort_on_echo)])
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assoc.send_c_echo()
    within("the requestor seeing the server's abort",
           lambda: wait_for(lambda: assoc.is_aborted, DEADLINE, "the abort to arrive", 0.05))
    within("the server's side ending", lambda: no_associations(server))


def test_a_peer_that_drops_the_connection_ends_the_association(scp, no_safety_net):
    server, port = scp()
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.is_established
    assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)  # no A-RELEASE, no A-ABORT: the TCP connection ends
    within("the server's side ending", lambda: no_associations(server))
    within("the requestor's side ending",
           lambda: wait_for(lambda: not assoc.is_alive(), DEADLINE, "the requestor's thread to end", 0.05))


def test_the_network_idle_timer_still_ends_a_silent_association(scp, no_safety_net):
    server, port = scp(network_timeout=0.5)
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.is_established
    within("the idle timer", lambda: no_associations(server))
    wait_for(lambda: assoc.is_aborted, DEADLINE, "the requestor to see the abort", 0.05)


def test_a_connection_that_never_associates_is_dropped_by_artim(scp, no_safety_net):
    server, port = scp()
    server.ae.acse_timeout = 0.5  # ARTIM's period for a new connection
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as silent:
        started = time.monotonic()
        assert silent.recv(1) == b"", "the server should close a connection that sends nothing"
        assert time.monotonic() - started < DEADLINE


def test_an_association_left_open_by_a_server_shutdown_still_ends_at_once(scp, no_safety_net):
    # pynetdicom's shutdown stops accepting and leaves open associations to their peers
    server, port = scp()
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.is_established
    open_ones = list(server.active_associations)
    within("the shutdown", server.shutdown)
    assert within("a C-ECHO after the shutdown", assoc.send_c_echo).Status == 0x0000
    within("the release", assoc.release)
    assert assoc.is_released
    for served in open_ones:
        within("the server's side ending", lambda: served.join(DEADLINE))
        assert not served.is_alive()


def test_an_idle_association_does_not_turn_its_loops(scp, monkeypatch):
    looks = {"dimse": 0, "dul": 0}
    original_get_msg = DIMSEServiceProvider.get_msg
    original_wait = tuning._wait_for_dul_work

    def counted_get_msg(self, block=False):
        looks["dimse"] += 1
        return original_get_msg(self, block)

    def counted_wait(dul):
        looks["dul"] += 1
        return original_wait(dul)

    server, port = scp()
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    assert assoc.send_c_echo().Status == 0x0000
    monkeypatch.setattr(DIMSEServiceProvider, "get_msg", counted_get_msg)
    monkeypatch.setattr(tuning, "_wait_for_dul_work", counted_wait)
    time.sleep(1.2)
    monkeypatch.undo()
    tuning.apply()
    # two associations (the server's and the requestor's), each with a DUL loop and an
    # association loop; pynetdicom's own turn a thousand times a second each
    budget = 4 * (1.2 / tuning.IDLE_WAIT + 2)
    assert looks["dimse"] <= budget and looks["dul"] <= budget, looks
    assert assoc.send_c_echo().Status == 0x0000, "the association should still work after its idle time"
    assoc.release()


def test_a_requestor_pausing_the_reactor_is_not_robbed_of_its_response(scp, no_safety_net):
    # send_c_echo pauses the association's reactor and reads the response itself; with the
    # reactor woken by the response's arrival, it must still leave the response to it
    server, port = scp()
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    for _ in range(1000):
        status = assoc.send_c_echo()
        assert status and status.Status == 0x0000
    assoc.release()


def test_a_requestor_that_received_an_event_report_releases_at_once(no_safety_net):
    # pynetdicom serves an N-EVENT-REPORT to a requestor on a thread of its own; the release
    # after it waits for the requestor's reactor to be paused (a storage commitment report, then
    # the modality releases)
    from pynetdicom.sop_class import StorageCommitmentPushModel

    reported = threading.Event()
    info = Dataset()
    info.TransactionUID = generate_uid()
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = CTImageStorage, generate_uid()
    info.ReferencedSOPSequence = [item]

    answered = threading.Event()

    def on_action(event):
        def report():
            answered.wait(DEADLINE)  # after the N-ACTION response has arrived, as a commitment SCP does
            event.assoc.send_n_event_report(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        threading.Thread(target=report).start()
        return 0x0000, None

    def on_report(event):
        reported.set()
        return 0x0000, None

    tuning.apply()
    ae = AE("REACTOR")
    ae.add_supported_context(StorageCommitmentPushModel)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_ACTION, on_action)])
    try:
        modality = AE("MODALITY")
        modality.add_requested_context(StorageCommitmentPushModel)
        assoc = modality.associate("127.0.0.1", port, ae_title="REACTOR", evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)])
        status, _ = assoc.send_n_action(info, 1, StorageCommitmentPushModel, "1.2.840.10008.1.20.1.1")
        assert status.Status == 0x0000
        answered.set()
        assert reported.wait(DEADLINE)
        time.sleep(0.1)  # the report's thread has ended
        within("the release after a report", assoc.release)
        assert assoc.is_released
    finally:
        server.shutdown()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the DUL thread's, on purpose
def test_a_dul_thread_that_dies_of_an_exception_ends_its_association(scp, no_safety_net):
    # the DUL thread ends with an exception out of the state machine (pynetdicom lets it
    # propagate: seen when an abort from another thread races a response); its association
    # must not wait for it
    def break_the_dul(event):
        machine = event.assoc.dul.state_machine

        def broken(name):
            raise RuntimeError(f"{name}: a state machine that fails")

        machine.do_action = broken  # the response to this C-ECHO is the next event
        return 0x0000

    server, port = scp(handlers=[(evt.EVT_C_ECHO, break_the_dul)])
    assoc = requestor().associate("127.0.0.1", port, ae_title="REACTOR")
    open_ones = list(server.active_associations)
    assoc.send_c_echo()
    for served in open_ones:
        within("the server's side ending", lambda: served.join(DEADLINE))
        assert not served.is_alive() and not served.dul.is_alive()
    assoc.abort()
