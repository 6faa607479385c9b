"""Rule 3 of docs/rules.md: reconciliation of one instance against its order, and the study as the unit."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    XRayRadiationDoseSRStorage,
)

from store import reconcile as r
from store.header import InstanceHeader
from tests.dicom_factory import make_order

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def header(**changes) -> InstanceHeader:
    """The header of an instance that matches ``make_order()`` in every respect."""
    base = InstanceHeader(
        sop_class_uid=MRImageStorage,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.3",
        study_instance_uid=STUDY_UID,
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        accession_number="ACC1001",
        patient_id="MRN5001",
        patient_name="DOE^JANE^Q",
        birth_date="19800203",
        sex="F",
        modality="MR",
        study_date="20250310",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    return dataclasses.replace(base, **changes)


def codes(h: InstanceHeader, order=None, *, authorized: bool = True, **order_changes) -> tuple[str, ...]:
    order = order if order is not None else make_order(**order_changes)
    return r.reconcile(h, order, order_authorized=authorized).codes


def test_matching_instance_has_no_findings():
    result = r.reconcile(header(), make_order(), order_authorized=True)
    assert result.findings == ()
    assert not result.holds
    assert result.accession_used == "ACC1001"
    assert result.accession_source == r.FROM_ACCESSION_NUMBER


# Every finding code, each provoked alone: (header changes, order changes, authorized, code,
# instance value, order value).
EVERY_CODE = [
    ({"patient_id": "MRN9999"}, {}, True, r.PATIENT_ID_MISMATCH, "MRN9999", "MRN5001"),
    ({"patient_name": "ROE^JANE"}, {}, True, r.PATIENT_NAME_MISMATCH, "ROE^JANE", "DOE^JANE^Q"),
    ({"birth_date": "19800302"}, {}, True, r.BIRTH_DATE_MISMATCH, "19800302", "19800203"),
    ({"sex": "M"}, {}, True, r.SEX_MISMATCH, "M", "F"),
    ({"modality": "CT", "sop_class_uid": CTImageStorage}, {}, True, r.MODALITY_MISMATCH, "CT", "MR"),
    ({"laterality": "R"}, {"laterality": "L"}, True, r.LATERALITY_MISMATCH, "R", "L"),
    ({}, {"study_instance_uid": "1.2.3.4"}, True, r.STUDY_UID_MISMATCH, STUDY_UID, "1.2.3.4"),
    ({}, {}, False, r.ORDER_NOT_AUTHORIZED, "20250310", "70551"),
    ({}, {"status": "cancelled"}, True, r.ORDER_CANCELLED, "", "cancelled"),
    ({}, {"status": "discontinued"}, True, r.ORDER_CANCELLED, "", "discontinued"),
]


@pytest.mark.parametrize("h_changes, o_changes, authorized, code, instance_value, order_value", EVERY_CODE)
def test_each_code_alone(h_changes, o_changes, authorized, code, instance_value, order_value):
    result = r.reconcile(header(**h_changes), make_order(**o_changes), order_authorized=authorized)
    assert result.codes == (code,)
    finding = result.findings[0]
    assert (finding.instance_value, finding.order_value) == (instance_value, order_value)
    assert "ACC1001" in finding.message and finding.message.endswith(".")


def test_accession_missing_stops_all_other_checks():
    result = r.reconcile(header(accession_number="", patient_id="X"), None, order_authorized=False)
    assert result.codes == (r.ACCESSION_MISSING,)
    assert (result.accession_used, result.accession_source) == ("", "")
    assert result.holds


def test_accession_unknown_stops_all_other_checks():
    result = r.reconcile(header(accession_number="ACC404", sex="M"), None, order_authorized=False)
    assert result.codes == (r.ACCESSION_UNKNOWN,)
    assert result.findings[0].instance_value == "ACC404"
    assert "ACC404" in result.findings[0].message


def test_messages_do_not_carry_patient_identifiers():
    h = header(patient_id="MRN9999", patient_name="ROE^RICHARD", birth_date="19700101", sex="M")
    result = r.reconcile(h, make_order(), order_authorized=True)
    assert len(result.findings) == 4
    for finding in result.findings:
        for identifier in ("MRN9999", "MRN5001", "ROE", "DOE", "1970", "1980"):
            assert identifier not in finding.message


def test_several_findings_come_in_table_order():
    h = header(patient_id="X", sex="M", modality="CT", sop_class_uid=CTImageStorage)
    order = make_order(status="cancelled", study_instance_uid="1.2.3")
    assert r.reconcile(h, order, order_authorized=False).codes == (
        r.PATIENT_ID_MISMATCH,
        r.SEX_MISMATCH,
        r.MODALITY_MISMATCH,
        r.STUDY_UID_MISMATCH,
        r.ORDER_NOT_AUTHORIZED,
        r.ORDER_CANCELLED,
    )


# Request Attributes Sequence (0040,0275) supplies the accession number when the top-level one is empty.
@pytest.mark.parametrize(
    "top, requests, used, source",
    [
        ("ACC1001", ("ACC7777",), "ACC1001", r.FROM_ACCESSION_NUMBER),
        ("", ("ACC1001",), "ACC1001", r.FROM_REQUEST_ATTRIBUTES),
        ("  ", ("", "ACC1001"), "ACC1001", r.FROM_REQUEST_ATTRIBUTES),
        ("", (), "", ""),
        ("", ("", " "), "", ""),
    ],
)
def test_accession_source(top, requests, used, source):
    h = header(accession_number=top, request_accession_numbers=requests)
    assert r.accession_of(h) == used
    result = r.reconcile(h, make_order() if used else None, order_authorized=True)
    assert (result.accession_used, result.accession_source) == (used, source)
    assert result.codes == (() if used else (r.ACCESSION_MISSING,))


@pytest.mark.parametrize(
    "instance_name, order_name, mismatch",
    [
        ("DOE^JANE^Q", "DOE^JANE^Q", False),
        ("doe^jane^q", "DOE^JANE^Q", False),
        ("  Doe ^  Jane  ", "DOE^JANE", False),
        ("DOE^JANE^^^", "DOE^JANE", False),  # empty trailing components
        ("DOE^JANE", "DOE^JANE^Q^MRS^PHD", False),  # middle, prefix, suffix ignored
        ("DOE^JANE^QUINN^DR", "DOE^JANE^Q", False),
        ("O'BRIEN^MARY-ANN", "OBRIEN^MARY ANN", False),  # apostrophe, hyphen, space
        ("O’Brien^Mary.Ann", "OBRIEN^MARYANN", False),  # typographic apostrophe, dot
        ("SMITH, JR^JOHN", "SMITH JR^JOHN", False),  # comma
        ("MÜLLER^JOSÉ", "MULLER^JOSE", False),  # accents a console could not type
        ("DOE^JANE=ド^ジェーン", "DOE^JANE", False),  # only the alphabetic group counts
        ("DOE^JOHN", "DOE^JANE^Q", True),  # given name differs
        ("ROE^JANE", "DOE^JANE^Q", True),  # family name differs
        ("JANE^DOE", "DOE^JANE", True),  # swapped
        ("DOE", "DOE^JANE", True),  # given name missing
        ("", "DOE^JANE", True),  # no name at all
        ("JANE DOE", "DOE^JANE", True),  # free text, not PN components
    ],
)
def test_patient_name_normalisation(instance_name, order_name, mismatch):
    found = codes(header(patient_name=instance_name), patient_name=order_name)
    assert found == ((r.PATIENT_NAME_MISMATCH,) if mismatch else ())


@pytest.mark.parametrize(
    "instance_date, mismatch",
    [
        ("19800203", False),
        (" 19800203 ", False),
        ("1980.02.03", False),  # ACR-NEMA form, still sent by old consoles
        ("19800302", True),
        ("", True),
        ("not a date", True),
    ],
)
def test_birth_date_compared_as_a_date(instance_date, mismatch):
    assert codes(header(birth_date=instance_date)) == ((r.BIRTH_DATE_MISMATCH,) if mismatch else ())


def test_birth_date_order_value_is_da():
    result = r.reconcile(header(birth_date=""), make_order(birth_date=dt.date(1975, 12, 1)), order_authorized=True)
    assert result.findings[0].order_value == "19751201"
    assert "missing" in result.findings[0].message


@pytest.mark.parametrize(
    "instance_sex, order_sex, mismatch",
    [
        ("F", "F", False),
        ("f", "F", False),
        ("", "F", False),  # unknown on the image
        ("F", "", False),  # unknown on the order
        ("", "", False),
        ("U", "M", False),  # not a known value
        ("M", "F", True),
        ("O", "F", True),
        ("F", "O", True),
    ],
)
def test_sex_only_where_both_known(instance_sex, order_sex, mismatch):
    assert codes(header(sex=instance_sex), sex=order_sex) == ((r.SEX_MISMATCH,) if mismatch else ())


@pytest.mark.parametrize(
    "modality, sop_class, order_modality, mismatch",
    [
        ("MR", MRImageStorage, "MR", False),
        ("mr", MRImageStorage, "MR", False),
        ("CT", CTImageStorage, "MR", True),
        ("", MRImageStorage, "MR", True),  # an image must say what it is
        ("SR", BasicTextSRStorage, "MR", False),
        ("PR", GrayscaleSoftcopyPresentationStateStorage, "MR", False),
        ("KO", KeyObjectSelectionDocumentStorage, "MR", False),
        ("DOC", "1.2.840.10008.5.1.4.1.1.104.1", "MR", False),
        ("SEG", "1.2.840.10008.5.1.4.1.1.66.4", "CT", False),
        ("REG", "1.2.840.10008.5.1.4.1.1.66.1", "CT", False),
        ("RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3", "CT", False),
        ("CT", XRayRadiationDoseSRStorage, "MR", False),  # non-image SOP class, whatever modality
        ("CT", CTImageStorage, "PT", False),  # PET/CT
        ("MR", MRImageStorage, "PT", False),  # PET/MR
        ("CT", CTImageStorage, "NM", False),  # SPECT/CT
        ("PT", "1.2.840.10008.5.1.4.1.1.128", "CT", True),  # not the other way round
        ("CT", CTImageStorage, "CT\\PT", False),  # a multi-valued scheduled modality
    ],
)
def test_modality_and_non_image_exemption(modality, sop_class, order_modality, mismatch):
    h = header(modality=modality, sop_class_uid=sop_class)
    assert codes(h, modality=order_modality) == ((r.MODALITY_MISMATCH,) if mismatch else ())


def test_non_image_sets_are_named_and_consistent():
    assert {"SR", "PR", "KO", "DOC", "REG", "SEG", "RWV", "PLAN", "RTSTRUCT"} <= r.NON_IMAGE_MODALITIES
    assert MRImageStorage not in r.NON_IMAGE_SOP_CLASSES
    assert CTImageStorage not in r.NON_IMAGE_SOP_CLASSES


@pytest.mark.parametrize(
    "instance_side, order_side, mismatch",
    [
        ("L", "L", False),
        ("R", "R", False),
        ("L", "R", True),
        ("R", "L", True),
        ("l", "R", True),
        ("B", "L", False),
        ("L", "B", False),
        ("", "L", False),
        ("R", None, False),
        ("U", "L", False),
    ],
)
def test_laterality_only_left_against_right(instance_side, order_side, mismatch):
    found = codes(header(laterality=instance_side), laterality=order_side)
    assert found == ((r.LATERALITY_MISMATCH,) if mismatch else ())


@pytest.mark.parametrize(
    "order_uid, instance_uid, mismatch",
    [("", STUDY_UID, False), (STUDY_UID, STUDY_UID, False), ("1.2.3", STUDY_UID, True)],
)
def test_study_uid_only_when_the_order_has_one(order_uid, instance_uid, mismatch):
    found = codes(header(study_instance_uid=instance_uid), study_instance_uid=order_uid)
    assert found == ((r.STUDY_UID_MISMATCH,) if mismatch else ())


@pytest.mark.parametrize("status", ["scheduled", "in-progress", "completed"])
def test_live_orders_are_not_cancelled(status):
    assert codes(header(), status=status) == ()


def test_default_hold_codes():
    assert r.ALL_CODES == frozenset(r.CODES) and len(r.CODES) == 13
    assert r.DEFAULT_HOLD_CODES == r.ALL_CODES - {r.STUDY_UID_MISMATCH, r.POSSIBLE_DUPLICATE_ORDER}
    assert r.hold_codes_from_warn_codes({"STUDY_UID_MISMATCH", "POSSIBLE_DUPLICATE_ORDER"}) == r.DEFAULT_HOLD_CODES


@pytest.mark.parametrize(
    "hold_codes, holds, held, warned",
    [
        (r.DEFAULT_HOLD_CODES, True, {r.SEX_MISMATCH}, {r.STUDY_UID_MISMATCH}),
        (frozenset(), False, set(), {r.SEX_MISMATCH, r.STUDY_UID_MISMATCH}),
        (frozenset({r.STUDY_UID_MISMATCH}), True, {r.STUDY_UID_MISMATCH}, {r.SEX_MISMATCH}),
        (r.ALL_CODES - {r.SEX_MISMATCH, r.STUDY_UID_MISMATCH}, False, set(), {r.SEX_MISMATCH, r.STUDY_UID_MISMATCH}),
    ],
)
def test_hold_and_warn_split(hold_codes, holds, held, warned):
    order = make_order(study_instance_uid="1.2.3")
    result = r.reconcile(header(sex="M"), order, order_authorized=True, hold_codes=hold_codes)
    assert result.holds is holds
    assert {f.code for f in result.hold_findings} == held
    assert {f.code for f in result.warn_findings} == warned


def test_warn_only_study_uid_does_not_hold_by_default():
    result = r.reconcile(header(), make_order(study_instance_uid="1.2.3"), order_authorized=True)
    assert result.codes == (r.STUDY_UID_MISMATCH,) and not result.holds


PASSES = r.reconcile(header(), make_order(), order_authorized=True)
HOLDS = r.reconcile(header(sex="M"), make_order(), order_authorized=True)
WARNS = r.reconcile(header(), make_order(study_instance_uid="1.2.3"), order_authorized=True)


@pytest.mark.parametrize(
    "previous, reconciliation, state",
    [
        (None, PASSES, "archived"),
        (None, WARNS, "archived"),
        (None, HOLDS, "held"),
        ("archived", PASSES, "archived"),
        ("archived", HOLDS, "held"),  # a holding instance makes an archived study held
        ("held", PASSES, "held"),  # later instances of a held study are held too
        ("held", HOLDS, "held"),
        ("rejected", PASSES, "held"),  # a judged study goes back to a person
        ("purged", PASSES, "held"),
    ],
)
def test_study_is_the_unit(previous, reconciliation, state):
    assert r.study_state(previous, reconciliation) == state


def test_study_state_refuses_an_unknown_state():
    with pytest.raises(ValueError, match="unknown study state"):
        r.study_state("lost", PASSES)
