"""Correction of a held instance from its RIS order, as PS3.3 C.12.1 describes.

The patient and accession attributes are set from the order (rule 5 of docs/rules.md), and the values
they replace are kept in one new item of Original Attributes Sequence (0400,0561):

- Modified Attributes Sequence (0400,0550): one item with the prior value of each attribute
  that changed, and only those. An attribute that was absent is recorded with an empty
  value (it was a Type 2 attribute without a value, which is what absent means for them).
- Attribute Modification DateTime (0400,0562), Modifying System (0400,0563),
  Source of Previous Values (0400,0564) and Reason for the Attribute Modification
  (0400,0565) = ``CORRECT``.

Earlier items are kept, so a second correction adds a second item. When nothing changes,
no item is added: C.12.1 records modifications, and there was none.

What is set: Patient's Name, Patient ID, Patient's Birth Date, Accession Number, and
Patient's Sex and Issuer of Patient ID when the order knows them (an unknown value in the
order is no reason to erase one in the image). The Accession Number in a single-item
Request Attributes Sequence is set too, so the request does not point at another order;
with several items (one study for several requests) the sequence is left alone. Study
Instance UID is left alone: changing it would split the study in every archive that has
part of it, and a different UID only warns (STUDY_UID_MISMATCH).

PS3.3 C.12.1 has no free-text reason (Reason for the Attribute Modification is the coded
``CORRECT``), so the operator's reason is not written into the dataset; it is required
here so that no correction happens without one, and the caller records it in the audit log.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from infra.errors import InvalidInput
from worklist.orders import Order

#: Reason for the Attribute Modification (0400,0565) for a correction (PS3.3 C.12.1).
CORRECT = "CORRECT"
#: Specific Character Set used when the order's values cannot be written in the file's own.
UTF8 = "ISO_IR 192"
_LO_MAX = 64


@dataclass(frozen=True)
class AttributeChange:
    """One top-level attribute a correction replaces: its keyword, old and new values."""

    keyword: str
    old: str
    new: str


def planned_changes(ds: Dataset, order: Order) -> tuple[AttributeChange, ...]:
    """The attributes that :func:`correct` would change in ``ds``, without changing it."""
    return tuple(AttributeChange(kw, _as_text(ds.get(kw)), new) for kw, new in _targets(ds, order))


def correct(
    ds: Dataset,
    order: Order,
    *,
    reason_text: str,
    modifying_system: str,
    when: dt.datetime,
    source_of_previous_values: str = "",
) -> Dataset:
    """A corrected copy of ``ds`` carrying ``order``'s patient and accession attributes.

    ``ds`` itself is not changed. ``when`` becomes Attribute Modification DateTime (with its
    UTC offset if it has one); ``modifying_system`` (Type 1) names this gatekeeper;
    ``source_of_previous_values`` (Type 2) names where the old values came from, often the
    sending modality's AE title. ``reason_text`` must not be empty (see the module notes).
    """
    if not reason_text.strip():
        raise InvalidInput("a correction needs a reason; ask the operator why the images are corrected")
    if not modifying_system.strip():
        raise InvalidInput("modifying_system is Type 1 (PS3.3 C.12.1); pass the gatekeeper's AE title")
    for label, value in (
        ("modifying_system", modifying_system),
        ("source_of_previous_values", source_of_previous_values),
    ):
        if len(value) > _LO_MAX:
            raise InvalidInput(f"{label} is LO, at most {_LO_MAX} characters; shorten {value!r}")

    out = copy.deepcopy(ds)
    targets = _targets(out, order)
    if not targets:
        return out
    _ensure_encodable(out, [new for _, new in targets])

    previous = Dataset()
    for keyword, new in targets:
        tag = tag_for_keyword(keyword)
        if keyword in out:
            previous[tag] = copy.deepcopy(out[keyword])
        else:
            previous[tag] = DataElement(tag, dictionary_VR(tag), "")
        if keyword == "RequestAttributesSequence":
            out.RequestAttributesSequence[0].AccessionNumber = new
        else:
            setattr(out, keyword, new)

    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([previous])
    item.AttributeModificationDateTime = _dt(when)
    item.ModifyingSystem = modifying_system
    item.SourceOfPreviousValues = source_of_previous_values
    item.ReasonForTheAttributeModification = CORRECT
    history = list(out.get("OriginalAttributesSequence") or [])
    out.OriginalAttributesSequence = Sequence([*history, item])
    return out


def correct_file(
    src_path: str | os.PathLike[str],
    dst_path: str | os.PathLike[str],
    order: Order,
    *,
    reason_text: str,
    modifying_system: str,
    when: dt.datetime,
    source_of_previous_values: str = "",
) -> tuple[AttributeChange, ...]:
    """Write a corrected copy of the Part 10 file ``src_path`` to ``dst_path``.

    The transfer syntax and File Meta Information are kept; the file is written as a
    conformant Part 10 file (PS3.10 7.1). ``dst_path`` is written in place and not synced:
    write it in the archive's ``incoming/`` area and file it with ``Archive.write_new``.
    Returns the changes made (empty when the file already matched the order).
    """
    ds = dcmread(src_path)
    changes = planned_changes(ds, order)
    corrected = correct(
        ds,
        order,
        reason_text=reason_text,
        modifying_system=modifying_system,
        when=when,
        source_of_previous_values=source_of_previous_values,
    )
    corrected.save_as(dst_path, enforce_file_format=True)
    return changes


def corrected_patient(order: Order) -> dict[str, str]:
    """The index's patient query attributes (``store.models.StudyRow``) as :func:`correct` sets
    them in every file: name and birth date from the order, sex only when the order knows it."""
    born = order.birth_date
    values = {"patient_name": order.patient_name.strip()[:200],
              "birth_date": f"{born.year:04d}{born.month:02d}{born.day:02d}"}
    if order.sex:
        values["patient_sex"] = order.sex.strip().upper()[:16]
    return values


def _targets(ds: Dataset, order: Order) -> list[tuple[str, str]]:
    """(keyword, new value) for each attribute whose value the order changes."""
    born = order.birth_date
    wanted = [
        ("PatientName", order.patient_name),
        ("PatientID", order.patient_id),
        ("PatientBirthDate", f"{born.year:04d}{born.month:02d}{born.day:02d}"),
        ("AccessionNumber", order.accession_number),
    ]
    if order.sex:
        wanted.append(("PatientSex", order.sex))
    if order.patient_issuer:
        wanted.append(("IssuerOfPatientID", order.patient_issuer))
    changes = [(kw, new) for kw, new in wanted if _as_text(ds.get(kw)) != new.strip()]
    requests = ds.get("RequestAttributesSequence") or []
    if len(requests) == 1 and _as_text(requests[0].get("AccessionNumber")) != order.accession_number:
        changes.append(("RequestAttributesSequence", order.accession_number))
    return changes


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Sequence):
        items = list(value)
        return _as_text(items[0].get("AccessionNumber")) if len(items) == 1 else ""
    return str(value).strip()


def _ensure_encodable(ds: Dataset, values: list[str]) -> None:
    """Switch ``ds`` to UTF-8 (PS3.5 6.1.2.3) when its character set cannot hold ``values``.

    Every text element is decoded first with the old character set, so that pydicom
    re-encodes all of them, not only the new ones, in the new set when writing.
    """
    text = "".join(values)
    if text.isascii():
        return
    charset = ds.get("SpecificCharacterSet")
    encodings = convert_encodings(charset) if charset else []
    if len(encodings) == 1:  # one single-byte set or UTF-8; the default repertoire is ASCII
        try:
            text.encode(encodings[0])
            return
        except (UnicodeEncodeError, LookupError):
            pass
    ds.decode()
    ds.SpecificCharacterSet = UTF8


def _dt(when: dt.datetime) -> str:
    """A DT value (PS3.5 6.2): YYYYMMDDHHMMSS.FFFFFF with the UTC offset when known."""
    text = when.strftime("%Y%m%d%H%M%S") + f".{when.microsecond:06d}"
    return text + when.strftime("%z") if when.tzinfo is not None else text
