"""The filing path's one look-up (:meth:`store.index.Index.lookup`) answers as the study and
instance look-ups do, in every case receiving meets, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from pydicom.uid import generate_uid

from gateway.app import open_app
from gateway.settings import load
from store.index import IndexedInstance, IndexedStudy
from tests.conftest import write_settings
from tests.dicom_factory import make_instance, write_instance
from tests.test_schema import _drop_everything


@pytest.fixture(params=["sqlite", "postgres"])
def app(request, tmp_path, clock):
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        _drop_everything(url)
    app = open_app(load(write_settings(tmp_path, database_url=url), environ={}), clock=clock)
    yield app
    app.close()
    if url:
        _drop_everything(url)


def test_lookup_answers_as_the_two_lookups_do(app, tmp_path):
    index = app.store.index
    ds = make_instance(StudyInstanceUID=generate_uid())
    app.store.receive(write_instance(tmp_path / "a.dcm", ds), "MR1")
    other = make_instance(StudyInstanceUID=generate_uid())
    app.store.receive(write_instance(tmp_path / "b.dcm", other), "MR1")
    new_study, new_sop = generate_uid(), generate_uid()
    cases = [
        (new_study, new_sop),  # a new study's first instance
        (ds.StudyInstanceUID, new_sop),  # the next instance of a known study
        (ds.StudyInstanceUID, ds.SOPInstanceUID),  # a re-sent instance
        (new_study, other.SOPInstanceUID),  # a known instance sent again under another study
        (ds.StudyInstanceUID, other.SOPInstanceUID),  # ... under another known study
    ]
    for study, sop in cases:
        assert index.lookup(study, sop) == (index.study(study), index.instance(sop)), (study, sop)
    row, instance = index.lookup(ds.StudyInstanceUID, other.SOPInstanceUID)
    assert isinstance(row, IndexedStudy) and isinstance(instance, IndexedInstance)
    assert row.state == "held" and row.pending_files is None
    assert instance.study_instance_uid == other.StudyInstanceUID
    assert instance.path == f"held/{other.StudyInstanceUID}/{other.SeriesInstanceUID}/{other.SOPInstanceUID}.dcm"
    assert index.lookup(new_study, new_sop) == (None, None)
