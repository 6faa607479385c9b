"""Query/Retrieve use cases: :meth:`QueryRetrieve.find` (C-FIND) and :meth:`QueryRetrieve.retrieve`
(C-MOVE, C-GET).

The index (:mod:`store.index`) is asked only for studies in the states the caller may see
(:func:`store.qr_match.visible_states`) and, where the identifier gives exact values
(UIDs, a Patient ID, an Accession Number), for those only: that lookup may narrow, but the
pure match (:func:`store.qr_match.matches`) decides. Nothing here reads a file except
:meth:`QueryRetrieve.load`, which reads one instance to send.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from pydicom import dcmread
from pydicom.dataset import Dataset

from store import qr_match as qm
from store.index import Index
from store.models import InstanceRow, StudyRow


@dataclass(frozen=True)
class Instance:
    """One instance to send: where it is (relative to the storage root) and what it is."""

    study_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    path: str


class QueryRetrieve:
    """Finds and retrieves the studies of one index and storage root."""

    def __init__(self, index: Index, root: Path, *, ae_title: str, include_held: bool = False,
                 held_viewers: Iterable[str] = ()) -> None:
        self.index = index
        self.root = Path(root)
        self.ae_title = ae_title
        self.include_held = include_held
        self.held_viewers = tuple(held_viewers)

    def visible_states(self, calling_ae: str) -> frozenset[str]:
        return qm.visible_states(calling_ae, self.include_held, self.held_viewers)

    # ---------------------------------------------------------------- C-FIND

    def find(self, identifier: Dataset, model: str, states: Iterable[str]) -> Iterator[Dataset]:
        """The answers to a C-FIND identifier, one dataset per matching entity among the studies
        in ``states`` (:meth:`visible_states` of the caller).

        Raises :class:`worklist.mwl_match.InvalidQuery` (before anything is yielded) for an
        identifier the model cannot answer.
        """
        query = qm.parse_query(identifier, model)
        for record in self._records(query, frozenset(states)):
            if qm.matches(query, record):
                yield qm.response(query, record, self.ae_title)

    def _records(self, query: qm.Query, states: frozenset[str]) -> Iterator[dict]:
        study_uids = query.uids("StudyInstanceUID")
        studies = self.index.qr_studies(states, study_uids=study_uids, patient_id=query.value("PatientID"),
                                        accession=query.value("AccessionNumber") if query.level == qm.STUDY else None,
                                        study_dates=query.date_range("StudyDate"))
        if query.level == qm.PATIENT:
            yield from self._patients(studies, query)
            return
        if query.level == qm.STUDY:
            summary = self.index.qr_summary([s.study_instance_uid for s in studies]) if _needs_summary(query) else {}
            for row in studies:
                yield _study_record(row, summary.get(row.study_instance_uid))
            return
        by_uid = {s.study_instance_uid: s for s in studies}
        instances = self.index.qr_instances(by_uid, series_uids=query.uids("SeriesInstanceUID"),
                                            sop_uids=query.uids("SOPInstanceUID") if query.level == qm.IMAGE else ())
        if query.level == qm.SERIES:
            series: dict[tuple[str, str], list[InstanceRow]] = defaultdict(list)
            for row in instances:
                series[(row.study_instance_uid, row.series_instance_uid)].append(row)
            for (study, _), rows in series.items():
                yield {**_study_record(by_uid[study], None), **_series_record(rows)}
            return
        counts: dict[tuple[str, str], list[InstanceRow]] = defaultdict(list)
        for row in instances:
            counts[(row.study_instance_uid, row.series_instance_uid)].append(row)
        for row in instances:
            yield {**_study_record(by_uid[row.study_instance_uid], None),
                   **_series_record(counts[(row.study_instance_uid, row.series_instance_uid)]),
                   "InstanceNumber": row.instance_number, "SOPInstanceUID": row.sop_instance_uid,
                   "SOPClassUID": row.sop_class_uid}

    def _patients(self, studies: list[StudyRow], query: qm.Query) -> Iterator[dict]:
        patients: dict[str, list[StudyRow]] = defaultdict(list)
        for row in studies:
            patients[row.patient_id].append(row)
        summary = self.index.qr_summary([s.study_instance_uid for s in studies]) if _needs_summary(query) else {}
        for patient_id, rows in patients.items():
            latest = max(rows, key=lambda r: (r.last_received_at, r.id))
            sums = [summary.get(r.study_instance_uid) for r in rows]
            yield {
                "PatientID": patient_id, "PatientName": latest.patient_name,
                "PatientBirthDate": latest.birth_date, "PatientSex": latest.patient_sex,
                "NumberOfPatientRelatedStudies": len(rows),
                "NumberOfPatientRelatedSeries": sum(s.series for s in sums if s),
                "NumberOfPatientRelatedInstances": sum(s.instances for s in sums if s),
            }

    # ---------------------------------------------------------------- C-MOVE, C-GET

    def retrieve(self, identifier: Dataset, model: str, states: Iterable[str]) -> list[Instance]:
        """The instances a C-MOVE or C-GET identifier names, among the studies in ``states``.

        Raises :class:`worklist.mwl_match.InvalidQuery` for an identifier that names nothing
        retrievable (no unique key of its level, a missing key of a level above).
        """
        wanted = qm.parse_retrieval(identifier, model)
        patient = wanted.values("PatientID")
        studies = self.index.qr_studies(frozenset(states), study_uids=wanted.values("StudyInstanceUID"),
                                        patient_id=patient[0] if patient else None)
        if not studies:
            return []
        rows = self.index.qr_instances([s.study_instance_uid for s in studies],
                                       series_uids=wanted.values("SeriesInstanceUID"),
                                       sop_uids=wanted.values("SOPInstanceUID"))
        return [Instance(r.study_instance_uid, r.sop_class_uid, r.sop_instance_uid, r.transfer_syntax_uid, r.path) for r in rows]

    def load(self, instance: Instance) -> Dataset:
        """The stored dataset of ``instance`` (an OSError when its file is gone)."""
        return dcmread(self.root / instance.path)


def _needs_summary(query: qm.Query) -> bool:
    """Whether the query asks for what only the instances know (modalities, SOP classes, counts)."""
    wanted = {"ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
              "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances"}
    return any(kw in query.returned for kw in wanted)


def _study_record(row: StudyRow, summary) -> dict:
    record = {
        "PatientID": row.patient_id, "PatientName": row.patient_name, "PatientBirthDate": row.birth_date,
        "PatientSex": row.patient_sex, "StudyInstanceUID": row.study_instance_uid, "StudyDate": row.study_date,
        "StudyTime": row.study_time, "AccessionNumber": row.accession_number, "StudyID": row.study_id,
        "StudyDescription": row.study_description, "ReferringPhysicianName": row.referring_physician,
    }
    if summary is not None:
        record.update(ModalitiesInStudy=summary.modalities, SOPClassesInStudy=summary.sop_classes,
                      NumberOfStudyRelatedSeries=summary.series, NumberOfStudyRelatedInstances=summary.instances)
    return record


def _series_record(rows: list[InstanceRow]) -> dict:
    first = rows[0]
    return {
        "SeriesInstanceUID": first.series_instance_uid,
        "Modality": next((r.modality for r in rows if r.modality), ""),
        "SeriesNumber": first.series_number, "SeriesDescription": first.series_description,
        "NumberOfSeriesRelatedInstances": len(rows),
    }
