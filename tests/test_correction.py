"""Rule 5 of docs/rules.md / PS3.3 C.12.1: correcting a held instance from its order."""

from __future__ import annotations

import datetime as dt

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from infra.errors import InvalidInput
from store.correction import CORRECT, AttributeChange, correct, correct_file, planned_changes
from store.header import read_header
from store.reconcile import reconcile
from tests.dicom_factory import make_instance, make_order, write_instance

WHEN = dt.datetime(2025, 3, 11, 9, 30, 15, 250000)
ARGS = dict(reason_text="wrong patient picked at console", modifying_system="GATEKEEPER", when=WHEN)

#: Order for another patient: everything the correction sets differs from the defaults.
OTHER = make_order(
    accession_number="ACC2002",
    patient_id="MRN6002",
    patient_name="ROE^RICHARD",
    birth_date=dt.date(1971, 5, 6),
    sex="M",
    patient_issuer="HOSPITAL_A",
)


def test_correct_sets_order_values_and_records_the_old_ones():
    ds = make_instance()
    out = correct(ds, OTHER, source_of_previous_values="MR_CONSOLE", **ARGS)
    assert (out.PatientName, out.PatientID, out.IssuerOfPatientID) == ("ROE^RICHARD", "MRN6002", "HOSPITAL_A")
    assert (out.PatientBirthDate, out.PatientSex, out.AccessionNumber) == ("19710506", "M", "ACC2002")
    assert out.StudyInstanceUID == ds.StudyInstanceUID  # left alone
    assert out.SOPInstanceUID == ds.SOPInstanceUID

    (item,) = out.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == CORRECT
    assert item.ModifyingSystem == "GATEKEEPER"
    assert item.SourceOfPreviousValues == "MR_CONSOLE"
    assert item.AttributeModificationDateTime == "20250311093015.250000"
    (previous,) = item.ModifiedAttributesSequence
    assert sorted(e.keyword for e in previous) == sorted(
        ["PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"]
    )
    assert (previous.PatientName, previous.PatientID, previous.PatientBirthDate) == ("DOE^JANE^Q", "MRN5001", "19800203")
    assert (previous.PatientSex, previous.AccessionNumber) == ("F", "ACC1001")
    assert previous.IssuerOfPatientID == ""  # absent before: recorded empty


def test_correct_does_not_change_its_input():
    ds = make_instance()
    correct(ds, OTHER, **ARGS)
    assert ds.PatientID == "MRN5001" and "OriginalAttributesSequence" not in ds


def test_only_changed_attributes_are_recorded():
    ds = make_instance(PatientName="DOE^JANE^Q", AccessionNumber="ACC9")
    out = correct(ds, make_order(), **ARGS)
    (previous,) = out.OriginalAttributesSequence[0].ModifiedAttributesSequence
    assert [e.keyword for e in previous] == ["AccessionNumber"]
    assert previous.AccessionNumber == "ACC9" and out.AccessionNumber == "ACC1001"


def test_nothing_to_change_adds_no_item():
    out = correct(make_instance(), make_order(), **ARGS)
    assert "OriginalAttributesSequence" not in out
    assert planned_changes(make_instance(), make_order()) == ()


def test_unknown_sex_or_issuer_in_the_order_is_not_written():
    ds = make_instance(PatientSex="F", IssuerOfPatientID="HOSPITAL_B")
    out = correct(ds, make_order(sex="", patient_issuer="", accession_number="ACC3"), **ARGS)
    assert (out.PatientSex, out.IssuerOfPatientID) == ("F", "HOSPITAL_B")


def test_planned_changes_preview():
    changes = planned_changes(make_instance(PatientID="WRONG"), make_order())
    assert changes == (AttributeChange("PatientID", "WRONG", "MRN5001"),)


def test_single_request_item_accession_follows_the_order():
    request = Dataset()
    request.AccessionNumber = "ACC1001"
    request.RequestedProcedureID = "RP1"
    out = correct(make_instance(RequestAttributesSequence=Sequence([request])), OTHER, **ARGS)
    assert out.RequestAttributesSequence[0].AccessionNumber == "ACC2002"
    assert out.RequestAttributesSequence[0].RequestedProcedureID == "RP1"
    previous = out.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert previous.RequestAttributesSequence[0].AccessionNumber == "ACC1001"


def test_several_request_items_are_left_alone():
    items = []
    for number in ("ACC1001", "ACC1002"):
        item = Dataset()
        item.AccessionNumber = number
        items.append(item)
    out = correct(make_instance(RequestAttributesSequence=Sequence(items)), OTHER, **ARGS)
    assert [i.AccessionNumber for i in out.RequestAttributesSequence] == ["ACC1001", "ACC1002"]


@pytest.mark.parametrize(
    "changes, error",
    [
        (dict(reason_text=" "), "needs a reason"),
        (dict(modifying_system=""), "Type 1"),
        (dict(modifying_system="X" * 65), "at most 64"),
        (dict(source_of_previous_values="Y" * 65), "at most 64"),
    ],
)
def test_bad_arguments_are_refused(changes, error):
    with pytest.raises(InvalidInput, match=error):
        correct(make_instance(), OTHER, **{**ARGS, **changes})


def test_aware_time_keeps_its_offset():
    when = dt.datetime(2025, 3, 11, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    out = correct(make_instance(), OTHER, **{**ARGS, "when": when})
    assert out.OriginalAttributesSequence[0].AttributeModificationDateTime == "20250311093000.000000-0500"


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_corrected_file_is_valid_dicom_and_reconciles(tmp_path, syntax):
    ds = make_instance(transfer_syntax_uid=syntax, PatientID="TYPO5001", AccessionNumber="")
    src = write_instance(tmp_path / "held.dcm", ds)
    dst = tmp_path / "corrected.dcm"
    changes = correct_file(src, dst, make_order(), source_of_previous_values="MR1", **ARGS)
    assert {c.keyword for c in changes} == {"PatientID", "AccessionNumber"}

    with open(dst, "rb") as f:
        assert f.read(132)[128:] == b"DICM"
    back = dcmread(dst)  # no force: a conformant Part 10 file
    assert back.file_meta.TransferSyntaxUID == syntax
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert (back.PatientID, back.AccessionNumber) == ("MRN5001", "ACC1001")
    assert back.PixelData == ds.PixelData
    item = back.OriginalAttributesSequence[0]
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem == "GATEKEEPER" and item.SourceOfPreviousValues == "MR1"
    assert item.AttributeModificationDateTime == "20250311093015.250000"
    previous = item.ModifiedAttributesSequence[0]
    assert (previous.PatientID, previous.AccessionNumber) == ("TYPO5001", "")
    assert reconcile(read_header(dst), make_order(), order_authorized=True).findings == ()


def test_a_second_correction_keeps_the_first_item(tmp_path):
    src = write_instance(tmp_path / "a.dcm", make_instance())
    first, second = tmp_path / "b.dcm", tmp_path / "c.dcm"
    correct_file(src, first, OTHER, **ARGS)
    later = dt.datetime(2025, 3, 12, 8, 0)
    correct_file(first, second, make_order(), **{**ARGS, "when": later, "reason_text": "reassigned back"})

    back = dcmread(second)
    assert back.PatientID == "MRN5001" and back.AccessionNumber == "ACC1001"
    one, two = back.OriginalAttributesSequence
    assert one.ModifiedAttributesSequence[0].PatientID == "MRN5001"
    assert one.AttributeModificationDateTime == "20250311093015.250000"
    assert two.ModifiedAttributesSequence[0].PatientID == "MRN6002"
    assert two.ModifiedAttributesSequence[0].AccessionNumber == "ACC2002"
    assert two.AttributeModificationDateTime == "20250312080000.000000"


def test_name_outside_the_files_character_set_switches_to_utf8(tmp_path):
    ds = make_instance(SpecificCharacterSet="ISO_IR 100", StudyDescription="Schädel nativ", PatientName="MULLER^J")
    src = write_instance(tmp_path / "latin1.dcm", ds)
    dst = tmp_path / "utf8.dcm"
    correct_file(src, dst, make_order(patient_name="Łukasiewicz^Jan"), **ARGS)
    back = dcmread(dst)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Łukasiewicz^Jan"
    assert back.StudyDescription == "Schädel nativ"  # re-encoded, not garbled
    assert str(back.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].PatientName) == "MULLER^J"


def test_name_within_the_files_character_set_keeps_it(tmp_path):
    src = write_instance(tmp_path / "latin1.dcm", make_instance(SpecificCharacterSet="ISO_IR 100"))
    dst = tmp_path / "out.dcm"
    correct_file(src, dst, make_order(patient_name="Müller^José"), **ARGS)
    back = dcmread(dst)
    assert back.SpecificCharacterSet == "ISO_IR 100" and str(back.PatientName) == "Müller^José"


def test_non_ascii_name_in_a_file_without_character_set_switches_to_utf8(tmp_path):
    src = write_instance(tmp_path / "ascii.dcm", make_instance(SpecificCharacterSet=None))
    dst = tmp_path / "out.dcm"
    correct_file(src, dst, make_order(patient_name="Müller^José"), **ARGS)
    back = dcmread(dst)
    assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Müller^José"
