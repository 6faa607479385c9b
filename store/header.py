"""What reconciliation needs from a received instance, read without its pixel data.

A received file may be hundreds of megabytes, almost all of it Pixel Data (7FE0,0010) at
the end of the dataset. :func:`read_header` parses the Part 10 file (PS3.10 7.1) up to the
pixel data and keeps only the attributes listed in :data:`HEADER_TAGS`; every other element
of defined length is skipped by seeking past its value, so the cost does not grow with the
size of the image.

Two readers give the same header. The native one (:mod:`store.header_native`) walks the
file's bytes and builds the header from them directly (0.03 to 0.07 ms for a 512 KiB CT,
against 0.3 to 0.5 ms: ``python3 bench/header.py``); whenever it cannot be sure of giving
what pydicom gives (ISO 2022 or JIS X 0201 text, a Shared Functional Groups Sequence,
anything structurally odd: the list is in its module doc) it leaves the file to the pydicom
path, ``dcmread(stop_before_pixels=True, specific_tags=HEADER_TAGS)``, which stays the
reference and decides every error.

Person names are decoded with the file's Specific Character Set (0008,0005), as PS3.5 6.1
says. UIDs must be well formed (PS3.5 9.1): they become folder and file names in the
archive, so a malformed one is refused here rather than written to disk.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from infra.errors import Undecodable

#: Top-level attributes read from a received file; everything else is skipped.
HEADER_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "AccessionNumber",
    "Modality",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Laterality",
    "ImageLaterality",
    "RequestAttributesSequence",
    # Enhanced multi-frame objects keep laterality in Frame Anatomy (PS3.3 C.7.6.16.2.8);
    # the shared groups are small, the per-frame groups are not read.
    "SharedFunctionalGroupsSequence",
    # For the Query/Retrieve keys (store/qr_match.py): indexed at receive time, so a
    # query never opens a file.
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
)
HEADER_TAGS = tuple(Tag(keyword) for keyword in HEADER_KEYWORDS)

#: A UID as PS3.5 9.1 allows it: digits in dot-separated components, at most 64 characters.
#: Leading zeros are tolerated (some modalities write them) since they are harmless on disk.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class UnreadableInstance(Undecodable):
    """A received file cannot be reconciled: it is not DICOM or lacks an identifying UID."""


def uid_is_well_formed(uid: str) -> bool:
    """True when ``uid`` is safe to use as a UID and as a file name (PS3.5 9.1)."""
    return len(uid) <= 64 and _UID.fullmatch(uid) is not None


@dataclass(frozen=True)
class InstanceHeader:
    """The attributes of one received instance that reconciliation and filing use.

    Strings are as in the file with padding removed; ``birth_date`` and ``study_date`` are
    DA (``YYYYMMDD``) text, not parsed, so a malformed value can be shown as it was sent.
    ``patient_name`` is the whole PN value (all component groups) decoded to ``str``.
    """

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    accession_number: str = ""
    request_accession_numbers: tuple[str, ...] = ()
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    sex: str = ""
    modality: str = ""
    laterality: str = ""
    study_date: str = ""
    transfer_syntax_uid: str = ""
    # Query/Retrieve return keys (as text, padding removed).
    study_time: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""


def read_header(path: str | os.PathLike[str]) -> InstanceHeader:
    """Read the header of the Part 10 file at ``path`` (PS3.10 7.1), not its pixel data.

    Raises :class:`UnreadableInstance` when the file is not a DICOM Part 10 file or lacks a
    well-formed SOP Instance, Study Instance or Series Instance UID (all Type 1 in every
    storage IOD, and needed to file the instance). An :class:`OSError` reading the file
    (missing file, I/O error) is not a property of the file's content and propagates as is.
    """
    from store.header_native import native_header  # it builds on this module

    header = native_header(path)
    if header is None:
        header = _pydicom_header(Path(path))
    for label, uid in (
        ("SOP Instance UID (0008,0018)", header.sop_instance_uid),
        ("Study Instance UID (0020,000D)", header.study_instance_uid),
        ("Series Instance UID (0020,000E)", header.series_instance_uid),
    ):
        if not uid:
            raise UnreadableInstance(
                f"{Path(path).name} has no {label}, so it cannot be filed or matched to a study. "
                "Ask the sender to fix the object; it was not stored."
            )
        if not uid_is_well_formed(uid):
            raise UnreadableInstance(
                f"{Path(path).name} has a malformed {label} {uid!r}: a UID is at most 64 digits and "
                "dots (PS3.5 9.1). Ask the sender to fix the object; it was not stored."
            )
    return header


def _pydicom_header(path: Path) -> InstanceHeader:
    """The header as pydicom reads it: the reference, and the path of every file the native
    reader (:mod:`store.header_native`) leaves to it."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except OSError:
        raise
    except Exception as exc:  # any parse failure of untrusted input means "not DICOM"
        raise UnreadableInstance(
            f"{path.name} is not a readable DICOM Part 10 file ({type(exc).__name__}: {exc}). "
            "Ask the sender to check the object it sends; it was not stored."
        ) from exc
    return _header_of(ds)


def _header_of(ds: Dataset, *, raw: bool = True) -> InstanceHeader:
    """The header of ``ds``. With ``raw`` (the default) the values that need no character set
    are taken from the bytes as read (:func:`_raw_text`), without pydicom's conversion and
    per-value validation; ``raw=False`` converts every value with pydicom (the reference
    ``tests/test_header_raw.py`` compares against)."""
    file_meta = getattr(ds, "file_meta", None)
    _text = _text_fast if raw and _ascii_compatible(ds) else _text_converted
    return InstanceHeader(
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        accession_number=_text(ds, "AccessionNumber"),
        request_accession_numbers=tuple(
            _text(item, "AccessionNumber") for item in ds.get("RequestAttributesSequence") or ()
        ),
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex").upper(),
        modality=_text(ds, "Modality").upper(),
        laterality=_laterality(ds, _text),
        study_date=_text(ds, "StudyDate"),
        transfer_syntax_uid=_text(file_meta, "TransferSyntaxUID") if file_meta is not None else "",
        study_time=_text(ds, "StudyTime"),
        study_id=_text(ds, "StudyID"),
        study_description=_text(ds, "StudyDescription"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
        series_number=_text(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription"),
        instance_number=_text(ds, "InstanceNumber"),
    )


def _laterality(ds: Dataset, _text=None) -> str:
    """Image Laterality (0020,0062), else Laterality (0020,0060), else Frame Laterality
    (0020,9072) in the shared Frame Anatomy Sequence of an enhanced multi-frame object."""
    _text = _text or _text_converted
    for keyword in ("ImageLaterality", "Laterality"):
        value = _text(ds, keyword).upper()
        if value:
            return value
    for shared in ds.get("SharedFunctionalGroupsSequence") or ():
        for anatomy in shared.get("FrameAnatomySequence") or ():
            value = _text(anatomy, "FrameLaterality").upper()
            if value:
                return value
    return ""


#: VRs whose values are in the default repertoire whatever the Specific Character Set (PS3.5 6.1.2.3).
_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
#: VRs whose values the Specific Character Set applies to; taken raw only when every byte is
#: printable ASCII (then every ASCII-compatible character set decodes them alike).
_STRING_VRS = frozenset({"SH", "LO"})
_PRINTABLE = re.compile(rb"[\x20-\x7e\x00]*")
_TAG_OF = {keyword: Tag(keyword) for keyword in (*HEADER_KEYWORDS, "FrameLaterality")}
_VR_OF = {keyword: dictionary_VR(tag) for keyword, tag in _TAG_OF.items()}


def _ascii_compatible(ds: Dataset) -> bool:
    """Whether printable ASCII bytes mean the same characters under ``ds``'s Specific Character Set.

    True for the default repertoire, ISO 8859, UTF-8 and GB18030/GBK, and for ISO 2022 without
    an escape (an escape byte is not printable ASCII, so such a value is converted by pydicom);
    False with JIS X 0201 (ISO_IR 13), where 0x5C and 0x7E are other characters.
    """
    element = ds.get_item(_TAG_OF["SpecificCharacterSet"])
    if element is None:
        return True
    value = element.value
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return "IR 13" not in text


def _text_fast(ds: Dataset, keyword: str) -> str:
    """:func:`_text_converted`, from the value's bytes when its VR allows (:func:`_raw_text`)."""
    found = _raw_text(ds, keyword)
    return found if found is not None else _text_converted(ds, keyword)


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    """The stripped text of a raw element of a plain VR (or of a printable-ASCII SH/LO), each
    value stripped of spaces and NUL padding, multiple values joined by a backslash; None
    when the element must be converted by pydicom (absent, converted already, another VR,
    bytes that are not printable ASCII)."""
    tag = _TAG_OF.get(keyword)
    if tag is None:
        return None
    element = ds.get_item(tag)
    if not isinstance(element, RawDataElement) or element.value is None:
        return None
    vr = element.VR or _VR_OF[keyword]  # implicit VR: the dictionary's
    if vr != _VR_OF[keyword] or (vr not in _PLAIN_VRS and vr not in _STRING_VRS):
        return None
    value = element.value
    if not _PRINTABLE.fullmatch(value):
        return None
    return "\\".join(part.strip(" \x00").strip() for part in value.decode("ascii").split("\\"))


def _text_converted(ds: Dataset, keyword: str) -> str:
    """The value of ``keyword`` as stripped text; multiple values joined by a backslash."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()
