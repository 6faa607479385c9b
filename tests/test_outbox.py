"""The forwarding queue (docs/rules.md, rule 10) with a real database and store, no network:
queued in the transaction that archives a study, taken by one sender at a time (on
PostgreSQL by several gateways at once, ``FOR UPDATE SKIP LOCKED``), outcomes per
instance and generation, retry, figures and the retention of forwarded studies.

Instances come from ``tests.dicom_factory`` (MRN5001, ACC1001, MR) and match the order
fixture, as in tests/test_store_service.py.
"""

from __future__ import annotations

import datetime as dt
import threading

import peewee
import pytest
from pydicom.uid import generate_uid

from gateway.app import MODELS, open_app
from gateway.settings import load
from infra.audit import AuditEvent
from infra.errors import InvalidInput, NotFound
from store import forwarding as rules
from store.models import ForwardRow, StudyRow
from store.states import ARCHIVED, HELD, PURGED
from tests.conftest import Clock, write_settings
from tests.dicom_factory import make_instance, make_order, write_instance
from tests.test_store_service import auth

STUDY = "1.2.826.0.1.3680043.8.498.2001"
T0 = dt.datetime(2026, 12, 2, 9, 0, 0)
FORWARD = """
[forward.PACS]
ae_title = "PACS"
host = "127.0.0.1"
port = 1
storage_commitment = true

[forward.CTONLY]
ae_title = "CTARCHIVE"
host = "127.0.0.1"
port = 2
modalities = ["CT"]

[forward.VNA]
ae_title = "VNA"
host = "127.0.0.1"
port = 3
"""


def _clear_postgres(url: str) -> None:
    from infra.db import bind, open_database

    db = open_database(url)
    bind(db, MODELS)
    db.connect(reuse_if_open=True)
    db.drop_tables(MODELS, cascade=True, safe=True)
    db.execute_sql("DROP TABLE IF EXISTS schema_version")
    db.close()


@pytest.fixture(params=["sqlite", "postgres"])
def fapp(request, tmp_path):
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        _clear_postgres(url)
    application = open_app(load(write_settings(tmp_path, extra=FORWARD, database_url=url), environ={}),
                           clock=Clock(dt.datetime(2026, 11, 30, 8, 0)))
    application.store.outbox.clock = queue_clock = Clock(T0)
    application.queue_clock = queue_clock
    application.gate.import_orders([make_order(study_instance_uid=STUDY)])
    application.gate.import_auths([auth()])
    yield application
    application.close()


def receive(app, tmp_path, calling="MR1", study=STUDY, sop=None, **overrides):
    ds = make_instance(StudyInstanceUID=study, **({"SOPInstanceUID": sop} if sop else {}), **overrides)
    return app.store.receive(write_instance(tmp_path / f"{generate_uid()}.dcm", ds), calling)


def rows(study=STUDY, destination=None):
    query = ForwardRow.select().where(ForwardRow.study_instance_uid == study).order_by(ForwardRow.id)
    if destination:
        query = query.where(ForwardRow.destination == destination)
    return list(query)


def later(app, seconds: int) -> None:
    app.queue_clock.now += dt.timedelta(seconds=seconds)


# ---------------------------------------------------------------- what is queued


def test_a_clean_instance_is_queued_for_each_destination_that_takes_its_modality(fapp, tmp_path):
    got = receive(fapp, tmp_path)
    assert got.state == ARCHIVED
    queued = {r.destination: r for r in rows()}
    assert set(queued) == {"PACS", "VNA"}  # CTONLY takes CT only; the instance is MR
    assert all((r.state, r.attempts, r.generation, r.next_attempt_at) == ("pending", 0, 1, T0) for r in queued.values())
    other = "1.2.826.0.1.3680043.8.498.2003"
    fapp.gate.import_orders([make_order(accession_number="ACC1010", modality="CT", study_instance_uid=other)])
    ct = receive(fapp, tmp_path, study=other, AccessionNumber="ACC1010", Modality="CT")
    assert ct.state == ARCHIVED
    assert {r.destination for r in ForwardRow.select().where(ForwardRow.sop_instance_uid == ct.sop_instance_uid)} == {
        "PACS", "CTONLY", "VNA"}


def test_a_held_instance_is_never_queued_and_a_release_queues_the_study(fapp, tmp_path):
    got = receive(fapp, tmp_path, PatientBirthDate="19800302")
    assert got.state == HELD and rows() == []
    fapp.store.release(STUDY, user="tech.anna", reason="confirmed")
    assert {(r.destination, r.state) for r in rows()} == {("PACS", "pending"), ("VNA", "pending")}


def test_a_study_from_a_destination_goes_back_to_it_only_when_corrected(fapp, tmp_path):
    receive(fapp, tmp_path, calling="PACS")
    assert {r.destination for r in rows()} == {"VNA"}
    other = "1.2.826.0.1.3680043.8.498.2002"
    fapp.gate.import_orders([make_order(accession_number="ACC1009", study_instance_uid=other)])
    receive(fapp, tmp_path, calling="PACS", study=other, AccessionNumber="ACC1009", PatientName="DOE^JAIN")
    fapp.store.correct(other, user="tech.anna", reason="typo")
    assert {r.destination for r in rows(other)} == {"PACS", "VNA"}


def test_a_release_keeps_what_was_sent_and_a_correction_sends_everything_again(fapp, tmp_path):
    first = receive(fapp, tmp_path)
    batch = claim_now(fapp, "VNA")
    [item] = batch.items
    assert fapp.store.outbox.sent(batch, item, 0x0000)
    receive(fapp, tmp_path, PatientName="DOE^JAIN")  # the archived study is held again
    assert StudyRow.get(StudyRow.study_instance_uid == STUDY).state == HELD
    later(fapp, 60)
    assert fapp.store.outbox.claim() is None  # a held study's rows wait
    fapp.store.correct(STUDY, user="tech.anna", reason="typo")
    vna = {r.sop_instance_uid: r for r in rows(destination="VNA")}
    assert vna[first.sop_instance_uid].state == "pending" and vna[first.sop_instance_uid].generation == 2
    assert fapp.store.outbox.sent(batch, item, 0x0000) is False  # the old send does not count for the corrected copy
    assert ForwardRow.get_by_id(vna[first.sop_instance_uid].id).state == "pending"


def claim_now(app, destination: str):
    """Claim until ``destination``'s batch comes (after the quiet period)."""
    later(app, app.store.outbox.quiet_seconds + 1)
    for _ in range(10):
        batch = app.store.outbox.claim(exclude=[n for n in app.store.outbox.destinations if n != destination])
        if batch is not None:
            return batch
    raise AssertionError(f"nothing to claim for {destination}")


# ---------------------------------------------------------------- taking work


def test_a_study_is_taken_whole_once_it_is_quiet_and_leased_to_one_sender(fapp, tmp_path):
    for _ in range(3):
        receive(fapp, tmp_path)
    outbox = fapp.store.outbox
    assert outbox.claim() is None  # still arriving
    later(fapp, outbox.quiet_seconds + 1)
    batch = outbox.claim(exclude=["PACS"])
    assert (batch.destination.name, batch.study_instance_uid, len(batch.items)) == ("VNA", STUDY, 3)
    assert all(i.path.is_file() and i.transfer_syntax_uid == rules.EXPLICIT_LE for i in batch.items)
    assert outbox.claim(exclude=["PACS"]) is None  # leased
    later(fapp, outbox.lease_seconds + 1)
    again = outbox.claim(exclude=["PACS"])  # the lease lapsed (a sender killed mid-send)
    assert again is not None and again.claim != batch.claim and len(again.items) == 3
    assert outbox.sent(batch, batch.items[0], 0) is False  # the lapsed lease no longer records
    assert outbox.release_claims() == 3
    assert outbox.claim(exclude=["PACS"]).claim not in (batch.claim, again.claim)


def test_failures_back_off_growing_then_fail_and_retry_queues_again(fapp, tmp_path):
    receive(fapp, tmp_path)
    outbox = fapp.store.outbox
    batch = claim_now(fapp, "VNA")
    outbox.attempt_failed(batch, batch.items, "VNA did not answer", None)
    [row] = rows(destination="VNA")
    assert (row.state, row.attempts, row.next_attempt_at) == ("pending", 1, fapp.queue_clock.now + dt.timedelta(
        seconds=rules.BACKOFF_FIRST))
    assert outbox.claim(exclude=["PACS"]) is None  # backing off
    later(fapp, rules.BACKOFF_FIRST)
    batch = outbox.claim(exclude=["PACS"])
    outbox.attempt_failed(batch, batch.items, "refused", 0xA700)
    [row] = rows(destination="VNA")
    assert (row.attempts, row.last_status, row.next_attempt_at) == (2, 0xA700, fapp.queue_clock.now + dt.timedelta(
        seconds=2 * rules.BACKOFF_FIRST))
    ForwardRow.update(attempts=rules.MAX_ATTEMPTS - 1).where(ForwardRow.id == row.id).execute()
    later(fapp, rules.BACKOFF_CAP)
    batch = outbox.claim(exclude=["PACS"])
    assert outbox.attempt_failed(batch, batch.items, "refused", 0xA700) == 1
    [row] = rows(destination="VNA")
    assert (row.state, row.attempts) == ("failed", rules.MAX_ATTEMPTS)
    figures = outbox.figures()
    assert figures.failures_by_status == {"0xA700": 1} and figures.backlog == {"PACS": 1, "CTONLY": 0, "VNA": 0}

    with pytest.raises(NotFound):
        outbox.retry(study="1.2.3.404")
    with pytest.raises(InvalidInput):
        outbox.retry()
    assert outbox.retry(all_failed=True, user="tech.anna") == 1
    [row] = rows(destination="VNA")
    assert (row.state, row.attempts, row.generation) == ("pending", 0, 2)
    event = AuditEvent.select().where(AuditEvent.action == rules.AUDIT_RETRY).get()
    assert (event.user, event.subject) == ("tech.anna", "all-failed")


def test_storage_commitment_reports_commit_or_fail_by_transaction(fapp, tmp_path):
    a, b = receive(fapp, tmp_path), receive(fapp, tmp_path)
    outbox = fapp.store.outbox
    batch = claim_now(fapp, "PACS")
    for item in batch.items:
        outbox.sent(batch, item, 0)
    outbox.commitment_requested(batch, batch.items, "1.2.3.99")
    assert outbox.commitment_result("1.2.3.98", [a.sop_instance_uid], []) == (0, 0)  # not ours
    assert outbox.commitment_result("1.2.3.99", [a.sop_instance_uid], [(b.sop_instance_uid, 0x0110)]) == (1, 1)
    pacs = {r.sop_instance_uid: r for r in rows(destination="PACS")}
    assert pacs[a.sop_instance_uid].state == "committed" and pacs[a.sop_instance_uid].committed_at == fapp.queue_clock.now
    assert (pacs[b.sop_instance_uid].state, pacs[b.sop_instance_uid].last_status) == ("failed", 0x0110)
    assert "0x0110" in pacs[b.sop_instance_uid].last_error
    [group] = outbox.groups(state="failed")
    assert (group.destination, group.state, group.counts["committed"], group.counts["failed"]) == ("PACS", "failed", 1, 1)
    with pytest.raises(InvalidInput):
        outbox.groups(state="lost")


def test_figures_give_backlog_and_oldest_pending_age(fapp, tmp_path):
    receive(fapp, tmp_path)
    later(fapp, 90)
    figures = fapp.store.outbox.figures()
    assert figures.backlog == {"PACS": 1, "CTONLY": 0, "VNA": 1}
    assert figures.oldest_pending_seconds == 90
    assert figures.by_state["VNA"]["pending"] == 1


# ---------------------------------------------------------------- retention


def test_retention_removes_a_study_every_destination_has_and_never_a_held_one(fapp, tmp_path):
    outbox = fapp.store.outbox
    outbox.forwarded_retention_days = 7
    got = receive(fapp, tmp_path)
    for name in ("PACS", "VNA"):
        batch = claim_now(fapp, name)
        outbox.sent(batch, batch.items[0], 0)
    outbox.commitment_requested(claim_stub(), [], "x")  # nothing to do, no error
    later(fapp, 8 * 86400)
    assert outbox.remove_forwarded().removed == 0  # PACS commits: sent is not enough there
    ForwardRow.update(state="committed", committed_at=fapp.queue_clock.now).where(
        ForwardRow.destination == "PACS").execute()
    assert outbox.remove_forwarded().removed == 0  # committed just now
    later(fapp, 7 * 86400)
    StudyRow.update(state=HELD).where(StudyRow.study_instance_uid == STUDY).execute()
    assert outbox.remove_forwarded().removed == 0  # held: never
    StudyRow.update(state=ARCHIVED).where(StudyRow.study_instance_uid == STUDY).execute()
    done = outbox.remove_forwarded()
    assert (done.removed, done.files_deleted) == (1, 1)
    assert StudyRow.get(StudyRow.study_instance_uid == STUDY).state == PURGED
    assert not (fapp.store.root / got.stored.path).exists()
    event = AuditEvent.select().where(AuditEvent.action == rules.AUDIT_REMOVED_AFTER_FORWARDING).get()
    assert event.subject == STUDY and '"files_deleted": 1' in event.detail


def claim_stub():
    from store.outbox import Batch

    return Batch(rules.Destination("X", "X", "h", 1, "GK"), STUDY, "none", ())


# ---------------------------------------------------------------- several gateways on PostgreSQL


def test_two_senders_on_postgresql_never_take_the_same_row(pg_url, tmp_path):
    _clear_postgres(pg_url)
    apps = []
    for n in range(2):
        folder = tmp_path / f"gw{n}"
        folder.mkdir()
        apps.append(open_app(load(write_settings(folder, extra=FORWARD, database_url=pg_url), environ={}),
                             clock=Clock(dt.datetime(2026, 11, 30, 8, 0))))
    try:
        first = apps[0]
        # one order a study: a second study of one order would be held as DUPLICATE_STUDY (rule 7)
        studies = {f"ACC90{n:02d}": generate_uid() for n in range(12)}
        first.gate.import_orders([make_order(accession_number=acc, study_instance_uid=study)
                                  for acc, study in studies.items()])
        first.gate.import_auths([auth()])
        # the queue runs on the wall clock; fixed here so that queued at T0 is due at T0 + 60 s whatever today is
        first.store.outbox.clock = Clock(T0)
        for acc, study in studies.items():
            for _ in range(2):
                receive(first, tmp_path, study=study, AccessionNumber=acc)
        for app in apps:
            app.store.outbox.clock = Clock(T0 + dt.timedelta(seconds=60))
        taken: list[list[int]] = [[], []]
        start = threading.Barrier(2)

        def work(n: int) -> None:
            outbox = apps[n].store.outbox
            start.wait(10)
            try:
                while (batch := outbox.claim()) is not None:
                    taken[n].extend(i.row_id for i in batch.items)
            finally:
                apps[n].db.close()

        threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        every = taken[0] + taken[1]
        assert len(every) == len(set(every)) == 12 * 2 * 2  # 12 studies, 2 instances, PACS and VNA
    finally:
        for app in apps:
            app.close()


def test_the_queue_table_is_created_by_the_schema_step(fapp):
    assert "forward_queue" in fapp.db.get_tables()
    assert isinstance(ForwardRow._meta.database, peewee.Database)


def test_the_report_gives_the_queue_per_destination(fapp, tmp_path, capsys, monkeypatch):
    import json

    from gateway.cli.main import main

    receive(fapp, tmp_path)
    later(fapp, 120)
    report = fapp.store.report(dt.date(2026, 11, 1))
    assert report.forwarding.backlog == {"PACS": 1, "CTONLY": 0, "VNA": 1}
    from gateway.cli.workflow import as_text
    text = as_text(report)
    assert "Forwarding now: 2 instances waiting, oldest pending 2 min" in text
    assert "  VNA: backlog 1, 1 pending, 0 sent, 0 committed, 0 failed" in text

    monkeypatch.setenv("GATEKEEPER_NOW", "2026-11-30T08:00:00")
    assert main(["--config", str(fapp.settings.source), "report", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["forwarding"]
    assert data["backlog"] == {"PACS": 1, "CTONLY": 0, "VNA": 1} and data["failures_by_status"] == {}
    assert data["oldest_pending_seconds"] >= 0


def test_metrics_export_the_backlog_per_destination(fapp, tmp_path):
    from gateway.metrics import Metrics

    receive(fapp, tmp_path)
    later(fapp, 30)
    text = Metrics(fapp).exposition().decode()
    assert 'gatekeeper_forward_backlog{destination="VNA"} 1.0' in text
    assert 'gatekeeper_forward_backlog{destination="CTONLY"} 0.0' in text
    assert 'gatekeeper_forward_failed{destination="PACS"} 0.0' in text
    assert "gatekeeper_forward_oldest_pending_seconds 30.0" in text
    assert 'gatekeeper_collector_up{collector="forward"} 1.0' in text


def test_the_forward_purge_job_runs_by_hand(fapp, tmp_path, capsys, monkeypatch):
    from gateway import jobs
    from gateway.cli.main import main

    assert jobs.forward_purge(fapp).summary == "storage.forwarded_retention_days is 0: forwarded studies are kept"
    fapp.store.outbox.forwarded_retention_days = 3
    receive(fapp, tmp_path)
    done = jobs.forward_purge(fapp)
    assert done.counts == {"candidates": 1, "removed": 0, "files_deleted": 0}
    assert "1 archived studies in the forwarding queue: 0 at every destination for 3 days" in done.summary
    monkeypatch.setenv("GATEKEEPER_NOW", "2026-11-30T08:00:00")
    assert main(["--config", str(fapp.settings.source), "jobs", "run", "forward_purge"]) == 0
    assert "forward_purge: storage.forwarded_retention_days is 0" in capsys.readouterr().out
