"""The Storage SCP in process: a pynetdicom SCU sends C-STOREs to the running server.

What is checked is what a modality sees (the status) and what the store holds afterwards
(files under the storage root, rows in the index).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom import uid as ts
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import MRImageStorage, Verification

from store.archive import Archive
from store.models import FindingRow, InstanceRow, StudyRow
from store.states import ARCHIVED, HELD
from tests.dicom_factory import make_instance, make_order, write_instance

STUDY = "1.2.826.0.1.3680043.8.498.2002"
SUCCESS, OUT_OF_RESOURCES, DOES_NOT_MATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000


@pytest.fixture
def gateway(app, server):
    """The running server, with the order that the factory's instances match (no auth needed)."""
    app.gate.import_orders([make_order(payer_id="SELF_PAY", study_instance_uid=STUDY)])
    return server


class Modality:
    """One association from a pynetdicom SCU calling as MR1."""

    def __init__(self, server, *transfer_syntaxes, contexts=(MRImageStorage,)):
        ae = AE(ae_title="MR1")
        for context in contexts:
            ae.add_requested_context(context, list(transfer_syntaxes) or [ts.ExplicitVRLittleEndian])
        self.assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
        assert self.assoc.is_established

    def store(self, dataset_or_path) -> int:
        return self.assoc.send_c_store(dataset_or_path).Status

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.assoc.release()


def instance(**overrides):
    overrides.setdefault("StudyInstanceUID", STUDY)
    return make_instance(**overrides)


def files(app, tree):
    return sorted((app.settings.storage_root / tree).rglob("*.dcm"))


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information (PS3.10 7.1)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM"
    # (0002,0000) UL, explicit VR little endian: tag 4 + VR 2 + length 2 + value 4
    group_length = struct.unpack("<I", data[140:144])[0]
    return data[144 + group_length:]


def test_a_matching_study_is_archived(app, gateway):
    sent = [instance(), instance()]
    with Modality(gateway) as mr:
        assert [mr.store(ds) for ds in sent] == [SUCCESS, SUCCESS]
    assert {p.stem for p in files(app, "archive")} == {ds.SOPInstanceUID for ds in sent}
    assert files(app, "held") == []
    study = StudyRow.get()
    assert (study.state, study.instance_count, study.accession_number) == (ARCHIVED, 2, "ACC1001")
    for ds in sent:
        row = InstanceRow.get(InstanceRow.sop_instance_uid == ds.SOPInstanceUID)
        stored = dcmread(app.settings.storage_root / row.path)
        assert stored.SOPInstanceUID == ds.SOPInstanceUID and stored.PixelData == ds.PixelData
        assert row.received_from == "MR1"
    assert list(app.store.archive.incoming.iterdir()) == []


def test_a_wrong_birth_date_holds_the_study_with_its_code(app, gateway, caplog):
    caplog.set_level(logging.INFO)
    good, bad = instance(), instance(PatientBirthDate="19800302")
    with Modality(gateway) as mr:
        assert mr.store(good) == SUCCESS  # archived at first ...
        assert mr.store(bad) == SUCCESS  # ... then the study is held, with both instances
    assert files(app, "archive") == [] and {p.stem for p in files(app, "held")} == {good.SOPInstanceUID, bad.SOPInstanceUID}
    assert StudyRow.get().state == HELD
    assert [(f.code, f.instance_value, f.order_value) for f in FindingRow.select()] == [
        ("BIRTH_DATE_MISMATCH", "19800302", "19800203")]
    line = next(r.getMessage() for r in caplog.records
                if bad.SOPInstanceUID in r.getMessage() and r.getMessage().startswith("C-STORE from"))
    assert line.startswith("C-STORE from MR1: instance " + bad.SOPInstanceUID + ", accession ACC1001, held (BIRTH_DATE_MISMATCH)")
    assert "status 0x0000" in line and line.endswith(" ms")
    info = "\n".join(r.getMessage() for r in caplog.records if r.levelno <= logging.INFO)
    assert "MRN5001" not in info and "DOE" not in info and "19800302" not in info


def test_a_resent_instance_is_stored_once(app, gateway):
    ds = instance()
    with Modality(gateway) as mr:
        assert mr.store(ds) == SUCCESS
    with Modality(gateway) as mr:
        assert mr.store(ds) == SUCCESS
        assert mr.store(ds) == SUCCESS
    assert InstanceRow.select().count() == 1 and len(files(app, "archive")) == 1
    assert StudyRow.get().instance_count == 1


def test_a_full_disk_answers_out_of_resources_and_leaves_nothing(app, gateway, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    with Modality(gateway) as mr:
        monkeypatch.setattr(os, "fsync", full)
        status = mr.assoc.send_c_store(instance())
        monkeypatch.undo()
        assert status.Status == OUT_OF_RESOURCES
        assert "full" in status.ErrorComment
        assert mr.store(instance()) == SUCCESS  # the sender's retry, once there is space
    assert len(files(app, "archive")) == 1 and files(app, "held") == []
    assert InstanceRow.select().count() == 1
    assert list(app.store.archive.incoming.iterdir()) == []


def test_a_failing_volume_answers_cannot_process_and_leaves_nothing(app, gateway, monkeypatch):
    real = os.replace

    def io_error(src, dst):
        if "/archive/" in str(dst) or "/held/" in str(dst):
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    with Modality(gateway) as mr:
        monkeypatch.setattr(os, "replace", io_error)
        assert mr.store(instance()) == CANNOT_UNDERSTAND
        monkeypatch.undo()
    assert files(app, "archive") == files(app, "held") == []
    assert InstanceRow.select().count() == StudyRow.select().count() == 0
    assert list(app.store.archive.incoming.iterdir()) == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_unfileable_dataset_cannot_be_processed(app, gateway):
    with Modality(gateway) as mr:
        assert mr.store(instance(SeriesInstanceUID="1.2.bad")) == CANNOT_UNDERSTAND
    assert InstanceRow.select().count() == 0 and files(app, "held") == []


def test_a_dataset_that_is_not_the_requested_instance_does_not_match(app, gateway, tmp_path, monkeypatch):
    ds = instance()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # what the request will name
    ds.preamble = b"\0" * 128
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=False)  # as is: enforcing would copy the dataset's UID
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    with Modality(gateway) as mr:
        assert mr.store(path) == DOES_NOT_MATCH
    assert InstanceRow.select().count() == 0


JPEG_FRAME = b"\xff\xd8\xff\xe0 not really a JPEG, stored as received \xff\xd9"


@pytest.mark.parametrize("syntax", [
    ts.JPEGBaseline8Bit, ts.JPEGLosslessSV1, ts.JPEGLSLossless, ts.JPEG2000Lossless, ts.RLELossless,
    ts.ImplicitVRLittleEndian, ts.ExplicitVRBigEndian,  # Deflated is refused: test_deflated_is_refused_...
])
def test_every_transfer_syntax_is_stored_byte_for_byte(app, gateway, tmp_path, monkeypatch, syntax):
    ds = instance(transfer_syntax_uid=syntax)
    if syntax.is_encapsulated:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([JPEG_FRAME, JPEG_FRAME[::-1]])
        ds["PixelData"].VR = "OB"
    sent = write_instance(tmp_path / "sent.dcm", ds)
    # send the file's dataset bytes as they are (no decoding, no re-encoding on the way)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    with Modality(gateway, syntax) as mr:
        assert mr.assoc.accepted_contexts[0].transfer_syntax[0] == syntax
        assert mr.store(sent) == SUCCESS
    row = InstanceRow.get()
    stored = app.settings.storage_root / row.path
    assert row.transfer_syntax_uid == syntax
    assert dataset_bytes(stored) == dataset_bytes(sent)
    assert dcmread(stored).file_meta.TransferSyntaxUID == syntax
    assert StudyRow.get().state == ARCHIVED  # the header of every syntax is read for reconciliation


def test_uncompressed_is_preferred_when_a_sender_offers_a_choice(gateway):
    with Modality(gateway, ts.JPEGBaseline8Bit, ts.JPEGLosslessSV1, ts.ExplicitVRLittleEndian) as mr:
        assert mr.assoc.accepted_contexts[0].transfer_syntax[0] == ts.ExplicitVRLittleEndian
    with Modality(gateway, ts.JPEGBaseline8Bit, ts.JPEGLosslessSV1) as mr:
        assert mr.assoc.accepted_contexts[0].transfer_syntax[0] == ts.JPEGLosslessSV1


def test_every_standard_storage_class_is_supported_but_not_private_ones(app, server):
    from pynetdicom import AllStoragePresentationContexts

    wanted = [cx.abstract_syntax for cx in AllStoragePresentationContexts]
    accepted = set()
    for start in range(0, len(wanted), 120):  # at most 128 contexts per association
        with Modality(server, contexts=wanted[start:start + 120]) as scu:
            accepted |= {cx.abstract_syntax for cx in scu.assoc.accepted_contexts}
    assert accepted == set(wanted)
    with Modality(server, contexts=(Verification, "1.2.826.0.1.3680043.9.9999.1")) as scu:
        assert [cx.abstract_syntax for cx in scu.assoc.accepted_contexts] == [Verification]


def test_received_files_are_written_in_incoming_and_renamed_into_place(app, gateway, monkeypatch):
    sources = []
    real = Archive.write_new

    def spy(self, tree, study, series, sop, source, **options):
        sources.append(Path(source))
        return real(self, tree, study, series, sop, source, **options)

    monkeypatch.setattr(Archive, "write_new", spy)
    with Modality(gateway) as mr:
        assert mr.store(instance()) == SUCCESS
    [source] = sources
    assert source.parent == app.store.archive.incoming and source.name.startswith("rx-")


def test_an_association_looks_each_order_up_once(app, gateway, monkeypatch):
    calls = []
    real = app.store.receiving.authorizer

    def counting(accession, day):
        calls.append(accession)
        return real(accession, day)

    monkeypatch.setattr(app.store.receiving, "authorizer", counting)
    for _ in range(2):
        with Modality(gateway) as mr:
            assert [mr.store(instance()) for _ in range(3)] == [SUCCESS] * 3
    assert calls == ["ACC1001", "ACC1001"]


def test_a_large_instance_arrives_whole(app, gateway):
    ds = instance(Rows=1024, Columns=1024)
    ds.PixelData = os.urandom(1024 * 1024 * 2)
    with Modality(gateway) as mr:
        assert mr.store(ds) == SUCCESS
    stored = dcmread(files(app, "archive")[0])
    assert stored.PixelData == ds.PixelData
    assert InstanceRow.get().size > 2 * 1024 * 1024


def test_an_aborted_transfer_leaves_no_partial_file(app, gateway):
    """The sender sends the command and part of the dataset, then aborts the association."""
    import time

    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dsutils import encode

    incoming = app.store.archive.incoming
    ds = instance(Rows=1024, Columns=1024)
    ds.PixelData = os.urandom(1024 * 1024 * 2)
    mr = Modality(gateway)
    context = mr.assoc.accepted_contexts[0]
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    request.DataSet = BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = list(message.encode_msg(context.context_id, 16382))
    for pdu in pdus[: len(pdus) // 2]:  # the command and half of the dataset
        mr.assoc.dul.send_pdu(pdu)
    deadline = time.monotonic() + 10
    while not any(p.stat().st_size > 512 * 1024 for p in incoming.iterdir()):
        assert time.monotonic() < deadline, "the partial dataset never reached incoming/"
        time.sleep(0.01)
    assert [p.name[:3] for p in incoming.iterdir()] == ["rx-"]  # pynetdicom writes it there, named by us
    mr.assoc.abort()
    deadline = time.monotonic() + 10
    while list(incoming.iterdir()):
        assert time.monotonic() < deadline, f"partial file left: {list(incoming.iterdir())}"
        time.sleep(0.05)
    assert InstanceRow.select().count() == 0 and files(app, "archive") == []


# -- Deflated Explicit VR Little Endian is refused on every context (gateway/dicom/syntaxes.py) --

import zlib  # noqa: E402

from pydicom.filewriter import write_file_meta_info  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402
from pynetdicom.sop_class import (  # noqa: E402
    ModalityPerformedProcedureStep, ModalityWorklistInformationFind, StorageCommitmentPushModel,
)

from gateway.dicom import tuning  # noqa: E402

MiB = 1024 * 1024


def deflate_bomb(path: Path, inflated_mib: int) -> Path:
    """A Deflated Explicit VR Little Endian Part 10 file whose dataset inflates to ``inflated_mib`` MiB.

    An MR image of zeros: the deflated dataset is about a thousandth of its inflated size.
    """
    side = int((inflated_mib * MiB // 2) ** 0.5)
    ds = instance(Rows=side, Columns=side, PixelData=None, transfer_syntax_uid=ts.DeflatedExplicitVRLittleEndian)
    header = encode(ds, False, True)
    pixels = side * side * 2
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    with open(path, "wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(f, ds.file_meta)
        f.write(squeeze.compress(header + b"\xe0\x7f\x10\x00OW\0\0" + pixels.to_bytes(4, "little")))
        zeros = bytes(MiB)
        for start in range(0, pixels, MiB):
            f.write(squeeze.compress(zeros[: min(MiB, pixels - start)]))
        f.write(squeeze.flush())
    return path


def test_a_deflate_bomb_cannot_be_sent(app, gateway, tmp_path, monkeypatch):
    """A 16 KiB C-STORE that inflates to 16 MiB (1 MB to 1 GiB in the field): no context takes it."""
    bomb = deflate_bomb(tmp_path / "bomb.dcm", 16)
    assert bomb.stat().st_size < 64 * 1024
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="MR1")
    ae.add_requested_context(MRImageStorage, [ts.DeflatedExplicitVRLittleEndian])
    ae.add_requested_context(Verification, [ts.ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", gateway.port, ae_title=gateway.ae_title)
    assert assoc.is_established
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [Verification]
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(bomb)
    finally:
        assoc.release()
    assert InstanceRow.select().count() == 0 and files(app, "archive") == files(app, "held") == []


def test_a_sender_offering_deflated_and_uncompressed_gets_uncompressed(gateway):
    with Modality(gateway, ts.DeflatedExplicitVRLittleEndian, ts.ExplicitVRLittleEndian) as mr:
        assert mr.assoc.accepted_contexts[0].transfer_syntax[0] == ts.ExplicitVRLittleEndian


@pytest.mark.parametrize("sop_class", [
    ModalityWorklistInformationFind, ModalityPerformedProcedureStep, StorageCommitmentPushModel,
    Verification,
])
def test_no_other_service_accepts_deflated(server, sop_class):
    """A C-FIND identifier, an MPPS or commitment dataset could be a deflate bomb too."""
    ae = AE(ae_title="MR1")
    ae.add_requested_context(sop_class, [ts.DeflatedExplicitVRLittleEndian])
    ae.add_requested_context(MRImageStorage, [ts.ExplicitVRLittleEndian])  # so that the association is made
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    assert assoc.is_established
    try:
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [MRImageStorage]
    finally:
        assoc.release()
    ae = AE(ae_title="MR1")
    ae.add_requested_context(sop_class, [ts.DeflatedExplicitVRLittleEndian, ts.ImplicitVRLittleEndian,
                                         ts.ExplicitVRBigEndian, ts.ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", server.port, ae_title=server.ae_title)
    try:
        assert assoc.accepted_contexts[0].transfer_syntax[0] == ts.ExplicitVRLittleEndian
    finally:
        assoc.release()


# -- the free-space reserve, and a volume that fills while a dataset arrives (storage.min_free_mb) --


def statvfs_with_free(free_bytes: int):
    """``os.statvfs`` as on a volume with ``free_bytes`` available."""
    real = os.statvfs

    def statvfs(path):
        s = real(path)
        blocks = free_bytes // s.f_frsize
        return os.statvfs_result((s.f_bsize, s.f_frsize, s.f_blocks, blocks, blocks, s.f_files, s.f_ffree,
                                  s.f_favail, s.f_flag, s.f_namemax))

    return statvfs


class FillsUp:
    """A received file on a volume that is full after ``room`` more bytes (then every write fails)."""

    def __init__(self, real, room: int, error: int = errno.ENOSPC):
        self._real, self.room, self.error, self.written = real, room, error, 0
        self.name = real.name

    @property
    def file(self):
        return self

    def write(self, data) -> int:
        if self.written + len(data) > self.room:
            raise OSError(self.error, os.strerror(self.error))
        self.written += len(data)
        return self._real.write(data)

    def flush(self) -> None:
        self._real.flush()

    def close(self) -> None:
        self._real.close()


def big_instance():
    ds = instance(Rows=1024, Columns=1024)
    ds.PixelData = os.urandom(2 * MiB)
    return ds


def nothing_kept(app) -> bool:
    return (InstanceRow.select().count() == 0 and files(app, "archive") == files(app, "held") == []
            and list(app.store.archive.incoming.iterdir()) == [])


def test_below_the_free_space_reserve_a_store_is_refused_before_anything_is_written(app, gateway, monkeypatch):
    created = []
    real_file = tuning._original_named_temporary_file

    def counting(*args, **kwargs):
        created.append(kwargs)
        return real_file(*args, **kwargs)

    monkeypatch.setattr(tuning, "_original_named_temporary_file", counting)
    real_statvfs = os.statvfs
    with Modality(gateway) as mr:
        monkeypatch.setattr(os, "statvfs", statvfs_with_free(15 * MiB))  # the tests' reserve is 16 MiB
        status = mr.assoc.send_c_store(big_instance())
        assert status.Status == OUT_OF_RESOURCES and "full" in status.ErrorComment
        assert created == [], "the dataset was written to disk although the reserve was reached"
        assert nothing_kept(app)
        monkeypatch.setattr(os, "statvfs", real_statvfs)  # space was freed: the sender's retry
        assert mr.store(instance()) == SUCCESS
    assert InstanceRow.select().count() == 1 and len(created) == 1


def test_a_volume_that_fills_while_a_dataset_arrives_answers_out_of_resources(app, gateway, monkeypatch):
    real_file = tuning._original_named_temporary_file
    partial = []

    def filling(*args, **kwargs):
        f = FillsUp(real_file(*args, **kwargs), room=256 * 1024)
        partial.append(Path(f.name))
        return f

    with Modality(gateway) as mr:
        mr.assoc.dimse_timeout = 20  # the old code never answered: its receiving thread died
        monkeypatch.setattr(tuning, "_original_named_temporary_file", filling)
        status = mr.assoc.send_c_store(big_instance())
        assert status and status.Status == OUT_OF_RESOURCES
        assert partial and not partial[0].exists(), "the partial file was left in incoming/"
        assert nothing_kept(app)
        monkeypatch.setattr(tuning, "_original_named_temporary_file", real_file)
        assert mr.store(instance()) == SUCCESS  # the association is still usable
    assert InstanceRow.select().count() == 1


def test_any_other_write_error_while_a_dataset_arrives_answers_and_leaves_nothing(app, gateway, monkeypatch):
    real_file = tuning._original_named_temporary_file
    monkeypatch.setattr(tuning, "_original_named_temporary_file",
                        lambda *a, **k: FillsUp(real_file(*a, **k), room=100 * 1024, error=errno.EIO))
    with Modality(gateway) as mr:
        mr.assoc.dimse_timeout = 20
        assert mr.store(big_instance()) == CANNOT_UNDERSTAND
        assert nothing_kept(app)


def test_a_file_that_cannot_be_created_answers_out_of_resources(app, gateway, monkeypatch):
    def no_descriptors(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    with Modality(gateway) as mr:
        mr.assoc.dimse_timeout = 20
        monkeypatch.setattr(tuning, "_original_named_temporary_file", no_descriptors)
        assert mr.store(instance()) == OUT_OF_RESOURCES
        monkeypatch.undo()
        assert mr.store(instance()) == SUCCESS
    assert InstanceRow.select().count() == 1


def test_the_pynetdicom_internals_the_received_file_relies_on():
    """gateway/dicom/tuning.py _ReceivedFile: what pynetdicom and pydicom call on the file they are given."""
    import inspect
    import re

    from pydicom import filewriter
    from pynetdicom import dimse_messages, service_class

    decode = inspect.getsource(dimse_messages.DIMSEMessage.decode_msg)
    assert set(re.findall(r"_data_set_file\.(\w+)", decode)) <= {"write", "file", "name"}
    assert set(re.findall(r"_data_set_file\.file\.(\w+)", decode)) <= {"flush"}
    assert "write_file_meta_info(\n                            self._data_set_file" in decode
    # a new file, written from its first byte through the wrapper alone: what it hashes is the file
    assert 'NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")' in decode
    assert set(re.findall(r"\bfp\.(\w+)", inspect.getsource(filewriter.write_file_meta_info))) == {"write"}
    assert "primitive._dataset_file = self._data_set_file" in inspect.getsource(
        dimse_messages.DIMSEMessage.message_to_primitive)
    scp = inspect.getsource(service_class.StorageServiceClass.SCP)
    assert set(re.findall(r"_dataset_file\.(\w+)", scp)) <= {"close", "name"}
    assert scp.index("evt.EVT_C_STORE") < scp.index("req._dataset_file.close()")


@pytest.mark.e2e
def test_storescu_below_the_reserve_gets_out_of_resources(tmp_path):
    import subprocess

    from tests.e2e import Gateway, dcmtk

    storescu = dcmtk("storescu")
    gw = Gateway(tmp_path)
    gw.settings.write_text(gw.settings.read_text().replace("min_free_mb = 16", "min_free_mb = 1000000000"))
    gw.start()
    try:
        sent = write_instance(tmp_path / "mr.dcm", instance())
        result = subprocess.run([storescu, "-v", "-aet", "MR1", "-aec", "GATEKEEPER", "127.0.0.1", str(gw.port), str(sent)],
                                capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        assert "Received Store Response (Refused: OutOfResources)" in output, output
        assert "Releasing Association" in output and "abort" not in output.lower(), output
        assert not list((gw.folder / "var" / "store").rglob("*.dcm"))
        assert "MiB free, below its reserve" in gw.log()
    finally:
        assert gw.stop() == 0, gw.log()


def test_a_received_file_is_indexed_with_the_hash_taken_as_it_was_written(app, gateway, monkeypatch):
    """The receiver hashes each byte it writes (tuning._ReceivedFile); filing does not read the file again."""
    from store import archive as archive_module

    monkeypatch.setattr(archive_module, "file_digest", lambda *a, **k: pytest.fail("the received file was read again"))
    sent = [big_instance(), instance(SOPInstanceUID=generate_uid())]
    with Modality(gateway) as mr:
        assert [mr.store(ds) for ds in sent] == [SUCCESS, SUCCESS]
    rows = {row.sop_instance_uid: row for row in InstanceRow.select()}
    assert set(rows) == {ds.SOPInstanceUID for ds in sent}
    for row in rows.values():
        data = (app.settings.storage_root / row.path).read_bytes()
        assert (row.size, row.sha256) == (len(data), hashlib.sha256(data).hexdigest())
