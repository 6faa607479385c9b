"""The index of received studies: every query and write the store makes, in one place.

The rows are :mod:`store.models` (studies, instances, findings). The filing path's
statements are prepared once (:class:`Index` keeps their SQL) because it runs per
instance; the rest goes through peewee. The callers decide what a transaction holds
(:meth:`Index.transaction`) and take the locks.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import peewee as pw

from infra import audit
from infra.db import batches
from store import archive as trees
from store.archive import StoredFile
from store.commitment import Reference, StoredInstance
from store.header import InstanceHeader
from store.models import FindingRow, InstanceRow, StudyRow
from store.reconcile import CODES, PriorStudy, Reconciliation
from store.states import ARCHIVED, HELD, PURGED, REJECTED

#: ``StudyRow.pending_files``: move the study's files into its state's tree / delete the others.
MOVE, PRUNE = "move", "prune"


class IndexedStudy(NamedTuple):
    id: int
    state: str
    accession_number: str
    order_accession: str
    pending_files: str | None


class IndexedInstance(NamedTuple):
    id: int
    study_instance_uid: str
    path: str


class StudySummary(NamedTuple):
    """What a study's instances say of it, for the Query/Retrieve study-level keys."""

    modalities: tuple[str, ...]
    sop_classes: tuple[str, ...]
    series: int
    instances: int


class Index:
    """The store's rows in one database.

    The statements of the filing path are plain SQL, each built once: peewee builds the
    SQL of every query anew, which costs more than SQLite takes to run it (about 0.4 ms a
    statement against 0.03 ms); filing an instance takes four or five. They are built from
    the models with the database's own quoting and parameter style, so they run on SQLite
    and PostgreSQL alike, and values go through each field's ``db_value`` as peewee would
    pass them.
    """

    def __init__(self, db: pw.Database) -> None:
        self.db = db
        self._sql: dict[tuple, str] = {}
        #: Index transactions of the filing path take turns. SQLite lets one writer in at a
        #: time and makes the others wait in its busy handler, which sleeps in steps of
        #: milliseconds (up to 25 ms and more), far longer than a transaction here takes;
        #: queueing on a lock hands the turn over at once. (PostgreSQL would not need it; it
        #: costs little there.)
        self.one_writer = threading.Lock()

    def transaction(self):
        """One transaction of the index (nested, a savepoint)."""
        return self.db.atomic()

    # ---------------------------------------------------------------- the filing path's SQL

    def study(self, uid: str) -> IndexedStudy | None:
        found = self._run(("study",), lambda q, p: (
            f"SELECT {q('id')}, {q('state')}, {q('accession_number')}, {q('order_accession')}, "
            f"{q('pending_files')} FROM {q(StudyRow._meta.table_name)} WHERE {q('study_instance_uid')} = {p}"),
            [uid]).fetchone()
        return IndexedStudy(*found) if found else None

    def instance(self, sop: str) -> IndexedInstance | None:
        found = self._run(("instance",), lambda q, p: (
            f"SELECT {q('id')}, {q('study_instance_uid')}, {q('path')} FROM {q(InstanceRow._meta.table_name)} "
            f"WHERE {q('sop_instance_uid')} = {p}"), [sop]).fetchone()
        return IndexedInstance(*found) if found else None

    def lookup(self, study: str, sop: str) -> tuple[IndexedStudy | None, IndexedInstance | None]:
        """:meth:`study` and :meth:`instance` in one statement: the rows the filing of one instance starts from.

        Each statement is a round trip to the database; against PostgreSQL the trip costs
        more than the look-up (about 0.5 ms on loopback), so the two are asked together.
        Both columns are unique, so the answer is one row, NULLs where a row does not exist.
        """
        found = self._run(("lookup",), lambda q, p: (
            f"SELECT s.{q('id')}, s.{q('state')}, s.{q('accession_number')}, s.{q('order_accession')}, "
            f"s.{q('pending_files')}, i.{q('id')}, i.{q('study_instance_uid')}, i.{q('path')} "
            f"FROM (SELECT 1 AS {q('one')}) AS o "
            f"LEFT JOIN {q(StudyRow._meta.table_name)} AS s ON s.{q('study_instance_uid')} = {p} "
            f"LEFT JOIN {q(InstanceRow._meta.table_name)} AS i ON i.{q('sop_instance_uid')} = {p}"),
            [study, sop]).fetchone()
        return (IndexedStudy(*found[:5]) if found[0] is not None else None,
                IndexedInstance(*found[5:]) if found[5] is not None else None)

    def _insert(self, model: type[pw.Model], values: dict) -> None:
        names = tuple(values)
        fields = [model._meta.fields[n] for n in names]
        self._run(("insert", model, names), lambda q, p: (
            f"INSERT INTO {q(model._meta.table_name)} ({', '.join(q(f.column_name) for f in fields)}) "
            f"VALUES ({', '.join([p] * len(fields))})"), [f.db_value(values[f.name]) for f in fields])

    def _update(self, model: type[pw.Model], row_id: int, values: dict, add: dict | None = None) -> None:
        add = add or {}
        names, added = tuple(values), tuple(add)
        fields = [model._meta.fields[n] for n in names]
        counters = [model._meta.fields[n] for n in added]

        def sql(q, p):
            sets = [f"{q(f.column_name)} = {p}" for f in fields]
            sets += [f"{q(f.column_name)} = {q(f.column_name)} + {p}" for f in counters]
            return f"UPDATE {q(model._meta.table_name)} SET {', '.join(sets)} WHERE {q('id')} = {p}"

        self._run(("update", model, names, added), sql,
                  [f.db_value(values[f.name]) for f in fields] + [add[f.name] for f in counters] + [row_id])

    def _run(self, key: tuple, build: Callable, params: list):
        sql = self._sql.get(key)
        if sql is None:
            quote, param = self.db.quote, self.db.param
            sql = self._sql[key] = build(lambda name: quote[0] + name + quote[-1], param)
        return self.db.execute_sql(sql, params)

    def record_instance(self, row: IndexedStudy | None, existing: IndexedInstance | None, header: InstanceHeader,
                        found: Reconciliation, order_accession: str, state: str, stored: StoredFile,
                        calling_ae: str, now: dt.datetime, moves_to: str | None) -> None:
        """Index one filed instance: its study (new or updated), its row and its findings.

        ``moves_to`` is the tree of the study's new state when this instance changes it: the
        study is then marked :data:`MOVE` and every instance row points into that tree.
        """
        study, sop = header.study_instance_uid, header.sop_instance_uid
        counts = existing is None or existing.study_instance_uid != study
        accession = found.accession_used[:16]
        if row is None:
            self._insert(StudyRow, dict(
                study_instance_uid=study, state=state, accession_number=accession,
                order_accession=order_accession, patient_id=header.patient_id[:64],
                study_date=header.study_date[:8], first_received_at=now, last_received_at=now,
                held_at=now if state == HELD else None, state_changed_at=now, instance_count=1,
                patient_name=header.patient_name[:200], birth_date=header.birth_date[:8],
                patient_sex=header.sex[:16], study_time=header.study_time[:16], study_id=header.study_id[:16],
                study_description=header.study_description[:64],
                referring_physician=header.referring_physician[:200],
            ))
        else:
            changes: dict = {"last_received_at": now}
            if not row.accession_number and accession:
                changes["accession_number"] = accession
            if not row.order_accession and order_accession:
                changes["order_accession"] = order_accession
            if moves_to:
                changes.update(state=state, state_changed_at=now, pending_files=MOVE, held_at=now, age_flagged_at=None)
                if row.state == ARCHIVED:
                    changes["reopened_at"] = now
            self._update(StudyRow, row.id, changes, add={"instance_count": 1} if counts else {})
        columns = dict(
            study_instance_uid=study, series_instance_uid=header.series_instance_uid,
            sop_class_uid=header.sop_class_uid, transfer_syntax_uid=header.transfer_syntax_uid[:64],
            path=str(stored.path), size=stored.size, sha256=stored.sha256, received_from=calling_ae[:16],
            received_at=now, modality=header.modality[:16], series_number=header.series_number[:12],
            series_description=header.series_description[:64], instance_number=header.instance_number[:12],
        )
        if existing is None:
            self._insert(InstanceRow, dict(sop_instance_uid=sop, **columns))
        else:
            self._update(InstanceRow, existing.id, columns)
            FindingRow.delete().where(FindingRow.sop_instance_uid == sop).execute()
            if existing.study_instance_uid != study:
                StudyRow.update(instance_count=StudyRow.instance_count - 1).where(
                    StudyRow.study_instance_uid == existing.study_instance_uid).execute()
        self._insert_findings(study, sop, found, now)
        if moves_to:
            self.repath(study, moves_to)

    def _insert_findings(self, study: str, sop: str, found: Reconciliation, now: dt.datetime) -> None:
        for f in found.findings:
            self._insert(FindingRow, dict(
                study_instance_uid=study, sop_instance_uid=sop, code=f.code, instance_value=f.instance_value[:255],
                order_value=f.order_value[:255], message=f.message, holds=f.code in found.hold_codes, found_at=now))

    def replace_findings(self, study: str, found: Iterable[tuple[str, Reconciliation]], now: dt.datetime) -> None:
        """The findings of ``study`` become those of its files as they are now (after a correction)."""
        FindingRow.delete().where(FindingRow.study_instance_uid == study).execute()
        for sop, reconciliation in found:
            self._insert_findings(study, sop, reconciliation, now)

    # -------------------------------------------------------------- studies and their state

    def study_row(self, study: str) -> StudyRow | None:
        return StudyRow.get_or_none(StudyRow.study_instance_uid == study)

    def instance_row(self, sop: str) -> InstanceRow | None:
        return InstanceRow.get_or_none(InstanceRow.sop_instance_uid == sop)

    def study_instances(self, study: str) -> list[InstanceRow]:
        """The instance rows of ``study``, in the order they were first indexed."""
        return list(InstanceRow.select().where(InstanceRow.study_instance_uid == study).order_by(InstanceRow.id))

    def pending_studies(self) -> Iterator[str]:
        """Studies marked ``pending_files`` (their files are not all in the tree of their state)."""
        query = StudyRow.select(StudyRow.study_instance_uid).where(StudyRow.pending_files.is_null(False))
        for (uid,) in query.tuples():
            yield uid

    def mark_pending(self, row_id: int, mark: str) -> None:
        StudyRow.update(pending_files=mark).where(StudyRow.id == row_id).execute()

    def clear_pending(self, row: StudyRow) -> None:
        """Clear the mark ``row`` was read with (a mark set since then stays)."""
        StudyRow.update(pending_files=None).where(
            (StudyRow.id == row.id) & (StudyRow.pending_files == row.pending_files)).execute()

    def set_state(self, row_id: int, study: str, state: str, tree: str, now: dt.datetime) -> None:
        """The study is in ``state`` from ``now``: its rows point into ``tree``, its files are to move there."""
        StudyRow.update(state=state, state_changed_at=now, pending_files=MOVE).where(StudyRow.id == row_id).execute()
        self.repath(study, tree)

    def set_corrected(self, row_id: int, accession: str, patient_id: str, now: dt.datetime,
                      files: Iterable[tuple[int, StoredFile]], patient: dict[str, str] | None = None) -> None:
        """The study is archived under order ``accession`` from ``now``; ``files`` are (instance row id, corrected file).

        ``patient`` holds the query attributes the corrected files now carry (``patient_name``,
        ``birth_date``, ``patient_sex``), so a Query/Retrieve answer agrees with the files.
        """
        StudyRow.update(state=ARCHIVED, state_changed_at=now, accession_number=accession,
                        order_accession=accession, patient_id=patient_id, pending_files=PRUNE,
                        **(patient or {})).where(StudyRow.id == row_id).execute()
        for instance_id, new in files:
            InstanceRow.update(path=str(new.path), size=new.size, sha256=new.sha256).where(
                InstanceRow.id == instance_id).execute()

    def repath(self, study: str, tree: str) -> None:
        """Point every instance row of ``study`` at ``tree`` (paths are tree/study/series/sop.dcm)."""
        path = (pw.Value(f"{tree}/").concat(InstanceRow.study_instance_uid).concat("/")
                .concat(InstanceRow.series_instance_uid).concat("/").concat(InstanceRow.sop_instance_uid)
                .concat(trees.SUFFIX))
        InstanceRow.update(path=path).where(InstanceRow.study_instance_uid == study).execute()

    # ------------------------------------------------------------------------ review queries

    def held_rows(self) -> list[StudyRow]:
        """Every held study, oldest hold first."""
        return list(StudyRow.select().where(StudyRow.state == HELD)
                    .order_by(StudyRow.state_changed_at, StudyRow.study_instance_uid))

    def rows_of_accession(self, accession: str, state: str | None = None) -> list[StudyRow]:
        """Studies whose accession number, or linked order, is ``accession``; oldest first."""
        query = StudyRow.select().where((StudyRow.accession_number == accession) | (StudyRow.order_accession == accession))
        if state:
            query = query.where(StudyRow.state == state)
        return list(query.order_by(StudyRow.first_received_at, StudyRow.study_instance_uid))

    def archived_rows(self, accession: str | None = None) -> list[StudyRow]:
        """Archived studies, newest first, optionally only those of one accession number."""
        query = StudyRow.select().where(StudyRow.state == ARCHIVED)
        if accession:
            query = query.where((StudyRow.accession_number == accession) | (StudyRow.order_accession == accession))
        return list(query.order_by(StudyRow.last_received_at.desc(), StudyRow.study_instance_uid))

    def archived_of_orders(self, orders: dict) -> tuple[PriorStudy, ...]:
        """The archived studies linked to these orders (keyed by accession number), with each
        order's patient and CPT code: what a new study may duplicate (rule 7). By the indexed
        ``order_accession``, in one query a batch."""
        found = []
        for batch in batches(sorted(orders)):
            rows = (StudyRow.select(StudyRow.study_instance_uid, StudyRow.order_accession, StudyRow.study_date,
                                    StudyRow.first_received_at)
                    .where(StudyRow.order_accession.in_(batch) & (StudyRow.state == ARCHIVED)).tuples())
            for uid, accession, study_date, first in rows:
                order = orders[accession]
                found.append(PriorStudy(uid, accession, order.patient_id, order.cpt, study_date, first))
        return tuple(found)

    def hold_codes(self, studies: list[str]) -> dict[str, tuple[str, ...]]:
        """The distinct codes holding each study, in the order of :data:`store.reconcile.CODES`."""
        found: dict[str, set[str]] = defaultdict(set)
        for batch in batches(studies):
            query = (FindingRow.select(FindingRow.study_instance_uid, FindingRow.code)
                     .where(FindingRow.study_instance_uid.in_(batch) & (FindingRow.holds == True))  # noqa: E712
                     .distinct().tuples())
            for study, code in query:
                found[study].add(code)
        rank = {code: n for n, code in enumerate(CODES)}
        return {s: tuple(sorted(codes, key=lambda c: rank.get(c, len(rank)))) for s, codes in found.items()}

    def findings_of(self, study: str) -> Iterable[FindingRow]:
        return FindingRow.select().where(FindingRow.study_instance_uid == study).order_by(FindingRow.id)

    def senders_of(self, study: str) -> tuple[str, ...]:
        """The calling AE titles the instances of ``study`` came from."""
        return tuple(sorted({ae for (ae,) in InstanceRow.select(InstanceRow.received_from)
                             .where(InstanceRow.study_instance_uid == study).tuples() if ae}))

    # ------------------------------------------------------------------------ housekeeping

    def held_not_flagged(self) -> list[StudyRow]:
        return list(StudyRow.select().where((StudyRow.state == HELD) & StudyRow.age_flagged_at.is_null()))

    def flag_aged(self, study: str, now: dt.datetime) -> bool:
        """Mark a held study as flagged for its age; False when it left the hold or was flagged meanwhile."""
        return (StudyRow.update(age_flagged_at=now)
                .where((StudyRow.study_instance_uid == study) & (StudyRow.state == HELD)
                       & StudyRow.age_flagged_at.is_null())
                .execute()) == 1

    def rejected_rows(self) -> list[StudyRow]:
        return list(StudyRow.select().where(StudyRow.state == REJECTED))

    def indexed_size(self, study: str) -> tuple[int, int]:
        """(bytes, instance rows) indexed for ``study``."""
        size, rows = (InstanceRow.select(pw.fn.COALESCE(pw.fn.SUM(InstanceRow.size), 0), pw.fn.COUNT(InstanceRow.id))
                      .where(InstanceRow.study_instance_uid == study).scalar(as_tuple=True))
        return int(size), rows

    def mark_purged(self, study: str, now: dt.datetime) -> int | None:
        """A rejected study becomes purged: its instance rows go (the count), the study row and
        findings stay. None when it is no longer rejected."""
        won = (StudyRow.update(state=PURGED, state_changed_at=now)
               .where((StudyRow.study_instance_uid == study) & (StudyRow.state == REJECTED))
               .execute())
        if won != 1:
            return None
        return InstanceRow.delete().where(InstanceRow.study_instance_uid == study).execute()

    def mark_removed_after_forwarding(self, study: str, now: dt.datetime) -> int | None:
        """An archived study whose local copy was removed becomes purged: its instance rows go
        (the count), the study row and findings stay. None when it is no longer archived."""
        won = (StudyRow.update(state=PURGED, state_changed_at=now)
               .where((StudyRow.study_instance_uid == study) & (StudyRow.state == ARCHIVED))
               .execute())
        if won != 1:
            return None
        return InstanceRow.delete().where(InstanceRow.study_instance_uid == study).execute()

    # --------------------------------------------------------------------------- the report

    def archived_linked_since(self, start: dt.datetime) -> list[tuple[str, str, dt.datetime]]:
        """(Study UID, order accession, when it reached archived) of the archived studies linked to
        an order and first received from ``start`` on (by the indexed ``first_received_at``)."""
        query = (StudyRow.select(StudyRow.study_instance_uid, StudyRow.order_accession, StudyRow.state_changed_at)
                 .where((StudyRow.first_received_at >= start) & (StudyRow.state == ARCHIVED)
                        & (StudyRow.order_accession != ""))
                 .order_by(StudyRow.id))
        return list(query.tuples())

    def events_since(self, actions: Iterable[str], start: dt.datetime) -> dict[str, int]:
        """How many audit events of each of ``actions`` were recorded from ``start`` on (the report's flags)."""
        return audit.counts_since(actions, start)

    def reopened_since(self, start: dt.datetime) -> int:
        """Archived studies that a non-matching instance moved back to held, from ``start`` on."""
        return StudyRow.select().where(StudyRow.reopened_at >= start).count()

    def studies_since(self, start: dt.datetime) -> list[tuple[StudyRow, tuple[str, ...]]]:
        """Studies first received from ``start`` on, each with the codes of its holding findings."""
        rows = list(StudyRow.select().where(StudyRow.first_received_at >= start).order_by(StudyRow.id))
        codes = self.hold_codes([r.study_instance_uid for r in rows if r.held_at is not None])
        return [(r, tuple(sorted(codes.get(r.study_instance_uid, ())))) for r in rows]

    # ------------------------------------------------------------------ storage commitment

    def stored_instances(self, root: Path, references: Iterable[Reference]) -> dict[str, StoredInstance]:
        """What the index and the disk under ``root`` hold for these instances, keyed by SOP Instance UID."""
        uids = sorted({r.sop_instance_uid for r in references})
        rows = []
        for batch in batches(uids):
            rows.extend(InstanceRow.select().where(InstanceRow.sop_instance_uid.in_(batch)))
        states = {}
        for batch in batches(sorted({r.study_instance_uid for r in rows})):
            query = StudyRow.select(StudyRow.study_instance_uid, StudyRow.state).where(
                StudyRow.study_instance_uid.in_(batch))
            states.update(query.tuples())
        return {
            r.sop_instance_uid: StoredInstance(r.sop_instance_uid, r.sop_class_uid, states.get(r.study_instance_uid),
                                               (root / r.path).is_file())
            for r in rows
        }

    # ------------------------------------------------------------------ query/retrieve

    def qr_studies(self, states: Iterable[str], *, study_uids: Iterable[str] = (), patient_id: str | None = None,
                   accession: str | None = None,
                   study_dates: tuple[str | None, str | None] | None = None) -> list[StudyRow]:
        """Studies in ``states``, narrowed by the values given (the Q/R SQL pre-filter): UIDs,
        an exact Patient ID or Accession Number, a range of Study Dates (``YYYYMMDD`` text
        compares as the dates do; an empty or malformed stored date is in no range)."""
        query = StudyRow.select().where(StudyRow.state.in_(list(states)))
        uids = sorted(set(study_uids))
        if uids:
            query = query.where(StudyRow.study_instance_uid.in_(uids))
        if patient_id is not None:
            query = query.where(StudyRow.patient_id == patient_id)
        if accession is not None:
            query = query.where(StudyRow.accession_number == accession)
        if study_dates is not None:
            low, high = study_dates
            query = query.where(pw.fn.LENGTH(StudyRow.study_date) == 8)
            if low:
                query = query.where(StudyRow.study_date >= low)
            if high:
                query = query.where(StudyRow.study_date <= high)
        return list(query.order_by(StudyRow.first_received_at, StudyRow.study_instance_uid))

    def qr_instances(self, studies: Iterable[str], *, series_uids: Iterable[str] = (),
                     sop_uids: Iterable[str] = ()) -> list[InstanceRow]:
        """The instance rows of ``studies``, optionally only of some series or instances, in the order received."""
        rows: list[InstanceRow] = []
        series, sops = sorted(set(series_uids)), sorted(set(sop_uids))
        for batch in batches(sorted(set(studies))):
            query = InstanceRow.select().where(InstanceRow.study_instance_uid.in_(batch))
            if series:
                query = query.where(InstanceRow.series_instance_uid.in_(series))
            if sops:
                query = query.where(InstanceRow.sop_instance_uid.in_(sops))
            rows.extend(query)
        rows.sort(key=lambda r: r.id)
        return rows

    def qr_summary(self, studies: Iterable[str]) -> dict[str, StudySummary]:
        """For each of ``studies``: its modalities and SOP classes, and how many series and instances it has."""
        found: dict[str, tuple[set, set, set, list]] = {}
        for batch in batches(sorted(set(studies))):
            query = (InstanceRow.select(InstanceRow.study_instance_uid, InstanceRow.series_instance_uid,
                                        InstanceRow.modality, InstanceRow.sop_class_uid, pw.fn.COUNT(InstanceRow.id))
                     .where(InstanceRow.study_instance_uid.in_(batch))
                     .group_by(InstanceRow.study_instance_uid, InstanceRow.series_instance_uid, InstanceRow.modality,
                               InstanceRow.sop_class_uid).tuples())
            for study, series, modality, sop_class, count in query:
                modalities, classes, serieses, counts = found.setdefault(study, (set(), set(), set(), [0]))
                if modality:
                    modalities.add(modality)
                classes.add(sop_class)
                serieses.add(series)
                counts[0] += count
        return {study: StudySummary(tuple(sorted(a)), tuple(sorted(b)), len(c), d[0])
                for study, (a, b, c, d) in found.items()}
