"""Change 11 of gateway/dicom/tuning.py: a P-DATA-TF PDU made only of middle fragments of a
C-STORE request's data set is written straight to the received file.

Every PDU it does not take (a command fragment, the last fragment, a malformed item, a state
machine with work queued, an association something watches) must be left whole to pynetdicom,
with nothing written; what it takes must land in the file exactly as pynetdicom writes it.
Then over a real association: a large instance, most of whose PDUs take this path, is stored
byte for byte.
"""

from __future__ import annotations

import os
import queue
import struct
from types import SimpleNamespace

import pytest
from pydicom import dcmread
from pynetdicom import evt
from pynetdicom.dimse_messages import C_FIND_RQ, C_STORE_RQ

from gateway.dicom import tuning
from store.models import InstanceRow
from tests.test_store_scp import Modality, files, gateway, instance  # noqa: F401 (gateway: a fixture)

SUCCESS = 0x0000


def pdv(data: bytes, control: int = 0x00, context: int = 1) -> bytes:
    """One presentation data value item (PS3.8 9.3.5.1): length, context ID, control header, data."""
    return struct.pack(">LB", len(data) + 2, context) + bytes([control]) + data


class Dul:
    """What _write_through reads of a DUL: its state, its two queues, the association's DIMSE message."""

    def __init__(self, message, state: str = "Sta6", handlers: dict | None = None):
        self.state_machine = SimpleNamespace(current_state=state)
        self.event_queue: queue.Queue = queue.Queue()
        self._recv_pdu: queue.Queue = queue.Queue()
        bound = handlers or {}
        self.assoc = SimpleNamespace(dimse=SimpleNamespace(message=message),
                                     get_handlers=lambda event: bound.get(event, []))


@pytest.fixture
def receiving(tmp_path):
    """A C-STORE request whose data set is being received into rx.dcm, and a reader of that file."""
    path = tmp_path / "rx.dcm"
    message = C_STORE_RQ()
    message._data_set_file = tuning._ReceivedFile(open(path, "wb"))
    message._data_set_path = path

    def written() -> bytes:
        message._data_set_file.flush()
        return path.read_bytes()

    return message, written


@pytest.mark.parametrize("body, expected", [
    (pdv(b"abc"), b"abc"),
    (pdv(b"abc") + pdv(b"defg"), b"abcdefg"),  # several items, in order
    (pdv(b""), b""),  # an item of the control header alone (length 2)
    (pdv(b"abc", control=0xFC), b"abc"),  # only the two low bits count (PS3.8 E.2)
    (pdv(b"abc", context=3), b"abc"),  # pynetdicom does not look at a data fragment's context either
])
def test_middle_fragments_are_written_as_pynetdicom_writes_them(receiving, body, expected):
    message, written = receiving
    assert tuning._write_through(Dul(message), bytearray(body)) is True
    assert written() == expected


@pytest.mark.parametrize("body", [
    pdv(b"abc", control=0x02),  # the last fragment: pynetdicom completes the message
    pdv(b"abc") + pdv(b"def", control=0x02),  # all or nothing
    pdv(b"abc", control=0x01),  # command information
    pdv(b"abc", control=0x03),
    pdv(b"abc", control=0xFE),
    b"",  # no item at all
    struct.pack(">LB", 1, 1),  # an item without its control header
    pdv(b"abc")[:-1],  # an item longer than the PDU
    pdv(b"abc") + b"\x00\x00\x00",  # bytes after the last item, too few for another
    pdv(b"abc") + struct.pack(">LB", 5, 1) + b"\x00",  # a second item cut short
])
def test_any_other_pdu_is_left_to_pynetdicom_with_nothing_written(receiving, body):
    message, written = receiving
    assert tuning._write_through(Dul(message), bytearray(body)) is False
    assert written() == b""


def test_pdus_ahead_in_the_state_machine_keep_their_order(receiving):
    message, written = receiving
    for queued in ("event_queue", "_recv_pdu"):
        dul = Dul(message)
        getattr(dul, queued).put("Evt10")
        assert tuning._write_through(dul, bytearray(pdv(b"abc"))) is False
    assert tuning._write_through(Dul(message, state="Sta7"), bytearray(pdv(b"abc"))) is False
    assert written() == b""


@pytest.mark.parametrize("event", [evt.EVT_PDU_RECV, evt.EVT_DATA_RECV])
def test_an_association_that_watches_its_pdus_is_left_to_pynetdicom(receiving, event):
    message, written = receiving
    dul = Dul(message, handlers={event: [(lambda e: None, None)]})
    assert tuning._write_through(dul, bytearray(pdv(b"abc"))) is False
    assert written() == b""


def test_only_a_c_store_data_set_received_into_the_store_is_written(tmp_path):
    body = bytearray(pdv(b"abc"))
    assert tuning._write_through(Dul(None), body) is False  # between messages
    find = C_FIND_RQ()
    find._data_set_file = tuning._ReceivedFile(open(tmp_path / "find", "wb"))
    assert tuning._write_through(Dul(find), body) is False
    other = C_STORE_RQ()  # an AE not registered with receive_into: pynetdicom's own temporary file
    with open(tmp_path / "other", "wb") as plain:
        other._data_set_file = plain
        assert tuning._write_through(Dul(other), body) is False
    assert (tmp_path / "other").read_bytes() == b"" and (tmp_path / "find").read_bytes() == b""


class Full:
    """A file on a full volume: every write fails."""

    def __init__(self, name) -> None:
        self.name = str(name)

    def write(self, data):
        raise OSError(28, "No space left on device")

    def flush(self):
        pass

    def close(self):
        pass


def test_a_write_that_fails_removes_the_file_and_the_rest_is_read_and_dropped(tmp_path):
    (tmp_path / "rx.dcm").write_bytes(b"partial")
    message = C_STORE_RQ()
    message._data_set_file = tuning._ReceivedFile(Full(tmp_path / "rx.dcm"))
    assert tuning._write_through(Dul(message), bytearray(pdv(b"abc"))) is True
    assert isinstance(message._data_set_file.error, OSError) and not (tmp_path / "rx.dcm").exists()
    assert tuning._write_through(Dul(message), bytearray(pdv(b"def"))) is True  # the sink takes the rest


# ------------------------------------------------------------------ over a real association


def test_a_large_instance_is_stored_byte_for_byte_through_the_short_path(app, gateway, monkeypatch):
    taken = []
    real = tuning._write_through

    def counting(dul, body):
        done = real(dul, body)
        taken.append(done)
        return done

    monkeypatch.setattr(tuning, "_write_through", counting)
    ds = instance(Rows=1024, Columns=1024)
    ds.PixelData = os.urandom(1024 * 1024 * 2)
    with Modality(gateway) as mr:
        assert mr.store(ds) == SUCCESS
        assert mr.store(instance()) == SUCCESS  # the next message, after the short path, as usual
    # 2 MiB in PDUs of at most 256 KiB after the command's own PDU: every data PDU but the
    # last, which completes the message, takes the short path
    assert taken.count(True) >= 7
    assert taken[-1] is False
    stored = [dcmread(path) for path in files(app, "archive")]
    assert sorted(len(s.get("PixelData", b"")) for s in stored)[-1] == len(ds.PixelData)
    big = next(s for s in stored if s.SOPInstanceUID == ds.SOPInstanceUID)
    assert big.PixelData == ds.PixelData and big.Rows == 1024
    assert InstanceRow.select().count() == 2


def test_the_received_file_counts_and_hashes_every_byte_it_writes(receiving):
    import hashlib

    message, written = receiving
    received = message._data_set_file
    for chunk in (b"\x00" * 128, b"DICM", memoryview(b"--meta--"), bytearray(b"dataset" * 5000)):
        received.write(chunk)
    data = written()
    request = SimpleNamespace(_dataset_file=received)
    assert tuning.received_digest(request) == (len(data), hashlib.sha256(data).hexdigest())


def test_a_received_file_that_failed_has_no_hash(tmp_path):
    received = tuning._ReceivedFile(Full(tmp_path / "full"))
    received.write(b"x")
    assert tuning.received_digest(SimpleNamespace(_dataset_file=received)) is None
    refused = tuning._ReceivedFile(None, error=OSError(28, "No space"), folder=tmp_path)
    assert tuning.received_digest(SimpleNamespace(_dataset_file=refused)) is None
    assert tuning.received_digest(SimpleNamespace(_dataset_file=None)) is None  # not written by the receiver
