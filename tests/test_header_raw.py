"""The header read takes plain values from their bytes (store/header.py ``_raw_text``): it must
give what pydicom's conversion gives, for every attribute, encoding and padding met."""

from __future__ import annotations

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from store import header as h
from tests.dicom_factory import make_instance

VARIANTS = [
    {},
    {"InstanceNumber": " 12", "SeriesNumber": "3 ", "StudyTime": "101500.123"},
    {"Modality": "mr", "PatientSex": "f", "Laterality": "L", "ImageLaterality": ""},
    {"StudyDate": "2026.12.01"},  # ACR-NEMA date, kept as sent
    {"AccessionNumber": "ACC 1001 ", "StudyID": "", "StudyDescription": "KNEE\\LEFT"},  # two values
    {"PatientID": "PID\x00"},
    {"SpecificCharacterSet": "ISO_IR 100", "StudyDescription": "Genou gauche \u00e9", "PatientName": "M\u00fcller^Anna"},
    {"SpecificCharacterSet": "ISO_IR 192", "SeriesDescription": "\u819d MR", "PatientName": "Yamada^Tarou"},
    {"SpecificCharacterSet": "ISO_IR 13", "StudyDescription": "KNEE~\\RIGHT"},
    {"SpecificCharacterSet": None, "ReferringPhysicianName": "Doe^John^^Dr"},
]


def _saved(tmp_path, syntax, overrides):
    ds = make_instance(transfer_syntax_uid=syntax, **overrides)
    path = tmp_path / "x.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"])
@pytest.mark.parametrize("overrides", VARIANTS, ids=range(len(VARIANTS)))
def test_raw_values_read_as_pydicom_converts_them(tmp_path, syntax, overrides):
    path = _saved(tmp_path, syntax, overrides)
    fast = h._header_of(dcmread(path, stop_before_pixels=True, specific_tags=list(h.HEADER_TAGS)))
    slow = h._header_of(dcmread(path, stop_before_pixels=True, specific_tags=list(h.HEADER_TAGS)), raw=False)
    assert fast == slow
    assert h.read_header(path) == slow


def test_uid_padding_is_stripped(tmp_path):
    ds = Dataset()
    ds[0x0020000D] = RawDataElement(0x0020000D, "UI", 8, b"1.2.34\x00", 0, False, True)
    assert h._raw_text(ds, "StudyInstanceUID") == "1.2.34"


def test_which_values_are_taken_raw():
    ds = Dataset()
    raw = [(0x00080050, "SH", b"ACC1 "), (0x00081030, "LO", b"Genou \xe9"), (0x00100010, "PN", b"DOE^J"),
           (0x00200011, None, b"7 "), (0x00080060, "LO", b"MR")]  # the last: not the dictionary's VR
    for tag, vr, value in raw:
        ds[tag] = RawDataElement(tag, vr, len(value), value, 0, vr is None, True)
    assert h._raw_text(ds, "AccessionNumber") == "ACC1"
    assert h._raw_text(ds, "StudyDescription") is None  # not ASCII: decoded by its character set
    assert h._raw_text(ds, "PatientName") is None  # PN: always pydicom's
    assert h._raw_text(ds, "SeriesNumber") == "7"  # implicit VR: the dictionary's IS
    assert h._raw_text(ds, "Modality") is None
    assert h._raw_text(ds, "PatientID") is None  # absent


@pytest.mark.parametrize("charset,compatible", [(None, True), ("ISO_IR 100", True), ("ISO_IR 192", True),
                                                 ("\\ISO 2022 IR 87", True), ("ISO_IR 13", False),
                                                 ("ISO 2022 IR 13\\ISO 2022 IR 87", False)])
def test_character_sets_where_ascii_bytes_keep_their_meaning(charset, compatible):
    ds = Dataset()
    if charset is not None:
        ds[0x00080005] = RawDataElement(0x00080005, "CS", len(charset), charset.encode(), 0, False, True)
    assert h._ascii_compatible(ds) is compatible
