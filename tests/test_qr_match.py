"""Query/Retrieve matching (store/qr_match.py): every matching type of PS3.4 C.2.2.2 and its
edges, the hierarchical rules, the retrieval identifiers, and who sees held studies."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from store import qr_match as qm
from store.states import ARCHIVED, HELD
from worklist.mwl_match import InvalidQuery

STUDY = {
    "PatientID": "MRN5001", "PatientName": "DOE^JANE^Q", "PatientBirthDate": "19800203", "PatientSex": "F",
    "StudyInstanceUID": "1.2.3.1", "StudyDate": "20261201", "StudyTime": "101500", "AccessionNumber": "ACC1001",
    "StudyID": "S1", "StudyDescription": "MRI BRAIN", "ReferringPhysicianName": "WHO^DR",
    "ModalitiesInStudy": ("MR", "SR"), "SOPClassesInStudy": ("1.2.840.10008.5.1.4.1.1.4",),
    "NumberOfStudyRelatedSeries": 2, "NumberOfStudyRelatedInstances": 7,
}
SERIES = {**STUDY, "SeriesInstanceUID": "1.2.3.1.1", "Modality": "MR", "SeriesNumber": "3",
          "SeriesDescription": "T1 AX", "NumberOfSeriesRelatedInstances": 5}
IMAGE = {**SERIES, "SOPInstanceUID": "1.2.3.1.1.9", "InstanceNumber": "9", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}
EMPTY = {"PatientID": "MRN5002", "PatientName": "", "StudyInstanceUID": "1.2.3.2", "StudyDate": "", "StudyTime": "",
         "AccessionNumber": "", "StudyID": "", "StudyDescription": ""}


def ident(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def found(record, level="STUDY", model=qm.STUDY_ROOT, **keys) -> bool:
    return qm.matches(qm.parse_query(ident(level, **keys), model), record)


@pytest.mark.parametrize("keys, expected", [
    # universal matching (C.2.2.2.3): empty values, and * alone
    ({"PatientName": "", "StudyDate": "", "StudyInstanceUID": ""}, True),
    ({"PatientName": "*"}, True),
    # single value (C.2.2.2.1): exact, case sensitive for CS/SH/LO, padding not significant
    ({"AccessionNumber": "ACC1001"}, True),
    ({"AccessionNumber": "ACC100"}, False),
    ({"AccessionNumber": "acc1001"}, False),
    ({"AccessionNumber": "ACC1001 "}, True),
    ({"PatientID": "MRN5001"}, True),
    ({"PatientSex": "M"}, False),
    ({"StudyID": "S1"}, True),
    # wild cards (C.2.2.2.4): * any run, ? exactly one character
    ({"AccessionNumber": "ACC*"}, True),
    ({"AccessionNumber": "*1001"}, True),
    ({"AccessionNumber": "ACC?001"}, True),
    ({"AccessionNumber": "ACC??001"}, False),
    ({"AccessionNumber": "A*C*1"}, True),
    ({"StudyDescription": "MRI*"}, True),
    ({"StudyDescription": "CT*"}, False),
    ({"PatientID": "MRN500?"}, True),
    # person names: component-wise, case and accent insensitive
    ({"PatientName": "DOE^JANE"}, True),
    ({"PatientName": "doe*"}, True),
    ({"PatientName": "DOE^JOHN"}, False),
    ({"PatientName": "*JANE*"}, False),
    ({"ReferringPhysicianName": "WHO*"}, True),
    # UID lists (C.2.2.2.2)
    ({"StudyInstanceUID": "1.2.3.1"}, True),
    ({"StudyInstanceUID": ["1.2.3.9", "1.2.3.1"]}, True),
    ({"StudyInstanceUID": ["1.2.3.9", "1.2.3.8"]}, False),
    ({"StudyInstanceUID": "1.2.3"}, False),
    # ranges (C.2.2.2.5): closed, open at either end, a single date
    ({"StudyDate": "20261201"}, True),
    ({"StudyDate": "20261130-20261202"}, True),
    ({"StudyDate": "20261201-20261201"}, True),
    ({"StudyDate": "20261202-20261231"}, False),
    ({"StudyDate": "20261201-"}, True),
    ({"StudyDate": "20261202-"}, False),
    ({"StudyDate": "-20261201"}, True),
    ({"StudyDate": "-20261130"}, False),
    ({"StudyTime": "1015"}, True),
    ({"StudyTime": "1000-1030"}, True),
    ({"StudyTime": "1016-"}, False),
    ({"StudyTime": "-10"}, True),
    # date and time together (C.2.2.2.5.4)
    ({"StudyDate": "20261130-20261201", "StudyTime": "2200-1100"}, True),
    ({"StudyDate": "20261130-20261201", "StudyTime": "2200-0600"}, False),
    # Modalities in Study: any of several values, wild cards
    ({"ModalitiesInStudy": "MR"}, True),
    ({"ModalitiesInStudy": "CT"}, False),
    ({"ModalitiesInStudy": ["CT", "SR"]}, True),
    ({"ModalitiesInStudy": "M?"}, True),
    ({"SOPClassesInStudy": "1.2.840.10008.5.1.4.1.1.4"}, True),
    # return keys only: their value is not matched
    ({"NumberOfStudyRelatedInstances": "3"}, True),
    # a key the gatekeeper does not index is not matched
    ({"InstitutionName": "NOWHERE"}, True),
    # several keys: all must match
    ({"PatientID": "MRN5001", "AccessionNumber": "ACC1001", "StudyDate": "20270101-"}, False),
    ({"PatientID": "MRN5001", "AccessionNumber": "ACC1001", "StudyDate": "2026120-"}, None),
])
def test_study_level_matching(keys, expected):
    if expected is None:
        with pytest.raises(InvalidQuery):
            found(STUDY, **keys)
        return
    assert found(STUDY, **keys) is expected


@pytest.mark.parametrize("keys, expected", [
    ({"PatientName": ""}, True),  # universal matches an empty stored value
    ({"PatientName": "*"}, True),
    ({"PatientName": "D*"}, False),  # any other key never matches an empty value
    ({"StudyDate": "20260101-"}, False),
    ({"StudyDate": "-20260101"}, False),
    ({"AccessionNumber": "?"}, False),
    ({"ModalitiesInStudy": "MR"}, False),
])
def test_empty_stored_values_match_only_universal_keys(keys, expected):
    assert found(EMPTY, **keys) is expected


@pytest.mark.parametrize("level, model, keys, record, expected", [
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "Modality": "MR"}, SERIES, True),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "Modality": "CT"}, SERIES, False),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "SeriesNumber": "3"}, SERIES, True),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "SeriesNumber": "3.0"}, SERIES, True),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "SeriesNumber": "4"}, SERIES, False),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "SeriesDescription": "T1*"}, SERIES, True),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.9"}, SERIES, False),
    ("IMAGE", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.2.3.1.1",
                               "InstanceNumber": "9"}, IMAGE, True),
    ("IMAGE", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.2.3.1.1",
                               "SOPInstanceUID": ["1.2.3.1.1.8", "1.2.3.1.1.9"]}, IMAGE, True),
    ("IMAGE", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2.3.1", "SeriesInstanceUID": "1.2.3.1.1",
                               "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}, IMAGE, False),
    ("PATIENT", qm.PATIENT_ROOT, {"PatientName": "DOE*"}, STUDY, True),
    ("PATIENT", qm.PATIENT_ROOT, {"PatientID": "MRN5001", "PatientBirthDate": "19800101-"}, STUDY, True),
    ("PATIENT", qm.PATIENT_ROOT, {"PatientSex": "M"}, STUDY, False),
    ("STUDY", qm.PATIENT_ROOT, {"PatientID": "MRN5001", "StudyDate": "2026"}, STUDY, None),
    ("STUDY", qm.PATIENT_ROOT, {"PatientID": "MRN5001", "AccessionNumber": "ACC1001"}, STUDY, True),
    ("SERIES", qm.PATIENT_ROOT, {"PatientID": "MRN5001", "StudyInstanceUID": "1.2.3.1", "Modality": "MR"},
     SERIES, True),
])
def test_levels_below_and_above_the_study(level, model, keys, record, expected):
    if expected is None:
        with pytest.raises(InvalidQuery):
            found(record, level, model, **keys)
        return
    assert found(record, level, model, **keys) is expected


def test_a_sequence_key_is_not_indexed_so_matches_everything():
    ds = ident("STUDY")
    item = Dataset()
    item.CodeValue = "X"
    ds.ProcedureCodeSequence = [item]
    assert qm.matches(qm.parse_query(ds, qm.STUDY_ROOT), STUDY)


@pytest.mark.parametrize("level, model, keys, words", [
    ("", qm.STUDY_ROOT, {}, "Query/Retrieve Level"),
    ("PATIENT", qm.STUDY_ROOT, {}, "takes STUDY, SERIES, IMAGE"),
    ("FRAME", qm.PATIENT_ROOT, {}, "Query/Retrieve Level"),
    ("STUDY", qm.STUDY_ROOT, {"Modality": "MR"}, "below the STUDY level"),
    ("STUDY", qm.STUDY_ROOT, {"SOPInstanceUID": "1.2", "SeriesNumber": "1"}, "SOPInstanceUID, SeriesNumber are keys"),
    ("SERIES", qm.STUDY_ROOT, {"Modality": "MR"}, "needs StudyInstanceUID"),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": ""}, "needs StudyInstanceUID"),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": ["1.2", "1.3"]}, "needs StudyInstanceUID"),
    ("IMAGE", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2"}, "needs SeriesInstanceUID"),
    ("STUDY", qm.PATIENT_ROOT, {}, "needs PatientID"),
    ("STUDY", qm.PATIENT_ROOT, {"PatientID": "MRN*"}, "needs PatientID"),
    ("STUDY", qm.STUDY_ROOT, {"PatientName": ["A", "B"]}, "only UID keys take a list"),
    ("STUDY", qm.STUDY_ROOT, {"StudyDate": "yesterday"}, "not a valid DA key"),
    ("STUDY", qm.STUDY_ROOT, {"StudyTime": "25"}, "not a valid TM key"),
])
def test_identifiers_the_model_cannot_answer_are_refused(level, model, keys, words):
    ds = ident(level, **keys) if level else Dataset()
    for keyword, value in ({} if level else keys).items():
        setattr(ds, keyword, value)
    with pytest.raises(InvalidQuery) as err:
        qm.parse_query(ds, model)
    assert words in str(err.value)


def test_the_answer_holds_the_keys_asked_the_level_the_unique_key_and_the_retrieve_ae():
    query = qm.parse_query(ident("STUDY", PatientName="", StudyDate="", InstitutionName="",
                                 NumberOfStudyRelatedInstances=""), qm.STUDY_ROOT)
    answer = qm.response(query, STUDY, "GATEKEEPER")
    assert answer.QueryRetrieveLevel == "STUDY" and answer.RetrieveAETitle == "GATEKEEPER"
    assert str(answer.PatientName) == "DOE^JANE^Q" and answer.StudyDate == "20261201"
    assert answer.StudyInstanceUID == "1.2.3.1"  # the unique key, though not asked
    assert answer.InstitutionName in ("", None)  # asked, not indexed: empty
    assert int(answer.NumberOfStudyRelatedInstances) == 7
    assert "AccessionNumber" not in answer and "SpecificCharacterSet" not in answer


def test_non_ascii_answers_carry_their_character_set():
    query = qm.parse_query(ident("STUDY", PatientName=""), qm.STUDY_ROOT)
    answer = qm.response(query, {**STUDY, "PatientName": "MÜLLER^JÖRG"}, "GATEKEEPER")
    assert answer.SpecificCharacterSet == qm.RECORD_CHARSET and str(answer.PatientName) == "MÜLLER^JÖRG"
    assert found({**STUDY, "PatientName": "MÜLLER^JÖRG"}, PatientName="muller*")


@pytest.mark.parametrize("level, model, keys, expected", [
    ("STUDY", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2"}, (("StudyInstanceUID", ("1.2",)),)),
    ("STUDY", qm.STUDY_ROOT, {"StudyInstanceUID": ["1.2", "1.3"], "PatientName": "X"},
     (("StudyInstanceUID", ("1.2", "1.3")),)),
    ("SERIES", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2", "SeriesInstanceUID": ["1.2.1", "1.2.2"]},
     (("StudyInstanceUID", ("1.2",)), ("SeriesInstanceUID", ("1.2.1", "1.2.2")))),
    ("IMAGE", qm.STUDY_ROOT, {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.1", "SOPInstanceUID": "1.2.1.1"},
     (("StudyInstanceUID", ("1.2",)), ("SeriesInstanceUID", ("1.2.1",)), ("SOPInstanceUID", ("1.2.1.1",)))),
    ("PATIENT", qm.PATIENT_ROOT, {"PatientID": "MRN5001"}, (("PatientID", ("MRN5001",)),)),
    ("STUDY", qm.PATIENT_ROOT, {"PatientID": "MRN5001", "StudyInstanceUID": "1.2"},
     (("PatientID", ("MRN5001",)), ("StudyInstanceUID", ("1.2",)))),
    ("STUDY", qm.STUDY_ROOT, {}, None),
    ("STUDY", qm.STUDY_ROOT, {"StudyInstanceUID": ""}, None),
    ("SERIES", qm.STUDY_ROOT, {"SeriesInstanceUID": "1.2.1"}, None),
    ("PATIENT", qm.PATIENT_ROOT, {"PatientID": "MRN*"}, None),
    ("PATIENT", qm.PATIENT_ROOT, {"PatientID": ["A", "B"]}, None),
    ("PATIENT", qm.STUDY_ROOT, {"PatientID": "A"}, None),
])
def test_retrieval_identifiers(level, model, keys, expected):
    if expected is None:
        with pytest.raises(InvalidQuery):
            qm.parse_retrieval(ident(level, **keys), model)
        return
    wanted = qm.parse_retrieval(ident(level, **keys), model)
    assert (wanted.level, wanted.keys) == (level, expected)


@pytest.mark.parametrize("calling, include_held, viewers, expected", [
    ("WS1", False, ["WS1"], {ARCHIVED}),
    ("WS1", True, ["WS1"], {ARCHIVED, HELD}),
    ("WS1 ", True, ["WS1"], {ARCHIVED, HELD}),
    ("WS2", True, ["WS1"], {ARCHIVED}),
    ("WS1", True, [], {ARCHIVED}),
    ("ws1", True, ["WS1"], {ARCHIVED}),  # AE titles are case sensitive
])
def test_who_sees_held_studies(calling, include_held, viewers, expected):
    assert qm.visible_states(calling, include_held, viewers) == expected


@pytest.mark.parametrize("keys, expected", [
    ({"StudyDate": ""}, True),
    ({"StudyDate": "20000101-"}, False),  # a malformed stored date is in no range
    ({"StudyTime": "-2359"}, False),
    ({"PatientBirthDate": "19800203"}, False),
])
def test_malformed_stored_values_are_matched_without_warnings(keys, expected, recwarn):
    record = {**STUDY, "StudyDate": "2026-12-01", "StudyTime": "quarter past ten", "PatientBirthDate": "1980"}
    query = qm.parse_query(ident("STUDY", **keys), qm.STUDY_ROOT)
    recwarn.clear()
    assert qm.matches(query, record) is expected
    assert qm.response(query, record, "GATEKEEPER") is not None
    assert [str(w.message) for w in recwarn] == []
