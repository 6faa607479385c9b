"""The access rules against a running `gatekeeper serve`: unknown and known AEs per service
and per `server.unknown_aets` mode, a known AE from the wrong address, a host given as a
name, a wrong called AE, a faked station's MPPS, and the log line and audit event of each
refusal. (TLS: tests/test_tls_serve.py.)"""

from __future__ import annotations

import json
import sqlite3

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (
    MRImageStorage, ModalityPerformedProcedureStep, ModalityWorklistInformationFind, StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance, Verification,
)

from tests.conftest import EXAMPLES, EXAMPLES_NOW
from tests.dicom_factory import make_instance
from tests.e2e import Gateway
from tests.test_mpps import completion, creation

#: Known modalities of every test gateway, besides the shipped CT1, MR1, DX1, US1, MG1.
MODALITIES = """
[modalities.E2E]
services = ["echo"]
[modalities.HOSTED]
host = "10.9.9.9"
[modalities.NAMED]
host = "localhost"
[modalities.LIMITED]
services = ["echo", "store"]
[modalities.NOTHING]
services = []
[modalities.WLONLY]
services = ["worklist"]
[modalities.CT2]
"""
SERVICES = ("echo", "worklist", "mpps", "store", "commitment")


def start(folder, mode):
    folder.mkdir()
    gw = Gateway(folder, extra_settings=MODALITIES, env=EXAMPLES_NOW, unknown_aets=mode)
    text = gw.settings.read_text().replace("any_station_aets = []", 'any_station_aets = ["CT2"]')
    gw.settings.write_text(text)
    gw.cli("orders", "import", str(EXAMPLES / "orders.json"))
    gw.cli("auths", "import", str(EXAMPLES / "auths.json"))
    return gw.start()


@pytest.fixture(scope="module")
def gateways(tmp_path_factory):
    """One `serve` per mode of server.unknown_aets, each with the examples and MODALITIES."""
    root = tmp_path_factory.mktemp("access")
    running = {}
    try:
        for mode in ("allow", "echo-and-store", "refuse"):
            running[mode] = start(root / mode, mode)
        yield running
    finally:
        for gw in running.values():
            assert gw.stop() == 0, gw.log()


def associate(gw, calling, called="GATEKEEPER"):
    ae = AE(ae_title=calling)
    for context in (Verification, ModalityWorklistInformationFind, ModalityPerformedProcedureStep, MRImageStorage,
                    StorageCommitmentPushModel):
        ae.add_requested_context(context)
    ae.acse_timeout = ae.network_timeout = 10
    return ae.associate("127.0.0.1", gw.port, ae_title=called)


def rejection(assoc):
    primitive = assoc.acceptor.primitive
    return primitive.result, primitive.result_source, primitive.diagnostic


def use(assoc, service: str) -> int:
    """Use one service on an established association; the (final) status."""
    if service == "echo":
        return assoc.send_c_echo().Status
    if service == "worklist":
        query = Dataset()
        query.AccessionNumber = ""
        query.ScheduledProcedureStepSequence = [Dataset()]
        return [status.Status for status, _ in assoc.send_c_find(query, ModalityWorklistInformationFind)][-1]
    if service == "mpps":
        return assoc.send_n_create(creation("NO-SUCH-ORDER"), ModalityPerformedProcedureStep, generate_uid())[0].Status
    if service == "store":
        return assoc.send_c_store(make_instance(AccessionNumber="NO-SUCH-ORDER")).Status
    if service == "commitment":
        info = Dataset()
        info.TransactionUID = generate_uid()
        ref = Dataset()
        ref.ReferencedSOPClassUID = MRImageStorage
        ref.ReferencedSOPInstanceUID = generate_uid()
        info.ReferencedSOPSequence = [ref]
        return assoc.send_n_action(info, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)[0].Status
    raise AssertionError(service)


def audit_events(gw, action):
    with sqlite3.connect(gw.folder / "var" / "gatekeeper.db") as db:
        rows = db.execute("SELECT user, subject, reason, detail FROM audit_log WHERE action = ?", (action,)).fetchall()
    return [(user, subject, reason, json.loads(detail)) for user, subject, reason, detail in rows]


EXPECTED = {"allow": set(SERVICES), "echo-and-store": {"echo", "store"}, "refuse": set()}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_unknown_ae_per_service_per_mode(gateways, mode):
    gw = gateways[mode]
    assoc = associate(gw, "STRANGER")
    if mode == "refuse":
        assert assoc.is_rejected and rejection(assoc) == (1, 1, 3)  # permanent, service user, calling AE
        assert "refused by server.unknown_aets" not in gw.log()  # the association line says it instead
        assert gw.logged("calling 'STRANGER' from 127.0.0.1: calling AE 'STRANGER' is not under [modalities]")
        return
    assert assoc.is_established
    try:
        statuses = {service: use(assoc, service) for service in SERVICES}
    finally:
        assoc.release()
    for service, status in statuses.items():
        assert status == (0x0000 if service in EXPECTED[mode] else 0x0124), (service, hex(status))
    if mode == "echo-and-store":
        assert gw.logged("C-FIND refused (0x0124): calling 'STRANGER' from 127.0.0.1, service worklist: refused by "
                         "server.unknown_aets")


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_known_ae_may_use_every_service_in_every_mode(gateways, mode):
    assoc = associate(gateways[mode], "CT1")
    assert assoc.is_established
    try:
        assert {service: use(assoc, service) for service in SERVICES} == {service: 0 for service in SERVICES}
    finally:
        assoc.release()


def test_known_ae_from_the_wrong_address_is_rejected(gateways):
    gw = gateways["allow"]  # even where any unknown AE is welcome
    assoc = associate(gw, "HOSTED")
    assert assoc.is_rejected and rejection(assoc) == (1, 1, 3)
    assert gw.logged("calling AE 'HOSTED' called from 127.0.0.1, but modalities.HOSTED.host is '10.9.9.9' "
           "(modalities.host)")
    [event] = [e for e in audit_events(gw, "association.refused") if e[0] == "HOSTED"]
    assert event[3] == {"address": "127.0.0.1", "called_ae": "GATEKEEPER", "rule": "modalities.host", "service": ""}


def test_host_given_as_a_name_resolving_to_the_address(gateways):
    assoc = associate(gateways["refuse"], "NAMED")  # host = "localhost"
    assert assoc.is_established
    assert use(assoc, "worklist") == 0
    assoc.release()


def test_services_list_limits_a_known_ae(gateways):
    gw = gateways["allow"]
    assoc = associate(gw, "LIMITED")
    assert assoc.is_established
    try:
        assert {s: use(assoc, s) for s in SERVICES} == {"echo": 0, "worklist": 0x0124, "mpps": 0x0124, "store": 0,
                                                        "commitment": 0x0124}
    finally:
        assoc.release()
    assert gw.logged("refused by modalities.services: modalities.LIMITED.services does not grant worklist")
    for operation in ("C-FIND", "N-CREATE", "N-ACTION"):
        assert gw.logged(f"{operation} refused (0x0124): calling 'LIMITED'")
    # one audit event per address and rule a minute: the first refusal
    refused = [e[3]["service"] for e in audit_events(gw, "operation.refused") if e[0] == "LIMITED"]
    assert refused == ["worklist"]


def test_echo_and_store_refused_to_a_modality_without_them(gateways):
    gw = gateways["allow"]
    assoc = associate(gw, "WLONLY")
    assert assoc.is_established
    try:
        assert {s: use(assoc, s) for s in SERVICES} == {"echo": 0x0124, "worklist": 0, "mpps": 0x0124,
                                                        "store": 0x0124, "commitment": 0x0124}
    finally:
        assoc.release()
    assert gw.logged("C-STORE refused (0x0124): calling 'WLONLY'")
    assert "C-STORE from WLONLY" not in gw.log()  # the storage handler never ran: nothing filed


def test_empty_services_list_rejects_the_association(gateways):
    assoc = associate(gateways["allow"], "NOTHING")
    assert assoc.is_rejected and rejection(assoc) == (1, 1, 3)


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_wrong_called_ae_is_rejected_with_reason_7(gateways, mode):
    gw = gateways[mode]
    assoc = associate(gw, "CT1", called="PACS")
    assert assoc.is_rejected and rejection(assoc) == (1, 1, 7)
    assert gw.logged("called AE title 'PACS' is not ours")
    assert any(e[3]["called_ae"] == "PACS" and e[3]["rule"] == "server.ae_title"
               for e in audit_events(gw, "association.refused"))


def test_called_ae_check_can_be_turned_off_and_extra_titles_answer(tmp_path):
    gw = Gateway(tmp_path, unknown_aets="allow", server={"check_called_ae": "false"})
    gw.start()
    try:
        assoc = associate(gw, "CT1", called="ANYTHING")
        assert assoc.is_established and use(assoc, "echo") == 0
        assoc.release()
    finally:
        assert gw.stop() == 0
    other = tmp_path / "extra"
    other.mkdir()
    gw = Gateway(other, unknown_aets="allow", server={"extra_ae_titles": '["OLDNAME"]'})
    gw.start()
    try:
        assoc = associate(gw, "CT1", called="OLDNAME")
        assert assoc.is_established and use(assoc, "echo") == 0
        assoc.release()
        assert associate(gw, "CT1", called="NEWNAME").is_rejected
    finally:
        assert gw.stop() == 0


def _order_status(gw, accession):
    with sqlite3.connect(gw.folder / "var" / "gatekeeper.db") as db:
        return db.execute("SELECT status, auth_unit_used FROM orders WHERE accession_number = ?",
                          (accession,)).fetchone()


def test_a_faked_stations_mpps_is_refused(gateways):
    gw = gateways["echo-and-store"]
    # ACC1001 is scheduled on MR1; DX1 (a known modality, every service) sends MPPS for it
    faker = associate(gw, "DX1")
    uid = generate_uid()
    status, _ = faker.send_n_create(creation("ACC1001"), ModalityPerformedProcedureStep, uid)
    assert status.Status == 0x0124
    assert status.ErrorComment.startswith("MPPS for order ACC1001 refused: the order is scheduled on")
    assert _order_status(gw, "ACC1001") == ("scheduled", None)
    # the real station starts the step; the faker cannot complete it (nor use up the auth's unit)
    mr1 = associate(gw, "MR1")
    assert mr1.send_n_create(creation("ACC1001"), ModalityPerformedProcedureStep, uid)[0].Status == 0
    assert faker.send_n_set(completion(), ModalityPerformedProcedureStep, uid)[0].Status == 0x0124
    assert _order_status(gw, "ACC1001") == ("in-progress", None)
    faker.release()
    assert gw.logged("refused by mpps.any_station_aets")
    refused = [e for e in audit_events(gw, "operation.refused") if e[0] == "DX1" and e[3]["service"] == "mpps"]
    assert refused and refused[0][3]["rule"] == "mpps.any_station_aets"
    # the station itself completes it
    assert mr1.send_n_set(completion(), ModalityPerformedProcedureStep, uid)[0].Status == 0
    mr1.release()
    assert _order_status(gw, "ACC1001")[0] == "completed"


def test_an_ae_of_any_station_aets_may_report_another_stations_order(gateways):
    gw = gateways["echo-and-store"]
    ct2 = associate(gw, "CT2")  # listed in mpps.any_station_aets
    uid = generate_uid()
    assert ct2.send_n_create(creation("ACC1003"), ModalityPerformedProcedureStep, uid)[0].Status == 0  # DX1's order
    assert ct2.send_n_set(completion(), ModalityPerformedProcedureStep, uid)[0].Status == 0
    ct2.release()
    assert _order_status(gw, "ACC1003")[0] == "completed"


def test_a_flood_of_refused_associations_leaves_one_audit_event_a_minute(gateways):
    gw = gateways["refuse"]
    before = len([e for e in audit_events(gw, "association.refused") if e[3]["rule"] == "server.unknown_aets"])
    for n in range(100):  # bounded: 100 associations, each rejected at once
        assert associate(gw, f"FLOOD{n}").is_rejected
    assert gw.logged("calling 'FLOOD99' from 127.0.0.1")
    after = len([e for e in audit_events(gw, "association.refused") if e[3]["rule"] == "server.unknown_aets"])
    assert after - before <= 1  # one per address and rule a minute (STRANGER's may have been it)
    known = associate(gw, "CT1")  # a known modality still gets in
    assert known.is_established
    known.release()
