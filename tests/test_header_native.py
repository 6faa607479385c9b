"""The native header reader (store/header_native.py) gives what the pydicom path gives, for
every file: the same header where it reads one, and ``None`` (the pydicom path decides,
errors included) where it cannot be sure."""

from __future__ import annotations

import os
import random
import struct
import warnings
from pathlib import Path

import pytest
from pydicom import config, dcmread
from pydicom.data import get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, RLELossless)

from store import header as h
from store import header_native as hn
from tests.dicom_factory import make_instance, write_instance
from tests.test_header_raw import VARIANTS
from tests.test_store_integrity import damaged_files, enhanced_with_sequences

SYNTAXES = {"implicit": ImplicitVRLittleEndian, "explicit": ExplicitVRLittleEndian, "big": ExplicitVRBigEndian,
            "jpeg": JPEGBaseline8Bit, "j2k": JPEG2000Lossless, "rle": RLELossless}
ENCAPSULATED = {JPEGBaseline8Bit, JPEG2000Lossless, RLELossless}


def reference(path) -> h.InstanceHeader:
    """What pydicom converts, every value (tests/test_header_raw.py's reference)."""
    ds = dcmread(path, stop_before_pixels=True, specific_tags=list(h.HEADER_TAGS))
    return h._header_of(ds, raw=False)


def outcome(read, path):
    """The header ``read`` gives, or the error it raises (type and message; not only
    UnreadableInstance: an unknown VR for a wanted tag raises pydicom's NotImplementedError)."""
    try:
        return read(path)
    except Exception as exc:
        return type(exc), str(exc)


def pydicom_read_header(path, monkeypatch):
    """read_header as it was: the pydicom path only."""
    with monkeypatch.context() as m:
        m.setattr(hn, "native_header", lambda path: None)
        return outcome(h.read_header, path)


def assert_same(path, monkeypatch, *, native: bool | None = None):
    """The native header, when there is one, is the pydicom path's and the reference's; and
    read_header gives what it gave before, header or error. ``native``: whether the fast
    path must be taken (True), must not be (False), or either (None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the odd files of its own corpus
        fast = hn.native_header(path)
        if native is not None:
            assert (fast is not None) is native, f"{path}: native {'not ' if native else ''}taken"
        if fast is not None:
            assert fast == h._pydicom_header(Path(path)), path
            assert fast == reference(path), path
        assert outcome(h.read_header, path) == pydicom_read_header(path, monkeypatch), path
    return fast


def instance(syntax=ExplicitVRLittleEndian, **overrides) -> Dataset:
    ds = make_instance(transfer_syntax_uid=syntax, **overrides)
    if syntax in ENCAPSULATED:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = encapsulate([b"\xff\xd8 one frame \xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds


def save(path: Path, ds: Dataset) -> Path:
    return write_instance(path, ds)


# ----------------------------------------------------------------------------- bytes by hand


def element(tag: int, vr: str, value: bytes, *, implicit=False, little=True) -> bytes:
    """One element; ``value`` as it is (no padding added)."""
    end = "<" if little else ">"
    head = struct.pack(end + "HH", tag >> 16, tag & 0xFFFF)
    length = 0xFFFFFFFF if value is None else len(value)
    value = value or b""
    if implicit:
        return head + struct.pack(end + "L", length) + value
    if vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"):
        return head + vr.encode() + b"\0\0" + struct.pack(end + "L", length) + value
    return head + vr.encode() + struct.pack(end + "H", length) + value


def item(content: bytes | None, *, undefined=True, little=True) -> bytes:
    end = "<" if little else ">"
    if undefined:
        delimiter = struct.pack(end + "HHL", 0xFFFE, 0xE00D, 0)
        return struct.pack(end + "HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + content + delimiter
    return struct.pack(end + "HHL", 0xFFFE, 0xE000, len(content)) + content


def sequence_end(little=True) -> bytes:
    return struct.pack(("<" if little else ">") + "HHL", 0xFFFE, 0xE0DD, 0)


def meta(syntax: str, *, group_length=True) -> bytes:
    uid = syntax.encode() + (b"\0" if len(syntax) % 2 else b"")
    body = (element(0x00020001, "OB", b"\0\1") + element(0x00020002, "UI", b"1.2.840.10008.5.1.4.1.1.2\0")
            + element(0x00020003, "UI", b"1.2.3.4") + element(0x00020010, "UI", uid)
            + element(0x00020012, "UI", b"1.2.826.0.1.3680043.8.498.1\0"))
    if group_length:
        body = element(0x00020000, "UL", struct.pack("<L", len(body))) + body
    return b"\0" * 128 + b"DICM" + body


#: The wanted attributes of a minimal instance: tag -> (VR, value).
MINIMAL = {0x00080016: ("UI", b"1.2.840.10008.5.1.4.1.1.2\0"), 0x00080018: ("UI", b"1.2.3.4"),
           0x00080060: ("CS", b"CT"), 0x00100010: ("PN", b"DOE^JANE"), 0x00100020: ("LO", b"MRN5001 "),
           0x0020000D: ("UI", b"1.2.3.5\0"), 0x0020000E: ("UI", b"1.2.3.6\0")}


def dataset(extra: dict[int, tuple[str, bytes | None]] = (), *, implicit=False, little=True, pixels=True,
            raw: dict[int, bytes] = ()) -> bytes:
    """MINIMAL with ``extra`` elements (tag -> VR, value; a value None removes the tag) and
    ``raw`` elements (tag -> their encoded bytes), in tag order, then Pixel Data."""
    elements = {tag: element(tag, vr, value, implicit=implicit, little=little) for tag, (vr, value) in MINIMAL.items()}
    for tag, (vr, value) in dict(extra).items():
        if value is None:
            elements.pop(tag, None)
        else:
            elements[tag] = element(tag, vr, value, implicit=implicit, little=little)
    elements.update(dict(raw))
    if pixels:
        elements[0x7FE00010] = element(0x7FE00010, "OW", b"\0" * 32, implicit=implicit, little=little)
    return b"".join(elements[tag] for tag in sorted(elements))


def written(tmp_path: Path, data: bytes, name="x.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------- the corpus, by file


@pytest.mark.parametrize("syntax", SYNTAXES.values(), ids=SYNTAXES.keys())
@pytest.mark.parametrize("overrides", VARIANTS, ids=range(len(VARIANTS)))
def test_the_raw_variants_in_every_syntax(tmp_path, monkeypatch, syntax, overrides):
    path = save(tmp_path / "x.dcm", instance(syntax, **overrides))
    assert_same(path, monkeypatch)


@pytest.mark.parametrize("syntax", SYNTAXES.values(), ids=SYNTAXES.keys())
def test_an_ordinary_instance_is_read_natively(tmp_path, monkeypatch, syntax):
    ct = instance(syntax, SOPClassUID=CTImageStorage, Modality="CT", ReferringPhysicianName="SMITH^JOHN^^DR")
    fast = assert_same(save(tmp_path / "ct.dcm", ct), monkeypatch, native=True)
    assert fast.modality == "CT" and fast.patient_name == "DOE^JANE^Q" and fast.transfer_syntax_uid == syntax
    assert fast.referring_physician == "SMITH^JOHN^^DR" and fast.patient_id == "MRN5001"


def test_read_header_does_not_call_pydicom_for_ordinary_files(tmp_path, monkeypatch):
    calls = []
    real = h.dcmread

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(h, "dcmread", counting)
    ordinary = [instance(syntax, SOPClassUID=CTImageStorage, Modality="CT") for syntax in SYNTAXES.values()]
    ordinary += [instance(**overrides) for overrides in VARIANTS[:6]]  # the ASCII ones
    for n, ds in enumerate(ordinary):
        h.read_header(save(tmp_path / f"{n}.dcm", ds))
    assert calls == []
    latin = save(tmp_path / "latin.dcm", instance(PatientName="M\u00fcller^Anna"))  # ISO_IR 100, decoded natively
    assert h.read_header(latin).patient_name == "M\u00fcller^Anna"
    odd = save(tmp_path / "odd.dcm", instance(SpecificCharacterSet="ISO_IR 13", StudyDescription="KNEE"))
    assert h.read_header(odd).study_description == "KNEE"
    assert calls == [odd]


def test_the_files_of_the_test_suite(tmp_path, monkeypatch):
    """The damaged files of tests/test_store_integrity.py and its enhanced instance."""
    corpus = [path for path, _ in damaged_files(tmp_path / "damaged").values()]
    corpus.append(save(tmp_path / "enhanced.dcm", enhanced_with_sequences()))
    for path in corpus:
        assert_same(path, monkeypatch)
    # the cut files that are cut in the pixel data (after every wanted tag) are read natively
    assert hn.native_header(corpus[0]) is not None


PYDICOM_FILES = [f for f in get_testdata_files() if os.path.isfile(f)]


def test_pydicom_has_its_test_files():
    assert len(PYDICOM_FILES) > 150


@pytest.mark.parametrize("path", PYDICOM_FILES, ids=lambda f: Path(f).name)
def test_the_test_files_of_pydicom(monkeypatch, path):
    assert_same(path, monkeypatch)


def test_most_of_pydicom_files_are_read_natively():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        natively = sum(hn.native_header(path) is not None for path in PYDICOM_FILES)
    assert natively > len(PYDICOM_FILES) * 2 // 3, natively


# ---------------------------------------------------------------------- generated variants


VALUES = {
    "odd lengths": {0x00100020: ("LO", b"MRN"), 0x00080050: ("SH", b"A1B")},
    "even, NUL padded": {0x00100020: ("LO", b"MRN5\0"), 0x00200013: ("IS", b"12\0\0")},
    "space padded both sides": {0x00100020: ("LO", b"  MRN5 "), 0x00081030: ("LO", b" BRAIN  ")},
    "empty values": {0x00100020: ("LO", b""), 0x00100010: ("PN", b""), 0x00080050: ("SH", b""),
                     0x00080005: ("CS", b"")},
    "missing attributes": {0x00100020: (None, None), 0x00100010: (None, None), 0x00080060: (None, None)},
    "multi-valued": {0x00081030: ("LO", b"KNEE\\LEFT "), 0x00200011: ("IS", b" 1\\2 "),
                     0x00100010: ("PN", b"A^B\\C^D ")},
    "empty multi-values": {0x00081030: ("LO", b"\\\\"), 0x00100010: ("PN", b"\\")},
    "PN trailing groups": {0x00100010: ("PN", b"DOE^JANE^^==")},
    "PN trailing carets": {0x00100010: ("PN", b"DOE^^^"), 0x00080090: ("PN", b"^^^^ ")},
    "PN ideographic": {0x00100010: ("PN", b"DOE^J=JD=")},
    "PN spaces in groups": {0x00100010: ("PN", b" DOE ^ J = X ")},
    "PN NUL inside": {0x00100010: ("PN", b"DOE\0^J")},
    "PN NUL padded": {0x00100010: ("PN", b"DOE^J\0")},
    "lower-case codes": {0x00080060: ("CS", b"ct"), 0x00100040: ("CS", b"f "), 0x00200060: ("CS", b"r")},
    "image laterality first": {0x00200060: ("CS", b"R "), 0x00200062: ("CS", b"L ")},
    "image laterality empty": {0x00200060: ("CS", b"R "), 0x00200062: ("CS", b"  ")},
    "Latin-1": {0x00080005: ("CS", b"ISO_IR 100"), 0x00100010: ("PN", b"M\xfcller^Anna")},
    "Latin-1, padded character set": {0x00080005: ("CS", b"ISO_IR 100 "), 0x00081030: ("LO", b"Genou \xe9\\B ")},
    "Latin-1 no-break space": {0x00080005: ("CS", b"ISO_IR 100"), 0x00100020: ("LO", b"\xa0MRN\xa0 ")},
    "Latin-1 bytes without a character set": {0x00100010: ("PN", b"M\xfcller^Anna=\xe9= ")},
    "UTF-8 description": {0x00080005: ("CS", b"ISO_IR 192"), 0x0008103E: ("LO", "\u819d".encode())},
    "UTF-8 cut inside a character": {0x00080005: ("CS", b"ISO_IR 192"), 0x0008103E: ("LO", "\u819d".encode()[:2])},
    "GBK with a backslash byte": {0x00080005: ("CS", b"GBK"), 0x00100010: ("PN", b"\x81\x5c^\xc4\xe3")},
    "undefined in ISO 8859-3": {0x00080005: ("CS", b"ISO_IR 109"), 0x00100020: ("LO", b"\xa5 ")},
    "a Latin-1 byte in a code string": {0x00080005: ("CS", b"ISO_IR 100"), 0x00100040: ("CS", b"\xe9")},
    "an unlisted character set": {0x00080005: ("CS", b"ISO_IR 999"), 0x00100020: ("LO", b"\xe9")},
    "ISO 2022 escape": {0x00080005: ("CS", b"\\ISO 2022 IR 87"), 0x00100010: ("PN", b"\x1b$B;3ED\x1b(B^J")},
    "JIS X 0201": {0x00080005: ("CS", b"ISO_IR 13"), 0x00100020: ("LO", b"A~B")},
    "control byte in a UID": {0x00080018: ("UI", b"1.2.3\x01")},
    "malformed UID": {0x00080018: ("UI", b"1.2.abc")},
    "no SOP Instance UID": {0x00080018: (None, None)},
    "a 65-character UID": {0x0020000D: ("UI", b"1." + b"2" * 63)},
    "wrong VR for a wanted tag": {0x00080060: ("LO", b"CT")},
    "UN for a wanted tag": {0x00100020: ("UN", b"MRN5001 ")},
    "wanted sequence present": {0x00400275: ("SQ", item(element(0x00080050, "SH", b"ACC9"), undefined=False))},
    "empty wanted sequence": {0x00400275: ("SQ", b"")},
    "shared groups present": {0x52009229: ("SQ", b"")},
    "group length elements": {0x00080000: ("UL", b"\0\0\0\0"), 0x00100000: ("UL", b"\x10\0\0\0")},
    "private tags": {0x00090010: ("LO", b"ACME 1.0"), 0x00091001: ("OB", b"\1\2\3\4"), 0x00191010: ("UN", b"xy")},
}


def _generated(tmp_path, name, *, implicit=False, little=True):
    extra = VALUES[name]
    if implicit and any(vr and tag in hn._WANTED and vr.encode() != hn._WANTED[tag][1]
                        for tag, (vr, _) in extra.items()):
        pytest.skip("a wrong VR cannot be written in Implicit VR")
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return written(tmp_path, meta(syntax) + dataset(extra, implicit=implicit, little=little))


@pytest.mark.parametrize("encoding", ["explicit", "implicit", "big"])
@pytest.mark.parametrize("name", VALUES)
def test_generated_values(tmp_path, monkeypatch, name, encoding):
    path = _generated(tmp_path, name, implicit=encoding == "implicit", little=encoding != "big")
    assert_same(path, monkeypatch)


NATIVE = ["odd lengths", "even, NUL padded", "space padded both sides", "empty values", "missing attributes",
          "multi-valued", "empty multi-values", "PN trailing groups", "PN trailing carets", "PN ideographic",
          "PN spaces in groups", "PN NUL padded", "lower-case codes", "image laterality first",
          "image laterality empty", "malformed UID", "no SOP Instance UID", "Latin-1", "Latin-1, padded character set",
          "Latin-1 no-break space", "Latin-1 bytes without a character set", "UTF-8 description",
          "GBK with a backslash byte", "wanted sequence present", "empty wanted sequence",
          "a 65-character UID", "group length elements", "private tags"]
LEFT_TO_PYDICOM = ["PN NUL inside", "UTF-8 cut inside a character", "undefined in ISO 8859-3",
                   "a Latin-1 byte in a code string", "an unlisted character set", "ISO 2022 escape", "JIS X 0201",
                   "control byte in a UID", "wrong VR for a wanted tag", "UN for a wanted tag",
                   "shared groups present"]


def test_every_generated_variant_is_classified():
    assert sorted(NATIVE + LEFT_TO_PYDICOM) == sorted(VALUES)


@pytest.mark.parametrize("name", NATIVE)
def test_which_variants_are_read_natively(tmp_path, monkeypatch, name):
    assert_same(_generated(tmp_path, name), monkeypatch, native=True)


@pytest.mark.parametrize("name", LEFT_TO_PYDICOM)
def test_which_variants_are_left_to_pydicom(tmp_path, monkeypatch, name):
    assert_same(_generated(tmp_path, name), monkeypatch, native=False)


def test_values_as_read(tmp_path):
    def read(name):
        return hn.native_header(_generated(tmp_path, name))

    assert read("multi-valued").study_description == "KNEE\\LEFT"
    assert read("multi-valued").series_number == "1\\2"
    assert read("multi-valued").patient_name == "A^B\\C^D"
    assert read("PN trailing groups").patient_name == "DOE^JANE^^"
    assert read("PN ideographic").patient_name == "DOE^J=JD"
    assert read("PN trailing carets").referring_physician == "^^^^"
    assert read("space padded both sides").patient_id == "MRN5"
    assert read("lower-case codes").modality == "CT" and read("lower-case codes").laterality == "R"
    assert read("image laterality first").laterality == "L"
    assert read("image laterality empty").laterality == "R"
    assert read("missing attributes").patient_name == "" and read("missing attributes").modality == ""
    assert read("Latin-1").patient_name == "M\u00fcller^Anna"
    assert read("Latin-1, padded character set").study_description == "Genou \u00e9\\B"
    assert read("Latin-1 no-break space").patient_id == "MRN"  # str.strip() takes U+00A0 too
    assert read("Latin-1 bytes without a character set").patient_name == "M\u00fcller^Anna=\u00e9"
    assert read("UTF-8 description").series_description == "\u819d"
    assert read("GBK with a backslash byte").patient_name == b"\x81\x5c^\xc4\xe3".decode("gbk")  # one value


@pytest.mark.parametrize("charset", sorted(hn._CODECS), ids=lambda c: c.decode() or "none")
def test_random_text_under_each_decoded_character_set(tmp_path, monkeypatch, charset):
    """SH, LO and PN values of random bytes (padding, backslashes, '=' and '^' among them):
    the native decoding is pydicom's, or the file is left to pydicom."""
    rng = random.Random(charset)
    codec = hn._CODECS[charset]
    alphabet = b"AZaz09 ^=\\\x00" + bytes(range(0x80, 0x100))
    letters = [c for c in (bytes([b]).decode(codec, "ignore") for b in range(0xA0, 0x100)) if c]
    letters += ["\u819d", "\u4e2d", "\u00fc"] if codec.lower() in ("utf8", "gb18030", "gbk") else []

    def value(n):
        if n % 2:  # random bytes: often not text in the character set
            return bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 9) * 2))
        text = "".join(rng.choice(letters + list("AZ ^=\\")) for _ in range(rng.randrange(0, 8))).encode(codec)
        return text + b" " * (len(text) % 2)

    for n in range(16):
        values = {tag: (vr, value(n)) for tag, vr in ((0x00080050, "SH"), (0x00081030, "LO"), (0x00100010, "PN"),
                                                      (0x00080090, "PN"))}
        if charset:
            values[0x00080005] = ("CS", charset + b" " * (len(charset) % 2))
        path = written(tmp_path, meta(ExplicitVRLittleEndian) + dataset(values), f"{n}.dcm")
        assert_same(path, monkeypatch)


@pytest.mark.parametrize("syntax", [JPEGBaseline8Bit, RLELossless], ids=["jpeg", "rle"])
def test_encapsulated_syntaxes_are_explicit_little_endian(tmp_path, monkeypatch, syntax):
    pixels = element(0x7FE00010, "OB", None) + item(b"", undefined=False) + item(b"\xff\xd8\xff\xd9", undefined=False)
    path = written(tmp_path, meta(syntax) + dataset(pixels=False, raw={0x7FE00010: pixels + sequence_end()}))
    assert assert_same(path, monkeypatch, native=True).transfer_syntax_uid == syntax


def test_deflated_is_left_to_pydicom(tmp_path, monkeypatch):
    path = save(tmp_path / "d.dcm", instance(DeflatedExplicitVRLittleEndian))
    assert assert_same(path, monkeypatch, native=False) is None
    assert h.read_header(path).transfer_syntax_uid == DeflatedExplicitVRLittleEndian


def test_an_unknown_or_missing_transfer_syntax_is_left_to_pydicom(tmp_path, monkeypatch):
    unknown = written(tmp_path, meta("1.2.3.4.5") + dataset(), "unknown.dcm")
    assert_same(unknown, monkeypatch, native=False)
    no_syntax = meta(ExplicitVRLittleEndian, group_length=False).replace(
        element(0x00020010, "UI", ExplicitVRLittleEndian.encode() + b"\0"), b"")
    assert_same(written(tmp_path, no_syntax + dataset(), "none.dcm"), monkeypatch, native=False)


def test_a_file_meta_without_its_group_length(tmp_path, monkeypatch):
    path = written(tmp_path, meta(ExplicitVRLittleEndian, group_length=False) + dataset())
    assert assert_same(path, monkeypatch, native=True).sop_instance_uid == "1.2.3.4"


def test_a_transfer_syntax_with_trailing_padding(tmp_path, monkeypatch):
    padded = meta(ExplicitVRLittleEndian).replace(ExplicitVRLittleEndian.encode() + b"\0",
                                                  ExplicitVRLittleEndian.encode() + b" ")
    fast = assert_same(written(tmp_path, padded + dataset()), monkeypatch, native=True)
    assert fast.transfer_syntax_uid == ExplicitVRLittleEndian


# ------------------------------------------------------------------- structure and sequences


def private_sequence(*, implicit=False, little=True, undefined_items=True) -> bytes:
    inner = element(0x00091001, "LO", b"x ", implicit=implicit, little=little)
    nested = (element(0x00091002, "SQ", None, implicit=implicit, little=little)
              + item(inner, undefined=undefined_items, little=little) + sequence_end(little))
    content = inner + nested
    return (element(0x00091010, "SQ", None, implicit=implicit, little=little)
            + item(content, undefined=undefined_items, little=little) + item(inner, undefined=False, little=little)
            + sequence_end(little))


@pytest.mark.parametrize("encoding", ["explicit", "implicit", "big"])
@pytest.mark.parametrize("undefined_items", [True, False], ids=["undefined items", "defined items"])
def test_an_undefined_length_private_sequence_before_wanted_tags_is_walked(tmp_path, monkeypatch, encoding,
                                                                           undefined_items):
    implicit, little = encoding == "implicit", encoding != "big"
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    raw = {0x00090010: element(0x00090010, "LO", b"ACME", implicit=implicit, little=little),
           0x00091010: private_sequence(implicit=implicit, little=little, undefined_items=undefined_items)}
    path = written(tmp_path, meta(syntax) + dataset(implicit=implicit, little=little, raw=raw))
    assert assert_same(path, monkeypatch, native=True).patient_id == "MRN5001"


def test_a_referenced_image_sequence_and_un_sequences(tmp_path, monkeypatch):
    ref = make_instance(SOPClassUID=CTImageStorage)
    refd = Dataset()
    refd.ReferencedSOPClassUID, refd.ReferencedSOPInstanceUID = CTImageStorage, "1.2.3"
    ref.ReferencedImageSequence = Sequence([refd, refd])
    ref.ReferencedImageSequence.is_undefined_length = True
    for ds_item in ref.ReferencedImageSequence:
        ds_item.is_undefined_length_sequence_item = True
    assert_same(save(tmp_path / "ref.dcm", ref), monkeypatch, native=True)
    # an undefined-length UN holding an Implicit VR sequence (PS3.5 6.2.2), as some gateways forward them
    un = element(0x00091010, "UN", None) + item(element(0x00091001, "LO", b"x ", implicit=True)) + sequence_end()
    path = written(tmp_path, meta(ExplicitVRLittleEndian) + dataset(raw={0x00090010: element(0x00090010, "LO", b"AC"),
                                                                          0x00091010: un}), "un.dcm")
    assert_same(path, monkeypatch, native=True)


PIXELS = element(0x7FE00010, "OW", b"\0" * 32)
DAMAGED_STRUCTURE = {
    "an empty file": lambda d: b"",
    "no DICM": lambda d: d[:128] + b"DICX" + d[132:],
    "cut inside the file meta": lambda d: d[:150],
    "cut inside an element header": lambda d: d[:d.index(b"\x10\x00\x20\x00") + 5],  # (0010,0020)
    "cut inside a wanted value": lambda d: d[:d.index(b"MRN5001") + 3],
    "cut right after the file meta": lambda d: d[:d.index(b"\x08\x00\x16\x00")],
    "a value length past the end": lambda d: d[:d.index(b"\x10\x00\x20\x00") + 6] + b"\xff\x7f" + d[
        d.index(b"\x10\x00\x20\x00") + 8:],
    "an element claiming 4 GB before the pixel data": lambda d: d.replace(
        PIXELS, b"\xdf\x7f\x10\x00OB\0\0\xfe\xff\xff\xff" + PIXELS),
    "tags out of order": lambda d: d.replace(element(0x00080060, "CS", b"CT"), b"").replace(
        PIXELS, element(0x00080060, "CS", b"MR") + PIXELS),
    "a repeated tag": lambda d: d.replace(element(0x00080060, "CS", b"CT"),
                                          element(0x00080060, "CS", b"CT") + element(0x00080060, "CS", b"MR")),
    "an unknown VR": lambda d: d.replace(element(0x00080060, "CS", b"CT"), element(0x00080060, "XX", b"CT")),
    "implicit bytes after an explicit meta": None,
    "a command set group": None,
    "an undefined-length value that is not a sequence": None,
    "a sequence without its delimiter": None,
    "an item delimiter at the top level": None,
    "a wrong tag where an item should be": None,
    "a defined-length item cut short": None,
    "nesting deeper than the limit": None,
}


def damaged(name: str) -> bytes:
    whole = meta(ExplicitVRLittleEndian) + dataset()
    make = DAMAGED_STRUCTURE[name]
    if make is not None:
        return make(whole)
    head = meta(ExplicitVRLittleEndian)
    before = {0x00090010: element(0x00090010, "LO", b"ACME")}
    if name == "implicit bytes after an explicit meta":
        return head + dataset(implicit=True)
    if name == "a command set group":
        return head + element(0x00000002, "UI", b"1.2\0", implicit=True) + dataset()
    if name == "an undefined-length value that is not a sequence":
        return head + dataset(raw={**before, 0x00091010: element(0x00091010, "OB", None) + b"\1\2" + sequence_end()})
    if name == "a sequence without its delimiter":
        return head + dataset(raw={**before, 0x00091010: element(0x00091010, "SQ", None) + item(b"")})
    if name == "an item delimiter at the top level":
        return head + dataset(raw={0x00090010: struct.pack("<HHL", 0xFFFE, 0xE00D, 0)})
    if name == "a wrong tag where an item should be":
        return head + dataset(raw={**before, 0x00091010: element(0x00091010, "SQ", None)
                                   + struct.pack("<HHL", 0xFFFE, 0xE001, 0) + sequence_end()})
    if name == "a defined-length item cut short":
        bad = struct.pack("<HHL", 0xFFFE, 0xE000, 12) + element(0x00091001, "LO", b"x ")
        return head + dataset(raw={**before, 0x00091010: element(0x00091010, "SQ", None) + bad + sequence_end()})
    if name == "nesting deeper than the limit":
        nested = b""
        for _ in range(hn.MAX_DEPTH + 2):
            nested = element(0x00091010, "SQ", None) + item(nested) + sequence_end()
        return head + dataset(raw={**before, 0x00091010: nested})
    raise AssertionError(name)


@pytest.mark.parametrize("name", DAMAGED_STRUCTURE)
def test_structural_surprises_are_left_to_pydicom(tmp_path, monkeypatch, name):
    path = written(tmp_path, damaged(name))
    assert_same(path, monkeypatch, native=False)


def test_a_file_that_is_not_there(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError):
        h.read_header(tmp_path / "missing.dcm")
    with pytest.raises(IsADirectoryError):
        h.read_header(tmp_path)


# --------------------------------------------------------------------------------- the edges


def test_a_header_longer_than_the_first_read(tmp_path, monkeypatch):
    """A private blob larger than the buffer before the patient, and a wanted value that
    straddles the end of the buffer."""
    blob = element(0x00091001, "OB", b"\7" * (3 * hn.BUFFER + 2))
    raw = {0x00090010: element(0x00090010, "LO", b"ACME"), 0x00091001: blob}
    fast = assert_same(written(tmp_path, meta(ExplicitVRLittleEndian) + dataset(raw=raw)), monkeypatch, native=True)
    assert fast.patient_id == "MRN5001"
    starts = []
    for shift in range(14):  # move (0010,0020) (8 bytes of header, 8 of value) across the end of the first read
        filler = element(0x00091001, "OB", b"\7" * (hn.BUFFER - 390 + shift * 2))
        data = meta(ExplicitVRLittleEndian) + dataset(raw={0x00090010: element(0x00090010, "LO", b"ACME"),
                                                           0x00091001: filler})
        starts.append(data.index(b"\x10\x00\x20\x00LO") - hn.BUFFER)
        assert assert_same(written(tmp_path, data, f"s{shift}.dcm"), monkeypatch, native=True).patient_id == "MRN5001"
    assert min(starts) < -16 and max(starts) > 0  # before, across (header, then value) and after the end


def test_a_wanted_value_longer_than_the_buffer(tmp_path, monkeypatch):
    monkeypatch.setattr(hn, "BUFFER", 1024)
    long = {0x00081030: ("LO", b"X" * 64), 0x00100020: ("LO", b"P" * 5001 + b" ")}  # too long for LO: kept as sent
    fast = assert_same(written(tmp_path, meta(ExplicitVRLittleEndian) + dataset(long)), monkeypatch, native=True)
    assert fast.patient_id == "P" * 5001 and fast.patient_name == "DOE^JANE"


def test_a_tag_exactly_at_pixel_data(tmp_path, monkeypatch):
    """Reading stops at (7FE0,0010) whatever follows; (7FE0,0008) and (7FE0,0009) stop it too."""
    after = meta(ExplicitVRLittleEndian) + dataset() + b"\xfc\xff\xfc\xffOB\0\0\xfe\xff\xff\xff"  # claims 4 GB
    assert_same(written(tmp_path, after, "after.dcm"), monkeypatch, native=True)
    head = meta(ExplicitVRLittleEndian) + dataset(pixels=False)
    garbage = b"\xe0\x7f\x10\x00OW\0\0\xff\xff\xff\x7f"  # a length far past the end: never looked at
    assert assert_same(written(tmp_path, head + garbage), monkeypatch, native=True).patient_id == "MRN5001"
    for tag in (0x7FE00008, 0x7FE00009):
        stop = element(tag, "OF", b"\0" * 8)[:8] + b"\xff\xff\xff\x7f"
        assert_same(written(tmp_path, head + stop, f"{tag:x}.dcm"), monkeypatch, native=True)
    # just before (7FE0,0010) is an element like any other
    before = element(0x7FDF0010, "OB", b"\0\0")
    assert_same(written(tmp_path, head + before + garbage, "before.dcm"), monkeypatch, native=True)
    only_header_of_pixels = head + b"\xe0\x7f\x10\x00OW"  # cut inside the Pixel Data element's header
    assert_same(written(tmp_path, only_header_of_pixels, "cut.dcm"), monkeypatch, native=False)


def test_a_file_that_ends_right_after_the_last_wanted_element(tmp_path, monkeypatch):
    data = meta(ExplicitVRLittleEndian) + dataset(pixels=False)
    assert data.endswith(element(0x0020000E, "UI", b"1.2.3.6\0"))
    assert assert_same(written(tmp_path, data), monkeypatch, native=True).series_instance_uid == "1.2.3.6"
    # the same, cut by one byte: pydicom keeps the short value; the native reader leaves it to pydicom
    assert_same(written(tmp_path, data[:-1], "cut.dcm"), monkeypatch, native=False)


def test_elements_after_the_pixel_data_position_without_pixel_data(tmp_path, monkeypatch):
    """No pixel data (an SR): pydicom reads to the end of the file, and so does the walk."""
    tail = element(0xFFFAFFFA, "SQ", b"") + element(0xFFFCFFFC, "OB", b"\0\0")
    path = written(tmp_path, meta(ExplicitVRLittleEndian) + dataset(pixels=False) + tail)
    assert_same(path, monkeypatch, native=True)


def test_a_pydicom_configuration_that_changes_reading_leaves_it_to_pydicom(tmp_path, monkeypatch):
    path = save(tmp_path / "x.dcm", instance())
    monkeypatch.setattr(config.settings, "reading_validation_mode", config.RAISE)
    assert hn.native_header(path) is None


def test_the_character_sets_that_keep_ascii():
    """Person names are taken raw under every character set but JIS X 0201: there printable
    ASCII decodes to the same text with every codec pydicom uses."""
    from pydicom.charset import python_encoding

    ascii_bytes = bytes(range(0x20, 0x7F))
    for name, codec in python_encoding.items():
        assert ascii_bytes.decode(codec) == ascii_bytes.decode("ascii"), name


# ------------------------------------------------- Request Attributes Sequence (0040,0275)

REQUESTS = 0x00400275


def requests_sequence(name: str, implicit: bool, little: bool) -> bytes:
    """The encoded Request Attributes Sequence of variant ``name``."""
    def e(tag, vr, value):
        return element(tag, vr, value, implicit=implicit, little=little)

    def it(content, undefined=True):
        return item(content, undefined=undefined, little=little)

    end = sequence_end(little)
    code = e(0x00080100, "SH", b"P1") + e(0x00080102, "SH", b"99LOCAL ")
    if name == "one item, defined lengths":
        return e(REQUESTS, "SQ", it(e(0x00080050, "SH", b"ACC9"), undefined=False))
    if name == "two items, the second without accession":
        first = e(0x00080050, "SH", b"ACC1") + e(0x00400009, "SH", b"SPS1")
        return e(REQUESTS, "SQ", None) + it(first) + it(e(0x00401001, "SH", b"RP2 ")) + end
    if name == "empty, defined":
        return e(REQUESTS, "SQ", b"")
    if name == "empty, undefined":
        return e(REQUESTS, "SQ", None) + end
    if name == "an empty item":
        return e(REQUESTS, "SQ", it(b"", undefined=False))
    if name == "a nested sequence in the item":
        nested = e(0x00400008, "SQ", None) + it(code) + end
        return e(REQUESTS, "SQ", None) + it(e(0x00080050, "SH", b"ACC7 ") + nested) + end
    if name == "a defined sequence holding undefined items":
        body = it(e(0x00080050, "SH", b"ACC3")) + it(e(0x00080050, "SH", b" ACC4 "))
        return e(REQUESTS, "SQ", body)
    if name == "a Latin-1 accession":
        return e(REQUESTS, "SQ", it(e(0x00080050, "SH", b"N\xb0 5 "), undefined=False))
    if name == "a character set of its own":
        inner = e(0x00080005, "CS", b"ISO_IR 192") + e(0x00080050, "SH", b"ACC5")
        return e(REQUESTS, "SQ", it(inner, undefined=False))
    if name == "an accession that is not SH":
        return e(REQUESTS, "SQ", it(e(0x00080050, "LO", b"ACC6"), undefined=False))
    if name == "an item past the sequence's end":
        body = it(e(0x00080050, "SH", b"ACC8"), undefined=False)
        head = e(REQUESTS, "SQ", body)
        return head[:-len(body)][:-4] + struct.pack("<L" if little else ">L", len(body) - 4) + body
    if name == "an accession of undefined length":
        return e(REQUESTS, "SQ", None) + it(e(0x00080050, "SH", None)) + end
    raise AssertionError(name)


READ_NATIVELY = {
    "one item, defined lengths": ("ACC9",),
    "two items, the second without accession": ("ACC1", ""),
    "empty, defined": (),
    "empty, undefined": (),
    "an empty item": ("",),
    "a nested sequence in the item": ("ACC7",),
    "a defined sequence holding undefined items": ("ACC3", "ACC4"),
    "a Latin-1 accession": ("N\u00b0 5",),
}
LEFT_ALONE = ["a character set of its own", "an accession that is not SH", "an item past the sequence's end",
              "an accession of undefined length"]


def _with_requests(tmp_path, name, encoding):
    implicit, little = encoding == "implicit", encoding != "big"
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    charset = {0x00080005: ("CS", b"ISO_IR 100")} if name == "a Latin-1 accession" else {}
    raw = {REQUESTS: requests_sequence(name, implicit, little)}
    return written(tmp_path, meta(syntax) + dataset(charset, implicit=implicit, little=little, raw=raw))


@pytest.mark.parametrize("encoding", ["explicit", "implicit", "big"])
@pytest.mark.parametrize("name", READ_NATIVELY)
def test_the_accessions_of_the_request_attributes_sequence_are_read_natively(tmp_path, monkeypatch, name, encoding):
    header = assert_same(_with_requests(tmp_path, name, encoding), monkeypatch, native=True)
    assert header.request_accession_numbers == READ_NATIVELY[name]


@pytest.mark.parametrize("encoding", ["explicit", "implicit", "big"])
@pytest.mark.parametrize("name", LEFT_ALONE)
def test_a_request_attributes_sequence_in_doubt_is_left_to_pydicom(tmp_path, monkeypatch, name, encoding):
    if name == "an accession that is not SH" and encoding == "implicit":
        pytest.skip("a VR cannot be written in Implicit VR")
    if name == "an accession of undefined length" and encoding != "implicit":
        pytest.skip("an SH has a 16-bit length in Explicit VR")
    assert_same(_with_requests(tmp_path, name, encoding), monkeypatch, native=False)


def test_a_modality_instance_with_its_request_attributes_is_read_natively(tmp_path, monkeypatch):
    ds = instance()
    request = Dataset()
    request.AccessionNumber = "ACC1001"
    request.RequestedProcedureID = "RP1"
    request.ScheduledProcedureStepID = "SPS1"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "73721", "CPT", "MRI KNEE"
    request.ScheduledProtocolCodeSequence = Sequence([code])
    ds.RequestAttributesSequence = Sequence([request])
    header = assert_same(save(tmp_path / "mr.dcm", ds), monkeypatch, native=True)
    assert header.request_accession_numbers == ("ACC1001",)
