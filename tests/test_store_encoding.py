"""Change 9 of gateway/dicom/tuning.py: the File Meta of a received instance and the C-STORE
response are encoded without pydicom, to the same bytes pynetdicom and pydicom produce.

Each encoder is compared with pynetdicom's own output over values at the edges (odd and
even lengths, the longest UID, every status class, the largest message ID, fragmenting PDU
lengths), and each must hand back to pynetdicom whatever it does not encode itself. Then a
real C-STORE: the modality receives the same PDUs, and the stored file starts with the same
bytes, as from pynetdicom alone.
"""

from __future__ import annotations

import io
import struct

import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEG2000Lossless, generate_uid)
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import CTImageStorage

from gateway.dicom import tuning
from tests.conftest import free_port

CT = str(CTImageStorage)
LONGEST = "1." + "2" * 62  # 64 characters, the most PS3.5 9.1 allows
UIDS = ["1", "1.2", "1.2.3", CT, LONGEST, "1.2.840.10008.5.1.4.1.1.2.1"]
SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless]


def pydicom_file_meta(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    out = io.BytesIO()
    write_file_meta_info(out, create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
                                               transfer_syntax=UID(syntax)))
    return out.getvalue()


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("sop_instance", UIDS)
def test_the_file_meta_is_what_pydicom_writes(sop_instance, syntax):
    for sop_class in (CT, "1.2"):
        assert tuning.file_meta_bytes(sop_class, sop_instance, syntax) == pydicom_file_meta(sop_class, sop_instance, syntax)


@pytest.mark.parametrize("bad", ["", None, "1.2.\u00e9", LONGEST + "3", b"1.2.3"])
def test_a_value_that_is_not_a_plain_uid_is_left_to_pydicom(bad):
    assert tuning.file_meta_bytes(CT, bad, ExplicitVRLittleEndian) is None
    assert tuning.file_meta_bytes(bad, "1.2.3", ExplicitVRLittleEndian) is None


def test_the_file_meta_writer_falls_back_to_pydicom_with_the_same_result():
    out, theirs = io.BytesIO(), io.BytesIO()
    odd = LONGEST + "3"  # too long for the fast path; pydicom writes it all the same
    tuning._write_file_meta_info(out, tuning._create_file_meta(sop_class_uid=UID(CT), sop_instance_uid=UID(odd),
                                                               transfer_syntax=ExplicitVRLittleEndian))
    write_file_meta_info(theirs, create_file_meta(sop_class_uid=UID(CT), sop_instance_uid=UID(odd),
                                                  transfer_syntax=ExplicitVRLittleEndian))
    assert out.getvalue() == theirs.getvalue()
    # a File Meta built by anyone else is pydicom's to write
    other = FileMetaDataset()
    other.TransferSyntaxUID = ExplicitVRLittleEndian
    other.MediaStorageSOPClassUID, other.MediaStorageSOPInstanceUID = CT, "1.2.3"
    mine, reference = io.BytesIO(), io.BytesIO()
    tuning._write_file_meta_info(mine, other)
    write_file_meta_info(reference, other)
    assert mine.getvalue() == reference.getvalue()


class _Assoc:
    def __init__(self):
        self.handlers = {}

    def get_handlers(self, event):
        return self.handlers.get(event, [])


class _Dimse:
    def __init__(self, max_pdu: int):
        self.maximum_pdu_size = max_pdu
        self.assoc = _Assoc()


def response(message_id=7, status=0x0000, sop_class=CT, sop_instance="1.2.3.4", **others) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    for name, value in others.items():  # after the others: may replace one of them
        setattr(rsp, name, value)
    return rsp


def pynetdicom_pdus(rsp: C_STORE, context_id: int, max_pdu: int) -> list[bytes]:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return [P_DATA_TF(p).encode() for p in message.encode_msg(context_id, max_pdu)]


@pytest.mark.parametrize("max_pdu", [16382, 64, 20, 0])
@pytest.mark.parametrize("status", [0x0000, 0x0001, 0xB000, 0xB007, 0xA700, 0xA900, 0xC000, 0xC211, 0xFFFF])
def test_a_store_response_is_what_pynetdicom_sends(status, max_pdu):
    for message_id in (0, 1, 0x8000, 0xFFFF):
        for sop_class, sop_instance in ((CT, "1.2.3.4"), ("1.2", LONGEST), (None, "1.2.3"), (CT, None)):
            rsp = response(message_id, status, sop_class, sop_instance)
            ours = tuning._store_rsp_pdus(_Dimse(max_pdu), rsp, 3)
            assert b"".join(ours) == b"".join(pynetdicom_pdus(rsp, 3, max_pdu)), (status, message_id, sop_class, sop_instance)


@pytest.mark.parametrize("others", [
    {"ErrorComment": "Out of room; try again later"},
    {"OffendingElement": [0x00100010]},
    {"Status": 0x10000},
    {"Status": -1},
    {"AffectedSOPInstanceUID": "1.2.\u00e9"},
])
def test_a_response_with_more_than_a_status_is_left_to_pynetdicom(others):
    rsp = response(**others)
    assert tuning._store_rsp_pdus(_Dimse(16382), rsp, 1) is None


def test_a_request_or_a_watched_association_is_left_to_pynetdicom():
    request = response()
    request.MessageIDBeingRespondedTo = None
    request.MessageID = 7
    assert tuning._store_rsp_pdus(_Dimse(16382), request, 1) is None
    watched = _Dimse(16382)
    watched.assoc.handlers[evt.EVT_DIMSE_SENT] = [(lambda event: None, None)]
    assert tuning._store_rsp_pdus(watched, response(), 1) is None


# ------------------------------------------------------------------ over a real association


@pytest.fixture
def store_scp(tmp_path):
    """An SCP that keeps the first bytes of every received file; ``watched`` = pynetdicom alone."""
    started = []

    def start(*, watched: bool = False, status: int = 0x0000):
        tuning.apply()
        heads = []

        def on_store(event):
            with open(event.dataset_path, "rb") as f:
                heads.append(f.read(132 + 512))
            return status

        ae = AE(ae_title="GATEKEEPER")
        ae.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        handlers = [(evt.EVT_C_STORE, on_store)]
        if watched:
            handlers.append((evt.EVT_DIMSE_SENT, lambda event: None))
        port = free_port()
        started.append(ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers))
        return port, heads

    yield start
    for server in started:
        server.shutdown()


def instance(sop_instance: str, syntax: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_instance
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.PatientID = "MRN-ENCODING"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def sent(port: int, datasets, max_pdu: int) -> tuple[list[bytes], list[int]]:
    pdus = []

    def on_pdu(event):
        if isinstance(event.pdu, P_DATA_TF):
            pdus.append(event.pdu.encode())

    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER", max_pdu=max_pdu,
                         evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)])
    assert assoc.is_established
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assoc.release()
    return pdus, statuses


@pytest.mark.parametrize("max_pdu", [16382, 40])
@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700])
def test_a_modality_receives_what_pynetdicom_alone_sends_and_the_file_is_the_same(store_scp, max_pdu, status):
    datasets = [instance(uid, syntax) for uid in ("1.2.3.4.5", "1.2.3.4.56", generate_uid())
                for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)]
    ours_port, ours_heads = store_scp(status=status)
    theirs_port, theirs_heads = store_scp(watched=True, status=status)
    ours, ours_statuses = sent(ours_port, datasets, max_pdu)
    theirs, theirs_statuses = sent(theirs_port, datasets, max_pdu)
    assert ours_statuses == theirs_statuses == [status] * len(datasets)
    assert ours == theirs
    assert ours_heads == theirs_heads and len(ours_heads) == len(datasets)
    for head, ds in zip(ours_heads, datasets):
        meta = pydicom_file_meta(CT, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID)
        assert head[:132] == b"\x00" * 128 + b"DICM" and head[132:132 + len(meta)] == meta
        (group_length,) = struct.unpack("<L", meta[8:12])
        assert group_length == len(meta) - 12
