"""MWL matching, response shaping, validation and planning (PS3.4 C.2.2.2, Annex K).

Pure tests: datasets in, datasets out, no socket and no database. Identifiers
that must behave as if sent over the wire are written to bytes and read back
with pydicom, as pynetdicom does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import warnings

import pytest
from pydicom import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from infra.errors import InvalidInput
from worklist.mwl import (
    InvalidQuery, QueryPlan, build_item, build_response, matches, mismatched_key, plan_query,
    validate_query,
)
from worklist.orders import Order

ORDER = Order(
    accession_number="ACC1001", patient_id="MRN5001", patient_issuer="NORTHSIDE",
    patient_name="DOE^JANE^Q", birth_date=dt.date(1980, 2, 3), sex="F", cpt="70553",
    description="MRI BRAIN WO AND W CONTRAST", modality="MR", body_part="BRAIN",
    scheduled_start=dt.datetime(2026, 12, 1, 9, 30), station_ae="MR1", station_name="MAGNETOM-1",
    ordering_npi="1234567893", ordering_name="SMITH^JOHN", facility_npi="1987654328",
    payer_id="ACME_HEALTH", diagnoses=("G43.909",), study_instance_uid="1.2.840.99.1001",
)
ITEM = build_item(ORDER, "PA-778899")
LATE_ITEM = build_item(dataclasses.replace(ORDER, scheduled_start=dt.datetime(2026, 12, 1, 23, 30)), None)


def query(sps: dict | list | None = None, **keys) -> Dataset:
    """An identifier: top-level keys by keyword; ``sps`` a dict (one item) or [] (empty sequence)."""
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about ranges and wild cards in DA, CS...
        for keyword, value in keys.items():
            setattr(ds, keyword, value)
        if sps is not None:
            step = Dataset()
            for keyword, value in (sps.items() if isinstance(sps, dict) else ()):
                setattr(step, keyword, value)
            ds.ScheduledProcedureStepSequence = [step] if isinstance(sps, dict) else []
    return ds


def item_of(keyword: str, value) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(ds, keyword, value)
    return ds


def over_the_wire(ds: Dataset) -> tuple[bytes, Dataset]:
    """Encode ``ds`` as an implicit VR little endian identifier and decode it again."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    raw = fp.getvalue()
    return raw, read_dataset(DicomBytesIO(raw), True, True)


MATCHING = [
    # universal matching (C.2.2.2.3)
    ("empty identifier", query(), True),
    ("empty name", query(PatientName=""), True),
    ("all keys empty", query(PatientName="", PatientID="", AccessionNumber="", sps={"Modality": ""}), True),
    ("star is universal", query(PatientName="*", AccessionNumber="**"), True),
    # single value matching (C.2.2.2.1)
    ("patient id", query(PatientID="MRN5001"), True),
    ("other patient id", query(PatientID="MRN5002"), False),
    ("LO is case sensitive", query(PatientID="mrn5001"), False),
    ("spaces not significant", query(AccessionNumber=" ACC1001 "), True),
    ("issuer", query(IssuerOfPatientID="NORTHSIDE"), True),
    ("other issuer", query(IssuerOfPatientID="SOUTHSIDE"), False),
    ("two keys, one fails", query(PatientID="MRN5001", AccessionNumber="ACC9999"), False),
    # wild card matching (C.2.2.2.4)
    ("star suffix", query(AccessionNumber="ACC10*"), True),
    ("star prefix", query(AccessionNumber="*1001"), True),
    ("question mark", query(AccessionNumber="ACC100?"), True),
    ("question mark is one character", query(AccessionNumber="ACC10?"), False),
    ("star and question", query(PatientID="M?N*1"), True),
    ("wild card no match", query(AccessionNumber="B*"), False),
    ("CS wild card in step", query(sps={"Modality": "M*"}), True),
    # person names, case insensitive and component-wise
    ("DOE*", query(PatientName="DOE*"), True),
    ("doe^jane*", query(PatientName="doe^jane*"), True),
    ("no middle name in key", query(PatientName="DOE^JANE"), True),
    ("full name lower case", query(PatientName="doe^jane^q"), True),
    ("trailing empty components", query(PatientName="DOE^JANE^Q^^"), True),
    ("given name only", query(PatientName="^JANE"), True),
    ("star component matches an absent one", query(PatientName="DOE^JANE^Q^*"), True),
    ("question mark in name", query(PatientName="D?E^J*"), True),
    ("other middle name", query(PatientName="DOE^JANE^X"), False),
    ("other given name", query(PatientName="DOE^JOHN"), False),
    ("family name key only", query(PatientName="*JANE*"), False),
    ("other family name", query(PatientName="SMITH"), False),
    ("referring physician", query(ReferringPhysicianName="smith^john"), True),
    # date range matching (C.2.2.2.5.1)
    ("birth date", query(PatientBirthDate="19800203"), True),
    ("other birth date", query(PatientBirthDate="19800204"), False),
    ("date in closed range", query(PatientBirthDate="19800101-19801231"), True),
    ("date from, same day", query(PatientBirthDate="19800203-"), True),
    ("date from, later", query(PatientBirthDate="19800204-"), False),
    ("date to, same day", query(PatientBirthDate="-19800203"), True),
    ("date to, earlier", query(PatientBirthDate="-19800202"), False),
    # time range matching (C.2.2.2.5.2), stored 093000
    ("time of minute precision", query(sps={"ScheduledProcedureStepStartTime": "0930"}), True),
    ("time exact", query(sps={"ScheduledProcedureStepStartTime": "093000"}), True),
    ("time in closed range", query(sps={"ScheduledProcedureStepStartTime": "0900-1000"}), True),
    ("time from, later", query(sps={"ScheduledProcedureStepStartTime": "0931-"}), False),
    ("time to, earlier", query(sps={"ScheduledProcedureStepStartTime": "-0929"}), False),
    ("time to covers the minute", query(sps={"ScheduledProcedureStepStartTime": "-0930"}), True),
    ("time to, hour precision", query(sps={"ScheduledProcedureStepStartTime": "-09"}), True),
    ("reversed time range alone", query(sps={"ScheduledProcedureStepStartTime": "1000-0900"}), False),
    # step date (sequence matching, C.2.2.2.6)
    ("step date", query(sps={"ScheduledProcedureStepStartDate": "20261201"}), True),
    ("step date range", query(sps={"ScheduledProcedureStepStartDate": "20261130-20261201"}), True),
    ("step date from, later", query(sps={"ScheduledProcedureStepStartDate": "20261202-"}), False),
    ("step date to, earlier", query(sps={"ScheduledProcedureStepStartDate": "-20261130"}), False),
    # ranges to the end of time (C.2.2.2.5.1): 99991231 is the last day there is
    ("step date range to the end of time", query(sps={"ScheduledProcedureStepStartDate": "20261201-99991231"}), True),
    ("step date range to the end of time, later start",
     query(sps={"ScheduledProcedureStepStartDate": "20261202-99991231"}), False),
    ("step date to the end of time", query(sps={"ScheduledProcedureStepStartDate": "-99991231"}), True),
    ("step date on the last day", query(sps={"ScheduledProcedureStepStartDate": "99991231"}), False),
    ("step date from the first day", query(sps={"ScheduledProcedureStepStartDate": "00010101-"}), True),
    ("birth date range to the end of time", query(PatientBirthDate="19800203-99991231"), True),
    # combined date and time (C.2.2.2.5.4), stored 2026-12-01 09:30
    ("combined closed, spans days",
     query(sps={"ScheduledProcedureStepStartDate": "20261130-20261201", "ScheduledProcedureStepStartTime": "1000-1000"}), True),
    ("combined closed, ends before",
     query(sps={"ScheduledProcedureStepStartDate": "20261130-20261201", "ScheduledProcedureStepStartTime": "0800-0900"}), False),
    ("combined from",
     query(sps={"ScheduledProcedureStepStartDate": "20261130-", "ScheduledProcedureStepStartTime": "1000-"}), True),
    ("combined from, later",
     query(sps={"ScheduledProcedureStepStartDate": "20261201-", "ScheduledProcedureStepStartTime": "1000-"}), False),
    ("combined to",
     query(sps={"ScheduledProcedureStepStartDate": "-20261202", "ScheduledProcedureStepStartTime": "-0800"}), True),
    ("combined to, earlier",
     query(sps={"ScheduledProcedureStepStartDate": "-20261201", "ScheduledProcedureStepStartTime": "-0929"}), False),
    ("combined closed to the end of time",
     query(sps={"ScheduledProcedureStepStartDate": "20261201-99991231",
                "ScheduledProcedureStepStartTime": "0900-2359"}), True),
    ("combined to, the end of time",
     query(sps={"ScheduledProcedureStepStartDate": "-99991231", "ScheduledProcedureStepStartTime": "-2359"}), True),
    ("different forms match separately",
     query(sps={"ScheduledProcedureStepStartDate": "20261201-20261201", "ScheduledProcedureStepStartTime": "1000-"}), False),
    ("single date with time range",
     query(sps={"ScheduledProcedureStepStartDate": "20261201", "ScheduledProcedureStepStartTime": "0900-1000"}), True),
    # sequence matching (C.2.2.2.6)
    ("empty sequence", query(sps=[]), True),
    ("sequence with one empty item", query(sps={}), True),
    ("modality", query(sps={"Modality": "MR"}), True),
    ("other modality", query(sps={"Modality": "CT"}), False),
    ("station", query(sps={"ScheduledStationAETitle": "MR1"}), True),
    ("other station", query(sps={"ScheduledStationAETitle": "MR2"}), False),
    ("AE is case sensitive", query(sps={"ScheduledStationAETitle": "mr1"}), False),
    ("station wild card", query(sps={"ScheduledStationAETitle": "MR*"}), True),
    ("station, modality and date",
     query(sps={"ScheduledStationAETitle": "MR1", "Modality": "MR", "ScheduledProcedureStepStartDate": "20261201"}), True),
    ("station right, date wrong",
     query(sps={"ScheduledStationAETitle": "MR1", "ScheduledProcedureStepStartDate": "20261202"}), False),
    ("nested code sequence", query(RequestedProcedureCodeSequence=[item_of("CodeValue", "70553")]), True),
    ("nested code sequence, other code", query(RequestedProcedureCodeSequence=[item_of("CodeValue", "70554")]), False),
    ("stored sequence absent", query(ReferencedStudySequence=[item_of("ReferencedSOPInstanceUID", "1.2.3")]), False),
    ("stored sequence absent, empty keys", query(ReferencedStudySequence=[item_of("ReferencedSOPInstanceUID", "")]), True),
    # an empty stored value never matches a non-universal key
    ("empty stored location", query(sps={"ScheduledProcedureStepLocation": "*ROOM*"}), False),
    ("empty stored location, star", query(sps={"ScheduledProcedureStepLocation": "*"}), True),
    ("empty stored admission id", query(AdmissionID="A1"), False),
    ("empty stored physician", query(sps={"ScheduledPerformingPhysicianName": "DOE*"}), False),
    ("absent stored weight", query(PatientWeight="70"), False),
    # list of UID matching (C.2.2.2.2)
    ("one UID", query(StudyInstanceUID="1.2.840.99.1001"), True),
    ("UID list holding it", query(StudyInstanceUID=["1.2.9", "1.2.840.99.1001"]), True),
    ("UID list without it", query(StudyInstanceUID=["1.2.9", "1.2.8"]), False),
    # keys that are not matched
    ("QueryRetrieveLevel tolerated", query(QueryRetrieveLevel="STUDY", PatientID="MRN5001"), True),
    ("character set is not a key", query(SpecificCharacterSet="ISO_IR 100", PatientID="MRN5001"), True),
    ("auth comment", query(RequestedProcedureComments="AUTH PA-778899"), True),
]


@pytest.mark.parametrize("identifier, expected", [c[1:] for c in MATCHING], ids=[c[0] for c in MATCHING])
def test_matching(identifier, expected):
    assert matches(identifier, ITEM) is expected


@pytest.mark.parametrize("sps, combine, expected", [
    ({"ScheduledProcedureStepStartDate": "20261201-20261202", "ScheduledProcedureStepStartTime": "2200-0600"}, True, True),
    ({"ScheduledProcedureStepStartDate": "20261201-20261202", "ScheduledProcedureStepStartTime": "2200-0600"}, False, False),
    ({"ScheduledProcedureStepStartDate": "20261202-20261203", "ScheduledProcedureStepStartTime": "2200-0600"}, True, False),
    ({"ScheduledProcedureStepStartDate": "20261130-20261201", "ScheduledProcedureStepStartTime": "2300-2330"}, True, True),
    ({"ScheduledProcedureStepStartDate": "20261130-20261201", "ScheduledProcedureStepStartTime": "2300-2329"}, True, False),
], ids=["overnight", "overnight, not combined", "overnight, next night", "evening", "evening ends before"])
def test_combined_date_time_for_a_late_order(sps, combine, expected):
    assert matches(query(sps=sps), LATE_ITEM, combine_date_time=combine) is expected


@pytest.mark.parametrize("keyword, stored, key, expected", [
    ("ScheduledProcedureStepStartTime", "093000.5", "-093000", True),
    ("ScheduledProcedureStepStartTime", "093000.5", "093000", True),
    ("ScheduledProcedureStepStartTime", "093000.5", "093001-", False),
    ("ScheduledProcedureStepStartTime", "093000", "09:00-10:00", True),
    ("ScheduledProcedureStepStartTime", "", "0900-1000", False),
    ("AcquisitionDateTime", "20261201093000", "202612", True),
    ("AcquisitionDateTime", "20261201093000", "20261201-", True),
    ("AcquisitionDateTime", "20261201093000", "20261202-", False),
    ("AcquisitionDateTime", "20261201093000", "-2026113023", False),
    ("AcquisitionDateTime", "20261201093000", "2026120109-2026120110", True),
    ("AcquisitionDateTime", "20261201093000", "20261201093000-0500", True),
    ("PatientBirthDate", "not a date", "19800101-", False),
])
def test_range_matching_of_single_values(keyword, stored, key, expected):
    assert matches(query(**{keyword: key}), item_of(keyword, stored)) is expected


def test_combined_can_be_switched_off():
    identifier = query(sps={"ScheduledProcedureStepStartDate": "20261130-20261201",
                            "ScheduledProcedureStepStartTime": "1000-1000"})
    assert matches(identifier, ITEM)
    assert not matches(identifier, ITEM, combine_date_time=False)


@pytest.mark.parametrize("identifier, path", [
    (query(PatientID="X"), "PatientID"),
    (query(sps={"Modality": "CT"}), "ScheduledProcedureStepSequence>Modality"),
    (query(sps={"ScheduledProcedureStepStartDate": "20261201-", "ScheduledProcedureStepStartTime": "1000-"}),
     "ScheduledProcedureStepSequence>ScheduledProcedureStepStartDate+ScheduledProcedureStepStartTime"),
    (query(PatientID="MRN5001"), None),
])
def test_mismatched_key_names_the_failing_key(identifier, path):
    assert mismatched_key(identifier, ITEM) == path


# --- non-ASCII names -----------------------------------------------------------------

MUELLER = build_item(dataclasses.replace(ORDER, patient_name="MÜLLER^JÜRGEN"), None)
ENCODED = {"ISO_IR 192": "MÜLLER".encode("utf-8"), "ISO_IR 100": "MÜLLER".encode("latin-1")}


@pytest.mark.parametrize("charset", ["ISO_IR 192", "ISO_IR 100"])
@pytest.mark.parametrize("name, expected", [
    ("MÜLLER^JÜRGEN", True),
    ("müller^jürgen", True),
    ("MÜLL*", True),
    ("M?LLER^J?RGEN", True),
    ("MULLER^JURGEN", True),
    ("MILLER^JÜRGEN", False),
    ("MÜLLER^HANS", False),
])
def test_non_ascii_names_match_as_decoded_text(charset, name, expected):
    raw, identifier = over_the_wire(query(SpecificCharacterSet=charset, PatientName=name))
    if name.startswith("MÜLLER"):
        assert ENCODED[charset] in raw  # really sent in that character set
    assert matches(identifier, MUELLER) is expected


def test_name_sent_in_latin1_but_declared_utf8_does_not_match():
    raw, _ = over_the_wire(query(SpecificCharacterSet="ISO_IR 100", PatientName="MÜLLER^JÜRGEN"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        identifier = read_dataset(DicomBytesIO(raw.replace(b"ISO_IR 100", b"ISO_IR 192")), True, True)
        assert not matches(identifier, MUELLER)


def test_non_ascii_response_is_utf8():
    _, identifier = over_the_wire(query(SpecificCharacterSet="ISO_IR 100", PatientName="müller*"))
    response = build_response(identifier, MUELLER)
    assert response.SpecificCharacterSet == "ISO_IR 192"
    assert str(response.PatientName) == "MÜLLER^JÜRGEN"
    raw, _ = over_the_wire(response)
    assert "MÜLLER^JÜRGEN".encode("utf-8") in raw


# --- the response identifier ---------------------------------------------------------


def keywords(ds: Dataset) -> set[str]:
    return {elem.keyword for elem in ds}


def test_only_keys_asked_for_come_back():
    response = build_response(query(PatientName="", sps={"Modality": ""}), ITEM)
    assert keywords(response) == {"SpecificCharacterSet", "PatientName", "ScheduledProcedureStepSequence"}
    assert keywords(response.ScheduledProcedureStepSequence[0]) == {"Modality"}
    assert response.PatientName == "DOE^JANE^Q"
    assert response.ScheduledProcedureStepSequence[0].Modality == "MR"


@pytest.mark.parametrize("keyword, value", [
    ("PatientWeight", ""), ("MedicalAlerts", ""), ("PregnancyStatus", None), ("ReferencedStudySequence", []),
])
def test_keys_asked_for_but_unknown_come_back_empty(keyword, value):
    response = build_response(query(PatientID="", **{keyword: value}), ITEM)
    assert keyword in response
    assert response[keyword].is_empty
    assert response.PatientID == "MRN5001"


def test_empty_sequence_key_returns_the_whole_sequence():
    response = build_response(query(sps=[]), ITEM)
    assert response.ScheduledProcedureStepSequence == ITEM.ScheduledProcedureStepSequence
    assert response.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "SCHEDULED"


def test_nested_sequence_keys_choose_nested_return_keys():
    identifier = query(sps={"ScheduledProtocolCodeSequence": [item_of("CodeValue", "")]})
    codes = build_response(identifier, ITEM).ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence
    assert len(codes) == 1 and keywords(codes[0]) == {"CodeValue"} and codes[0].CodeValue == "70553"


def test_sequence_returns_only_matching_items():
    stored = item_of("ReferencedStudySequence", [item_of("ReferencedSOPInstanceUID", "1.2.1"),
                                                 item_of("ReferencedSOPInstanceUID", "1.2.2")])
    response = build_response(query(ReferencedStudySequence=[item_of("ReferencedSOPInstanceUID", "1.2.2")]), stored)
    assert [i.ReferencedSOPInstanceUID for i in response.ReferencedStudySequence] == ["1.2.2"]


@pytest.mark.parametrize("identifier, charset", [
    (query(PatientName=""), "ISO_IR 192"),
    (query(SpecificCharacterSet="ISO_IR 100", PatientName=""), "ISO_IR 192"),
    (query(sps={"ScheduledStationName": ""}), "ISO_IR 192"),
    (query(StudyInstanceUID=""), None),
    (query(SpecificCharacterSet="ISO_IR 100", AdmissionID=""), None),
])
def test_character_set_is_returned_with_text(identifier, charset):
    assert build_response(identifier, ITEM).get("SpecificCharacterSet") == charset


def test_query_retrieve_level_is_not_returned():
    response = build_response(query(QueryRetrieveLevel="WORKLIST", AccessionNumber=""), ITEM)
    assert keywords(response) == {"SpecificCharacterSet", "AccessionNumber"}


# --- the worklist item ---------------------------------------------------------------

STEP = ITEM.ScheduledProcedureStepSequence[0]


@pytest.mark.parametrize("ds, keyword, value", [
    (ITEM, "SpecificCharacterSet", "ISO_IR 192"),
    (ITEM, "PatientName", "DOE^JANE^Q"),
    (ITEM, "PatientID", "MRN5001"),
    (ITEM, "IssuerOfPatientID", "NORTHSIDE"),
    (ITEM, "PatientBirthDate", "19800203"),
    (ITEM, "PatientSex", "F"),
    (ITEM, "AccessionNumber", "ACC1001"),
    (ITEM, "ReferringPhysicianName", "SMITH^JOHN"),
    (ITEM, "RequestingPhysician", "SMITH^JOHN"),
    (ITEM, "RequestedProcedureID", "ACC1001"),
    (ITEM, "RequestedProcedureDescription", "MRI BRAIN WO AND W CONTRAST"),
    (ITEM, "StudyInstanceUID", "1.2.840.99.1001"),
    (ITEM, "BodyPartExamined", "BRAIN"),
    (ITEM, "ReasonForTheRequestedProcedure", "G43.909"),
    (ITEM, "RequestedProcedureComments", "AUTH PA-778899"),
    (ITEM.RequestedProcedureCodeSequence[0], "CodeValue", "70553"),
    (ITEM.RequestedProcedureCodeSequence[0], "CodingSchemeDesignator", "C4"),
    (ITEM.RequestedProcedureCodeSequence[0], "CodeMeaning", "MRI BRAIN WO AND W CONTRAST"),
    (STEP, "ScheduledStationAETitle", "MR1"),
    (STEP, "ScheduledProcedureStepStartDate", "20261201"),
    (STEP, "ScheduledProcedureStepStartTime", "093000"),
    (STEP, "Modality", "MR"),
    (STEP, "ScheduledPerformingPhysicianName", ""),
    (STEP, "ScheduledProcedureStepDescription", "MRI BRAIN WO AND W CONTRAST"),
    (STEP, "ScheduledProcedureStepID", "ACC1001"),
    (STEP, "ScheduledStationName", "MAGNETOM-1"),
    (STEP, "ScheduledProcedureStepStatus", "SCHEDULED"),
    (STEP.ScheduledProtocolCodeSequence[0], "CodeValue", "70553"),
])
def test_item_carries_the_return_keys(ds, keyword, value):
    assert keyword in ds
    assert (str(ds[keyword].value) if ds[keyword].value is not None else "") == value


def test_item_without_auth_has_the_attribute_empty():
    item = build_item(ORDER, None)
    assert "RequestedProcedureComments" in item and item.RequestedProcedureComments == ""


@pytest.mark.parametrize("attribute, in_step", [
    ("CommentsOnTheScheduledProcedureStep", True), ("PatientComments", False), ("RequestedProcedureComments", False),
])
def test_auth_goes_where_settings_say(attribute, in_step):
    item = build_item(ORDER, "PA-1", auth_attribute=attribute)
    target = item.ScheduledProcedureStepSequence[0] if in_step else item
    assert target.get(attribute) == "AUTH PA-1"
    assert (attribute in item) is not in_step


@pytest.mark.parametrize("attribute", ["NoSuchKeyword", "ScheduledProcedureStepSequence", "PatientBirthDate"])
def test_auth_attribute_must_be_a_text_keyword(attribute):
    with pytest.raises(InvalidInput, match=attribute):
        build_item(ORDER, "PA-1", auth_attribute=attribute)


@pytest.mark.parametrize("changes, keyword, value", [
    ({"laterality": "R", "description": "MRI KNEE WO CONTRAST"}, "RequestedProcedureDescription", "MRI KNEE WO CONTRAST RIGHT"),
    ({"laterality": "L", "description": "MRI KNEE LEFT"}, "RequestedProcedureDescription", "MRI KNEE LEFT"),
    ({"laterality": "B", "description": ""}, "RequestedProcedureDescription", "70553 BILATERAL"),
    ({"requested_procedure_id": "RP7"}, "RequestedProcedureID", "RP7"),
    ({"scheduled_procedure_step_id": "SPS7"}, "ScheduledProcedureStepID", "SPS7"),
    ({"status": "in-progress"}, "ScheduledProcedureStepStatus", "STARTED"),
])
def test_item_follows_the_order(changes, keyword, value):
    item = build_item(dataclasses.replace(ORDER, **changes), None)
    found = item.get(keyword, item.ScheduledProcedureStepSequence[0].get(keyword))
    assert found == value


def test_unknown_body_part_is_left_out():
    assert "BodyPartExamined" not in build_item(dataclasses.replace(ORDER, body_part=""), None)


# --- validation ----------------------------------------------------------------------


def raw_query(*elements) -> Dataset:
    ds = Dataset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag, vr, value in elements:
            ds.add_new(tag, vr, value)
    return ds


INVALID = [
    ("sequence sent as text", raw_query((0x00400100, "LO", "MR")), "ScheduledProcedureStepSequence"),
    ("two step items", query(ScheduledProcedureStepSequence=[item_of("Modality", "MR"), item_of("Modality", "CT")]),
     "2 items"),
    ("date with dashes", query(PatientBirthDate="1980-02-03"), "YYYYMMDD"),
    ("no such month", query(PatientBirthDate="19801303"), "PatientBirthDate"),
    ("wild card in a date", query(PatientBirthDate="1980*"), "not a valid DA"),
    ("date range reversed", query(PatientBirthDate="19801231-19800101"), "starts after it ends"),
    ("bad time", query(sps={"ScheduledProcedureStepStartTime": "2500"}),
     "ScheduledProcedureStepSequence>ScheduledProcedureStepStartTime"),
    ("bad step date", query(sps={"ScheduledProcedureStepStartDate": "tomorrow"}),
     "ScheduledProcedureStepSequence>ScheduledProcedureStepStartDate"),
    ("list of modalities", query(sps={"Modality": "CT\\MR"}), "only UID keys take a list"),
    ("bytes for a string", raw_query((0x00100020, "LO", b"MRN5001")), "must be text"),
    ("number for a string", raw_query((0x00100020, "LO", 5)), "must be text"),
    ("wild card in a UID", query(StudyInstanceUID="1.2.*"), "not a UID"),
    ("binary key with a value", raw_query((0x00420011, "OB", b"\x01\x02")), "no matching"),
]


@pytest.mark.parametrize("identifier, fragment", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_identifiers_are_refused(identifier, fragment):
    with pytest.raises(InvalidQuery) as refused:
        validate_query(identifier)
    assert fragment in str(refused.value)


def test_every_problem_is_listed():
    with pytest.raises(InvalidQuery) as refused:
        validate_query(query(PatientBirthDate="x", StudyInstanceUID="1.*", sps={"Modality": "CT\\MR"}))
    assert len(refused.value.problems) == 3


@pytest.mark.parametrize("identifier", [
    query(PatientBirthDate="x"), query(sps={"ScheduledProcedureStepStartDate": "2026-12-01"}),
    query(ScheduledProcedureStepSequence=[item_of("Modality", "MR"), item_of("Modality", "CT")]),
    query(sps={"Modality": "CT\\MR"}),
])
def test_matching_an_invalid_identifier_raises_invalid_query(identifier):
    with pytest.raises(InvalidQuery):
        matches(identifier, ITEM)


VALID = [
    ("typical console query", query(SpecificCharacterSet="ISO_IR 100", QueryRetrieveLevel="WORKLIST", PatientName="",
                                     PatientID="", sps={"ScheduledStationAETitle": "MR1", "Modality": "MR",
                                                        "ScheduledProcedureStepStartDate": "20261201-20261207",
                                                        "ScheduledProcedureStepStartTime": ""})),
    ("overnight time range", query(sps={"ScheduledProcedureStepStartTime": "2200-0600"})),
    ("UID list", query(StudyInstanceUID=["1.2.3", "1.2.4"])),
    ("empty binary key", raw_query((0x00420011, "OB", b""))),
    ("empty sequences", query(sps=[], ReferencedStudySequence=[])),
]


@pytest.mark.parametrize("identifier", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_identifiers_pass(identifier):
    validate_query(identifier)


# --- the database plan ---------------------------------------------------------------

D = dt.date
PLANS = [
    ("empty", query(), QueryPlan()),
    ("all exact", query(AccessionNumber="ACC1001", PatientID="MRN5001", RequestedProcedureID="RP1",
                        StudyInstanceUID=["1.2.3", "1.2.4"],
                        sps={"ScheduledStationAETitle": "MR1", "Modality": "MR", "ScheduledProcedureStepStartDate": "20261201"}),
     QueryPlan(station_ae="MR1", modality="MR", date_from=D(2026, 12, 1), date_to=D(2026, 12, 1),
               accession_number="ACC1001", patient_id="MRN5001", study_instance_uids=("1.2.3", "1.2.4"),
               requested_procedure_id="RP1")),
    ("wild cards stay in memory", query(AccessionNumber="ACC*", PatientID="MRN?001", RequestedProcedureID="*",
                                        sps={"ScheduledStationAETitle": "MR*", "Modality": "M?"}), QueryPlan()),
    ("closed date range", query(sps={"ScheduledProcedureStepStartDate": "20261201-20261207"}),
     QueryPlan(date_from=D(2026, 12, 1), date_to=D(2026, 12, 7))),
    ("date from", query(sps={"ScheduledProcedureStepStartDate": "20261201-"}), QueryPlan(date_from=D(2026, 12, 1))),
    ("date to", query(sps={"ScheduledProcedureStepStartDate": "-20261207"}), QueryPlan(date_to=D(2026, 12, 7))),
    ("date to the end of time", query(sps={"ScheduledProcedureStepStartDate": "20261201-99991231"}),
     QueryPlan(date_from=D(2026, 12, 1), date_to=D(9999, 12, 31))),
    ("date from the first day", query(sps={"ScheduledProcedureStepStartDate": "00010101-"}),
     QueryPlan(date_from=D(1, 1, 1))),
    ("names and times are not planned", query(PatientName="DOE^JANE", sps={"ScheduledProcedureStepStartTime": "0900-1000"}),
     QueryPlan()),
    ("spaces trimmed", query(sps={"ScheduledStationAETitle": " MR1 "}), QueryPlan(station_ae="MR1")),
    ("top-level station is not the step's", query(ScheduledStationAETitle="MR1"), QueryPlan()),
]


@pytest.mark.parametrize("identifier, plan", [c[1:] for c in PLANS], ids=[c[0] for c in PLANS])
def test_plan_query(identifier, plan):
    assert plan_query(identifier) == plan


def test_plan_query_refuses_invalid_identifiers():
    with pytest.raises(InvalidQuery):
        plan_query(query(sps={"ScheduledProcedureStepStartDate": "1 Dec"}))


def admits(plan: QueryPlan, order: Order) -> bool:
    """The lookup the QueryPlan docstring describes, done over one order."""
    requested_id = order.requested_procedure_id or order.accession_number
    return all([
        plan.station_ae in (None, order.station_ae),
        plan.modality in (None, order.modality),
        plan.date_from is None or plan.date_from <= order.scheduled_date,
        plan.date_to is None or order.scheduled_date <= plan.date_to,
        plan.accession_number in (None, order.accession_number),
        plan.patient_id in (None, order.patient_id),
        not plan.study_instance_uids or order.study_instance_uid in plan.study_instance_uids,
        plan.requested_procedure_id in (None, requested_id),
    ])


@pytest.mark.parametrize("identifier", [c[1] for c in MATCHING if c[2]], ids=[c[0] for c in MATCHING if c[2]])
def test_plan_admits_every_order_that_matches(identifier):
    assert admits(plan_query(identifier), ORDER)


@pytest.mark.parametrize("identifier", [
    query(AccessionNumber="ACC9999"), query(sps={"Modality": "CT"}), query(sps={"ScheduledStationAETitle": "MR2"}),
    query(sps={"ScheduledProcedureStepStartDate": "20261202-"}), query(StudyInstanceUID=["1.2.9"]),
])
def test_plan_narrows_the_lookup(identifier):
    assert not admits(plan_query(identifier), ORDER)


@pytest.mark.parametrize("identifier, expected", [c[1:] for c in MATCHING], ids=[c[0] for c in MATCHING])
def test_matching_keys_give_the_same_answer(identifier, expected):
    from worklist.mwl import matching_keys

    assert matches(matching_keys(identifier), ITEM) is expected


@pytest.mark.parametrize("dates, bounds", [
    ("20261201-99991231", 1), ("-99991231", 0), ("99991231", 1), ("00010101-", 1), ("00010101-99991231", 1),
    ("20261201-20261207", 2),
])
def test_plan_conditions_take_the_first_and_last_days(dates, bounds):
    """A range to 99991231 has no day after it: it is open ended, not an OverflowError (PS3.4 C.2.2.2.5.1)."""
    from worklist.query import plan_conditions

    assert len(plan_conditions(plan_query(query(sps={"ScheduledProcedureStepStartDate": dates})))) == bounds


def test_a_long_uid_list_is_matched_in_memory_not_planned():
    from worklist.mwl import PLANNED_UIDS

    uids = [f"1.2.9.{i}" for i in range(PLANNED_UIDS)] + ["1.2.840.99.1001"]
    identifier = query(StudyInstanceUID=uids)
    assert plan_query(identifier).study_instance_uids == ()
    assert matches(identifier, ITEM)
    assert plan_query(query(StudyInstanceUID=uids[-PLANNED_UIDS:])).study_instance_uids == tuple(uids[-PLANNED_UIDS:])


# --- wild cards without backtracking (PS3.4 C.2.2.2.4) --------------------------------


def reference_match(pattern: str, text: str) -> bool:
    """Wild card matching by dynamic programming over (pattern, text) prefixes: slow but plainly right."""
    row = [True] + [False] * len(text)  # row[j]: pattern[:i] matches text[:j]
    for p in pattern:
        if p == "*":
            for j in range(1, len(text) + 1):
                row[j] = row[j] or row[j - 1]
        else:
            row = [False] + [row[j - 1] and (p == "?" or p == text[j - 1]) for j in range(1, len(text) + 1)]
    return row[-1]


def test_wildcards_agree_with_the_reference_on_every_short_pattern():
    import itertools

    from worklist.mwl_match import wildcard_matches

    texts = ["", "a", "b", "ab", "ba", "aab", "abab", "bbaa", "aaaa", "abba"]
    for size in range(6):
        for chars in itertools.product("ab*?", repeat=size):
            pattern = "".join(chars)
            for text in texts:
                assert wildcard_matches(pattern, text) is reference_match(pattern, text), (pattern, text)


def test_wildcards_agree_with_the_reference_on_random_patterns():
    import random

    from worklist.mwl_match import wildcard_matches

    rng = random.Random(20261201)
    for _ in range(3000):
        pattern = "".join(rng.choice("abc*??**") for _ in range(rng.randint(0, 12)))
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 16)))
        assert wildcard_matches(pattern, text) is reference_match(pattern, text), (pattern, text)


@pytest.fixture
def compared(monkeypatch) -> list[int]:
    """The length of every segment the wild card matcher compares, one entry per comparison."""
    from worklist import mwl_match

    lengths: list[int] = []
    fits = mwl_match._fits

    def counted(segment: str, text: str, at: int) -> bool:
        lengths.append(len(segment))
        return fits(segment, text, at)

    monkeypatch.setattr(mwl_match, "_fits", counted)
    return lengths


PATHOLOGICAL = [
    ("***********?#", "MRI BRAIN WO AND W CONTRAST", False),  # 41 s with the regular expression
    ("*" * 10_000 + "?#", "MRI BRAIN WO AND W CONTRAST", False),
    ("*?" * 2_000 + "#", "a" * 4_000, False),
    ("*a?" * 300 + "*b", "a" * 2_000, False),
    ("*a?" * 300 + "*a", "a" * 2_000, True),
    ("?" * 999 + "*a", "a" * 1_000, True),
    ("a*" * 1_000 + "b", "a" * 2_000, False),
    ("*a?b" * 50 + "*", "a" * 1_000 + "ab" * 100, False),
    ("*" + "?" * 500 + "b*", "a" * 2_000, False),
]


@pytest.mark.parametrize("pattern, text, expected", PATHOLOGICAL, ids=[f"case {i}" for i in range(len(PATHOLOGICAL))])
def test_wildcard_work_is_bounded_whatever_the_pattern(pattern, text, expected, compared):
    """Counted, not timed: characters compared stay under (len(text) + 1) ** 2."""
    from worklist.mwl_match import wildcard_matches

    assert wildcard_matches(pattern, text) is expected
    assert sum(compared) <= (len(text) + 1) ** 2


def test_many_pathological_patterns_match_in_a_bounded_number_of_steps(compared):
    """Every pattern of 12 characters made of * and ? and one #, against a 27-character value."""
    import itertools

    from worklist.mwl_match import text_matches

    patterns = ["".join(chars) + "#" for chars in itertools.product("*?", repeat=12)]
    assert not any(text_matches(p, "MRI BRAIN WO AND W CONTRAST") for p in patterns)
    assert len(compared) <= len(patterns) * 2 * 28


@pytest.mark.parametrize("name, expected", [
    ("*" * 11 + "?#", False), ("*" * 11 + "?E", True), ("D" + "*" * 5000 + "^" + "*" * 5000 + "E", True),
    ("*" * 5000 + "?" * 4 + "^J*", False),
])
def test_pathological_person_names(name, expected, compared):
    assert matches(query(PatientName=name), ITEM) is expected
    assert len(compared) <= 100


# --- long keys -----------------------------------------------------------------------


@pytest.mark.parametrize("vr, text", [("DT", "-" * 1_000_000), ("DA", "2026" * 250_000), ("TM", "0" * 1_000_000)])
def test_a_long_range_key_is_refused_without_splitting_or_caching_it(vr, text):
    from worklist import mwl_match

    before = mwl_match._parse_range.cache_info()
    assert mwl_match.parse_range(vr, text) is None
    assert mwl_match._parse_range.cache_info() == before  # nothing of it kept


def test_a_valid_range_key_of_the_longest_form_parses():
    from worklist.mwl_match import LONGEST_RANGE, parse_range

    longest = "20261201093000.123456+0100 - 20261201103000.123456+0100"
    assert len(longest) <= LONGEST_RANGE
    assert parse_range("DT", longest).form == "closed"


@pytest.mark.parametrize("identifier", [
    query(PatientBirthDate="1" * 1_000_000), query(StudyInstanceUID="x" * 1_000_000),
    query(sps={"Modality": "CT\\" + "M" * 1_000_000}), query(sps={"ScheduledProcedureStepStartTime": "9" * 1_000_000}),
])
def test_messages_quote_a_long_key_briefly(identifier):
    with pytest.raises(InvalidQuery) as refused:
        validate_query(identifier)
    assert len(str(refused.value)) < 300
