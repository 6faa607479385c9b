"""The Query/Retrieve use case (store/qr.py) over a real index: the SQL pre-filter narrows by
exact values and date ranges but never changes the answer the pure match gives, on SQLite
and PostgreSQL; the receive path fills the query attributes and a re-sent instance updates
its own."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.app import open_app
from gateway.settings import load
from store import qr_match as qm
from store.models import InstanceRow, StudyRow
from store.states import HELD
from tests.conftest import write_settings
from tests.test_schema import _drop_everything
from tests.dicom_factory import make_instance, write_instance
from worklist.mwl_match import InvalidQuery

#: (label, Study Date, Patient ID, Accession Number) of the studies received (no orders: all held).
STUDIES = [
    ("a", "20261201", "P1", "ACC1"),
    ("b", "20261130", "P1", "ACC2"),
    ("c", "", "P2", "ACC3"),
    ("d", "2026-12-01", "P2", ""),  # malformed: in no range
    ("e", "20261301", "P3", "ACC5"),  # no such month: in no range
    ("f", "20261202", "P10", "ACC10"),
]


@pytest.fixture(params=["sqlite", "postgres"])
def qr_app(request, tmp_path, clock):
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        _drop_everything(url)
    app = open_app(load(write_settings(tmp_path, database_url=url), environ={}), clock=clock)
    uids = {}
    for label, day, patient, accession in STUDIES:
        ds = make_instance(StudyInstanceUID=generate_uid(), StudyDate=day, PatientID=patient, AccessionNumber=accession,
                           SeriesNumber="7", InstanceNumber="3", SeriesDescription=f"SERIES {label}")
        app.store.receive(write_instance(tmp_path / f"{label}.dcm", ds), "MR1")
        uids[label] = ds.StudyInstanceUID
    app.uids = uids
    yield app
    app.close()
    if url:
        _drop_everything(url)


def found(app, **keys) -> set[str]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    by_uid = {uid: label for label, uid in app.uids.items()}
    return {by_uid[a.StudyInstanceUID] for a in app.qr.find(ds, qm.STUDY_ROOT, {HELD})}


@pytest.mark.parametrize("keys, expected", [
    ({"StudyDate": ""}, set("abcdef")),
    ({"StudyDate": "20261201"}, {"a"}),
    ({"StudyDate": "20261130-"}, {"a", "b", "f"}),
    ({"StudyDate": "-20261130"}, {"b"}),
    ({"StudyDate": "20261201-20261202"}, {"a", "f"}),
    ({"StudyDate": "20261203-"}, set()),
    ({"PatientID": "P1"}, {"a", "b"}),
    ({"PatientID": "P1*"}, {"a", "b", "f"}),  # a wild card: no SQL equality
    ({"PatientID": "P?"}, {"a", "b", "c", "d", "e"}),
    ({"AccessionNumber": "ACC1"}, {"a"}),
    ({"AccessionNumber": "ACC1*"}, {"a", "f"}),
    ({"AccessionNumber": ""}, set("abcdef")),
    ({"PatientID": "P2", "StudyDate": "20000101-"}, set()),
])
def test_the_pre_filter_never_changes_the_answer(qr_app, keys, expected):
    assert found(qr_app, **keys) == expected


def test_a_malformed_date_key_is_refused_before_any_lookup(qr_app):
    with pytest.raises(InvalidQuery):
        found(qr_app, StudyDate="2026-12")


def test_the_receive_path_fills_the_query_attributes(qr_app, tmp_path):
    row = StudyRow.get(StudyRow.study_instance_uid == qr_app.uids["a"])
    assert (row.patient_name, row.birth_date, row.patient_sex, row.study_time, row.study_id,
            row.study_description) == ("DOE^JANE^Q", "19800203", "F", "101500", "1", "MRI BRAIN W/O CONTRAST")
    instance = InstanceRow.get(InstanceRow.study_instance_uid == qr_app.uids["a"])
    assert (instance.modality, instance.series_number, instance.instance_number,
            instance.series_description) == ("MR", "7", "3", "SERIES a")
    again = make_instance(StudyInstanceUID=qr_app.uids["a"], SOPInstanceUID=instance.sop_instance_uid,
                          SeriesInstanceUID=instance.series_instance_uid, InstanceNumber="4", StudyDate="20261201",
                          PatientID="P1", AccessionNumber="ACC1")
    qr_app.store.receive(write_instance(tmp_path / "again.dcm", again), "MR1")
    assert InstanceRow.get(InstanceRow.sop_instance_uid == instance.sop_instance_uid).instance_number == "4"
