"""Bounded fuzzing with a fixed seed: hostile PDUs, identifiers and import records.

Whatever arrives, the server keeps answering: after each round it must answer a C-ECHO and
a worklist query within 2 seconds, and the worklist it serves is unchanged. Import files
are either imported whole or rejected with an IntakeError, never anything else. Each part
is bounded in count and in time, and talks only to the in-process server on 127.0.0.1.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from tests.conftest import EXAMPLES, import_auths, import_orders
from worklist.intake import IntakeError, parse_auths, parse_orders, parse_policies

#: Hostile values make pydicom warn about every invalid element; the warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SEED = 20261201
#: Wall-clock budget of each part, seconds.
BUDGET = 15


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def associate_rq(called: bytes = b"GATEKEEPER", calling: bytes = b"FUZZ") -> bytes:
    """A well-formed A-ASSOCIATE-RQ (PS3.8 9.3.2) proposing Verification and the MWL."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    for context_id, abstract in ((1, b"1.2.840.10008.1.1"), (3, b"1.2.840.10008.5.1.4.31")):
        body += _item(0x20, bytes([context_id, 0, 0, 0]) + _item(0x30, abstract) + _item(0x40, b"1.2.840.10008.1.2"))
    body += _item(0x50, _item(0x51, struct.pack(">I", 16384)))
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        choice = rng.random()
        if choice < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif choice < 0.6:
            cut = rng.randrange(len(data) + 1)
            data = data[:cut]
        elif choice < 0.8:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        elif len(data) >= 6:  # a lying length field
            data[2:6] = struct.pack(">I", rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(1 << 32)]))
    return bytes(data)


def send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        try:
            s.sendall(data)
            s.settimeout(0.2)
            s.recv(65536)
        except OSError:
            pass


def echo_and_find(port: int) -> tuple[int, list[str]]:
    """C-ECHO status and the accession numbers the MWL serves, within 2 s each."""
    ae = AE(ae_title="MR1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 2
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind)
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
    assert assoc.is_established, "the server no longer accepts an association"
    try:
        status = assoc.send_c_echo().Status
        query = Dataset()
        query.AccessionNumber = ""
        query.PatientName = ""
        found = sorted(str(d.AccessionNumber) for s, d in assoc.send_c_find(query, ModalityWorklistInformationFind)
                       if s and s.Status == 0xFF00)
    finally:
        assoc.release()
    assert time.monotonic() - started < 4, "the server answered, but too slowly"
    return status, found


@pytest.fixture
def served(app, server):
    import_orders(app, parse_orders((EXAMPLES / "orders.json").read_text()))
    import_auths(app, parse_auths((EXAMPLES / "auths.json").read_text()))
    status, found = echo_and_find(server.port)
    assert status == 0 and found == ["ACC1001", "ACC1003"]
    return server, found


def test_mutated_pdus_do_not_stop_the_server(served):
    server, expected = served
    rng = random.Random(SEED)
    valid = associate_rq()
    deadline = time.monotonic() + BUDGET
    sent = 0
    for sent in range(1, 401):
        if time.monotonic() > deadline:
            break
        kind = rng.random()
        if kind < 0.6:
            data = mutate(rng, valid)
        elif kind < 0.8:  # a valid association request followed by a mutated P-DATA or garbage
            pdata = struct.pack(">BBI", 0x04, 0, 12) + struct.pack(">IBB", 6, 1, 0x03) + b"\x00" * 4
            data = valid + mutate(rng, pdata)
        else:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 512)))
        send_raw(server.port, data)
        if sent % 50 == 0:
            assert echo_and_find(server.port) == (0, expected)
    assert sent >= 50
    assert echo_and_find(server.port) == (0, expected)


def _random_identifier(rng: random.Random) -> Dataset:
    ds = Dataset()
    text = lambda: "".join(rng.choice("AZaz09*?^\\-.= \x1b\x00é") for _ in range(rng.randint(0, 40)))  # noqa: E731
    for keyword in rng.sample(["PatientName", "PatientID", "AccessionNumber", "RequestedProcedureDescription",
                               "StudyInstanceUID", "PatientBirthDate", "ReferringPhysicianName"], rng.randint(1, 5)):
        setattr(ds, keyword, text())
    if rng.random() < 0.7:
        step = Dataset()
        step.ScheduledStationAETitle = rng.choice(["", "*", "MR1", text()[:16]])
        step.ScheduledProcedureStepStartDate = rng.choice(
            ["", "20261201", "20261201-", "-99991231", "20261301", "2026", text()[:20], "00010101-99991231"])
        step.ScheduledProcedureStepStartTime = rng.choice(["", "0800-1800", "2500", text()[:12]])
        step.Modality = rng.choice(["", "MR", "*", text()[:8]])
        ds.ScheduledProcedureStepSequence = [step] * rng.choice([1, 1, 1, 2])
    return ds


def test_random_worklist_identifiers_get_a_status_and_leak_nothing(served):
    server, expected = served
    rng = random.Random(SEED + 1)
    ae = AE(ae_title="MR1")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="GATEKEEPER")
    assert assoc.is_established
    deadline = time.monotonic() + BUDGET
    statuses = set()
    try:
        for _ in range(300):
            if time.monotonic() > deadline:
                break
            for status, identifier in assoc.send_c_find(_random_identifier(rng), ModalityWorklistInformationFind):
                assert status, "no answer to a C-FIND"
                statuses.add(status.Status)
                if status.Status == 0xFF00:
                    assert identifier.get("AccessionNumber") != "ACC1002", "a withheld order was served"
                    assert identifier.get("PatientID") != "MRN5002", "a withheld order was served"
            assert assoc.is_established
    finally:
        assoc.release()
    assert statuses <= {0x0000, 0xFF00, 0xA900, 0xC000}
    assert 0x0000 in statuses and 0xA900 in statuses
    assert echo_and_find(server.port) == (0, expected)


@pytest.mark.parametrize("kind", ["orders", "auths", "policies"])
def test_mutated_import_files_are_imported_whole_or_rejected(kind):
    rng = random.Random(SEED + 2)
    valid = (EXAMPLES / f"{kind}.json").read_text()
    parse = {"orders": parse_orders, "auths": parse_auths, "policies": parse_policies}[kind]
    deadline = time.monotonic() + BUDGET / 3
    outcomes = {"imported": 0, "rejected": 0}
    for _ in range(1500):
        if time.monotonic() > deadline:
            break
        text = mutate(rng, valid.encode()).decode("utf-8", errors="replace")
        try:
            parse(text, "fuzz.json")
            outcomes["imported"] += 1
        except IntakeError as exc:
            assert str(exc).startswith("fuzz.json: rejected, nothing imported")
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 100
