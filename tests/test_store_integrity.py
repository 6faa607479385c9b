"""A received instance must be whole under its transfer syntax before it is acknowledged
(store/integrity.py; rule 4 of docs/rules.md).

First the check on files, then the same damaged datasets sent by C-STORE to the running
server: each is refused with 0xC000 and its reason logged, nothing is archived, held,
indexed or left in incoming/, and the association goes on.
"""

from __future__ import annotations

import logging
import os
import time
import tracemalloc
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import uid as ts
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence
from pynetdicom import _config
from pynetdicom.dsutils import encode

from store.header import UnreadableInstance
from store.integrity import IncompleteInstance, check_whole
from store.models import InstanceRow
from tests.dicom_factory import make_instance, write_instance
from tests.test_store_scp import (  # noqa: F401  (gateway is a fixture)
    CANNOT_UNDERSTAND, SUCCESS, Modality, files, gateway, instance,
)

MiB = 1024 * 1024
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def image(rows=512, columns=1024, **overrides):
    """An MR image of rows x columns x 16 bits: 1 MiB of pixel data by default."""
    ds = instance(Rows=rows, Columns=columns, **overrides)
    ds.PixelData = os.urandom(rows * columns * 2)
    return ds


def jpeg(frames=None, fragments=(b"\xff\xd8 frame one \xff\xd9", b"\xff\xd8 frame two \xff\xd9"), **overrides):
    ds = instance(transfer_syntax_uid=ts.JPEGBaseline8Bit, BitsAllocated=8, BitsStored=8, HighBit=7, **overrides)
    if frames is not None:
        ds.NumberOfFrames = str(frames)
    ds.PixelData = encapsulate(list(fragments))
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True  # so that pynetdicom encodes it as encapsulated too
    return ds


def part10(path: Path, ds: Dataset, dataset: bytes) -> Path:
    """A Part 10 file: ``ds``'s file meta, then ``dataset`` as it is (whatever the meta says)."""
    out = BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, ds.file_meta)
    path.write_bytes(out.getvalue() + dataset)
    return path


def implicit_bytes_labelled_explicit(path: Path) -> Path:
    ds = instance()
    return part10(path, ds, encode(ds, True, True))  # the file meta says Explicit VR Little Endian


def cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


def pixel_data_offset(path: Path) -> int:
    return path.read_bytes().rindex(PIXEL_DATA_TAG)


# ------------------------------------------------------------------------ whole files pass


def enhanced_with_sequences(**overrides):
    """Nested sequences of defined and undefined length, a private sequence and an icon image."""
    ds = image(64, 64, **overrides)
    inner = Dataset()
    inner.FrameLaterality = "L"
    shared = Dataset()
    shared.FrameAnatomySequence = Sequence([inner])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    icon = Dataset()
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.Rows = icon.Columns = 4
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(16)
    ds.IconImageSequence = Sequence([icon])
    ds.add_new(0x00090010, "LO", "GK TEST")
    private = Dataset()
    private.add_new(0x00091001, "LO", "x")
    ds.add_new(0x00091011, "SQ", Sequence([private]))
    ds.RequestAttributesSequence = Sequence([Dataset(), Dataset()])
    return ds


@pytest.mark.parametrize("syntax", [ts.ExplicitVRLittleEndian, ts.ImplicitVRLittleEndian, ts.ExplicitVRBigEndian])
def test_whole_native_datasets_pass(tmp_path, syntax):
    odd = instance(Rows=3, Columns=5, BitsAllocated=8, BitsStored=8, HighBit=7)
    odd.PixelData = os.urandom(15) + b"\0"  # 15 bytes, padded to 16
    for n, ds in enumerate([instance(), image(), enhanced_with_sequences(), odd]):
        ds.file_meta.TransferSyntaxUID = syntax
        check_whole(write_instance(tmp_path / f"{n}.dcm", ds))


def test_undefined_length_sequences_and_items_pass(tmp_path):
    ds = enhanced_with_sequences()
    ds["SharedFunctionalGroupsSequence"].is_undefined_length = True
    ds.SharedFunctionalGroupsSequence[0].is_undefined_length_sequence_item = True
    ds["IconImageSequence"].is_undefined_length = True
    path = write_instance(tmp_path / "u.dcm", ds)
    assert b"\xfe\xff\xdd\xe0" in path.read_bytes() and b"\xfe\xff\x0d\xe0" in path.read_bytes()
    check_whole(path)


def test_image_geometries_pass(tmp_path):
    frames = image(16, 16, NumberOfFrames="4")
    frames.PixelData = os.urandom(16 * 16 * 2 * 4)
    rgb = instance(Rows=7, Columns=3, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0,
                   BitsAllocated=8, BitsStored=8, HighBit=7)
    rgb.PixelData = os.urandom(7 * 3 * 3) + b"\0"  # 63 bytes, padded
    ybr = instance(Rows=2, Columns=4, SamplesPerPixel=3, PhotometricInterpretation="YBR_FULL_422",
                   PlanarConfiguration=0, BitsAllocated=8, BitsStored=8, HighBit=7)
    ybr.PixelData = os.urandom(2 * 4 * 2)
    bits = instance(Rows=3, Columns=3, BitsAllocated=1, BitsStored=1, HighBit=0)
    bits.PixelData = b"\xff\x01"  # 9 bits in 2 bytes
    floats = instance(Rows=2, Columns=2, BitsAllocated=32, PixelData=None, BitsStored=None, HighBit=None,
                      PixelRepresentation=None)
    floats.FloatPixelData = bytes(16)
    for n, ds in enumerate([frames, rgb, ybr, bits, floats]):
        check_whole(write_instance(tmp_path / f"{n}.dcm", ds))


def test_encapsulated_pixel_data_passes(tmp_path):
    check_whole(write_instance(tmp_path / "j.dcm", jpeg()))
    check_whole(write_instance(tmp_path / "f.dcm", jpeg(frames=2)))
    ds = jpeg(frames=2)
    ds.PixelData = encapsulate([b"\xff\xd8 one \xff\xd9", b"\xff\xd8 two \xff\xd9"], has_bot=False)
    check_whole(write_instance(tmp_path / "no-offsets.dcm", ds))


def test_objects_without_pixel_data_pass(tmp_path):
    """An SR, KO or PR has no Image Pixel module, so no pixel data is expected."""
    sr = make_instance(SOPClassUID=ts.UID("1.2.840.10008.5.1.4.1.1.88.11"), Modality="SR", PixelData=None, Rows=None,
                       Columns=None, BitsAllocated=None, BitsStored=None, HighBit=None, SamplesPerPixel=None,
                       PhotometricInterpretation=None, PixelRepresentation=None)
    check_whole(write_instance(tmp_path / "sr.dcm", sr))
    referenced = make_instance(PixelData=None)
    referenced.PixelDataProviderURL = "https://pacs.example/jpip/1"
    check_whole(write_instance(tmp_path / "jpip.dcm", referenced))


def test_a_large_file_is_checked_without_reading_its_pixel_data(tmp_path):
    """512 MiB of pixel data (a sparse file): a few milliseconds, a few kilobytes."""
    ds = make_instance(Rows=16384, Columns=16384, PixelData=b"")
    path = write_instance(tmp_path / "big.dcm", ds)
    head = path.read_bytes()
    head = head[: head.rindex(PIXEL_DATA_TAG)] + PIXEL_DATA_TAG + b"OW\0\0" + (512 * MiB).to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + 512 * MiB)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        check_whole(path)
        took = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert took < 0.5 and peak < 1 * MiB, (took, peak)


# ------------------------------------------------------------------- damaged files are refused


def damaged_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Name -> (a damaged Part 10 file, what the refusal says). Each file holds a well-formed file meta."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    whole = write_instance(folder / "whole.dcm", image())
    size = whole.stat().st_size
    made["last 100 KiB of a 1 MiB image cut off"] = (
        cut(write_instance(folder / "a.dcm", image()), size - 100 * 1024),
        "claims 1048576 bytes, only ")  # the header's length varies with its generated UIDs
    b = write_instance(folder / "b.dcm", image())
    made["cut at 90%"] = (cut(b, size * 9 // 10), "(7FE0,0010)")
    c = write_instance(folder / "c.dcm", image())
    made["cut just before its Pixel Data"] = (cut(c, pixel_data_offset(c)), "no Pixel Data")
    d = write_instance(folder / "d.dcm", image())
    made["cut inside an element header"] = (cut(d, pixel_data_offset(d) + 6), "cut short")
    e = write_instance(folder / "e.dcm", image())
    e.write_bytes(e.read_bytes() + b"\xfc\xff\xfc\xffOB\0\0\xfe\xff\xff\xff")  # Data Set Trailing Padding, 4 GB
    made["a trailing element claiming 4 GB"] = (e, "claims 4294967294 bytes")
    short = image()
    short.PixelData = short.PixelData[: 946176]  # the element is consistent, the image is not
    made["pixel data shorter than Rows x Columns"] = (write_instance(folder / "f.dcm", short),
                                                      "946176 bytes, not the 1048576")
    long = image(BitsAllocated=8, BitsStored=8, HighBit=7)  # 512 x 1024 x 8 bits is 512 KiB, 1 MiB was sent
    made["pixel data longer than Rows x Columns"] = (write_instance(folder / "g.dcm", long), "not the 524288")
    j = write_instance(folder / "h.dcm", jpeg())
    made["encapsulated, without its Sequence Delimitation Item"] = (cut(j, j.stat().st_size - 8),
                                                                    "no Sequence Delimitation Item")
    j = write_instance(folder / "i.dcm", jpeg())
    made["encapsulated, its last fragment cut"] = (cut(j, j.stat().st_size - 12), "fragment 2")
    made["encapsulated, fewer fragments than frames"] = (write_instance(folder / "j.dcm", jpeg(frames=3)),
                                                         "2 fragments for 3 frames")
    made["Implicit VR bytes on an Explicit VR context"] = (implicit_bytes_labelled_explicit(folder / "k.dcm"),
                                                           "no valid VR")
    seq = enhanced_with_sequences()
    seq["SharedFunctionalGroupsSequence"].is_undefined_length = True
    s = write_instance(folder / "l.dcm", seq)
    s.write_bytes(s.read_bytes().replace(b"\xfe\xff\xdd\xe0\0\0\0\0", b"", 1))
    made["a sequence without its delimiter"] = (s, "where an item should be")
    return made


def test_the_damaged_files_are_refused_with_their_reason(tmp_path):
    for name, (path, reason) in damaged_files(tmp_path).items():
        with pytest.raises(IncompleteInstance) as refused:
            check_whole(path)
            pytest.fail(f"{name}: not refused")
        assert isinstance(refused.value, UnreadableInstance), name
        assert reason in str(refused.value), f"{name}: {refused.value}"
        assert "send it again" in str(refused.value), name


def test_not_part_10_is_refused(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    with pytest.raises(IncompleteInstance, match="DICM"):
        check_whole(junk)
    deflated = instance(transfer_syntax_uid=ts.DeflatedExplicitVRLittleEndian)
    with pytest.raises(IncompleteInstance, match="does not accept"):
        check_whole(part10(tmp_path / "d.dcm", deflated, b""))


# ------------------------------------------------------------- the same, sent to the server

DAMAGED = ["last 100 KiB of a 1 MiB image cut off", "cut at 90%", "cut just before its Pixel Data",
           "cut inside an element header", "a trailing element claiming 4 GB", "pixel data shorter than Rows x Columns",
           "encapsulated, without its Sequence Delimitation Item", "encapsulated, fewer fragments than frames",
           "Implicit VR bytes on an Explicit VR context"]


@pytest.mark.parametrize("name", DAMAGED)
def test_a_damaged_instance_sent_by_c_store_is_refused_and_not_kept(app, gateway, tmp_path, monkeypatch, caplog,
                                                                   name):
    path, reason = damaged_files(tmp_path / "sent")[name]
    syntax = ts.JPEGBaseline8Bit if name.startswith("encapsulated") else ts.ExplicitVRLittleEndian
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the file's bytes as they are
    caplog.set_level(logging.WARNING, logger="gateway.dicom.storage")
    with Modality(gateway, syntax) as mr:
        assert mr.assoc.accepted_contexts[0].transfer_syntax[0] == syntax
        assert mr.store(path) == CANNOT_UNDERSTAND
        assert InstanceRow.select().count() == 0 and files(app, "archive") == files(app, "held") == []
        assert list(app.store.archive.incoming.iterdir()) == []
        [line] = [r.getMessage() for r in caplog.records if "not stored" in r.getMessage()]
        assert reason in line and "status 0xC000" in line
        good = jpeg() if syntax.is_encapsulated else instance()
        assert mr.store(good) == SUCCESS  # the association goes on
    assert InstanceRow.select().count() == 1


def test_sequences_nested_too_deep_are_refused_without_exhausting_the_stack(tmp_path):
    ds = instance()
    opening = b"\x40\x00\x30\xa7SQ\0\0\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # Content Sequence, item
    closing = b"\xfe\xff\x0d\xe0\0\0\0\0" + b"\xfe\xff\xdd\xe0\0\0\0\0"
    nested = opening * 5000 + closing * 5000  # 5000 levels in 120 KB, undefined lengths all the way down
    body = encode(ds, False, True)
    at = body.index(PIXEL_DATA_TAG)
    path = part10(tmp_path / "deep.dcm", ds, body[:at] + nested + body[at:])
    with pytest.raises(IncompleteInstance, match="nested more than"):
        check_whole(path)
    shallow = part10(tmp_path / "shallow.dcm", ds, body[:at] + opening * 50 + closing * 50 + body[at:])
    check_whole(shallow)
