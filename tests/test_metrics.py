"""GET /healthz and GET /metrics (gateway/http/health.py, gateway/metrics.py) against the
server in process, on a free metrics port."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
import logging
import os
import re
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pydicom.uid import generate_uid
from pynetdicom.sop_class import (ModalityPerformedProcedureStep, ModalityWorklistInformationFind, MRImageStorage,
                                  StorageCommitmentPushModel, StorageCommitmentPushModelInstance, Verification)

from gateway import jobs
from gateway.app import open_app
from gateway.http import health
from gateway.metrics import Metrics
from gateway.settings import load
from infra.errors import GatekeeperError
from tests.conftest import EXAMPLES, Clock, RunningServer, free_port, write_settings
from tests.dicom_factory import make_instance
from worklist.intake import parse_auths, parse_orders

#: The examples' exam day: ACC1002's auth ended the day before (examples/README.md).
EXAM_DAY = dt.datetime(2026, 12, 1, 8, 0, 0)


def _settings(tmp_path, extra_replacements=()) -> tuple:
    path = write_settings(tmp_path)
    text = path.read_text()
    head, metrics = text.split("\n[metrics]\n", 1)
    assert re.match(r"(#[^\n]*\n)*port = 0\n", metrics)  # write_settings turned metrics off
    port = free_port()
    text = head + "\n[metrics]\n" + metrics.replace("port = 0\n", f"port = {port}\n", 1)
    for old, new in extra_replacements:
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    return load(path, environ={}), port


@pytest.fixture
def monitored(tmp_path):
    """The server on the examples' exam day, with /healthz and /metrics on a free port."""
    settings, port = _settings(tmp_path)
    app = open_app(settings, clock=Clock(EXAM_DAY))
    app.gate.import_orders(parse_orders((EXAMPLES / "orders.json").read_text()))
    app.gate.import_auths(parse_auths((EXAMPLES / "auths.json").read_text()))
    running = RunningServer(app).start()
    running.metrics_port = port
    yield running
    running.stop()
    app.close()


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET on loopback (no proxy)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        conn.close()


def scrape(port: int) -> dict[tuple, float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    status, content_type, body = get(port, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def _worklist_query(assoc) -> list[int]:
    identifier = Dataset()
    identifier.PatientName = ""
    identifier.AccessionNumber = ""
    step = Dataset()
    step.ScheduledStationAETitle = ""
    step.ScheduledProcedureStepStartDate = "20261201"
    identifier.ScheduledProcedureStepSequence = [step]
    return [status.Status for status, _ in assoc.send_c_find(identifier, ModalityWorklistInformationFind)]


def _associate(port: int, calling: str = "MR1"):
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.add_requested_context(ModalityWorklistInformationFind, ImplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")


def _wait_for(predicate, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ---------------------------------------------------------------------------------- /healthz


def test_healthz_is_200_then_503_naming_storage_below_the_reserve_then_200_again(monitored, monkeypatch):
    status, content_type, body = get(monitored.metrics_port, "/healthz")
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "checks": {"database": "ok", "storage": "ok", "dicom": "ok"}}

    real_statvfs = os.statvfs

    def nearly_full(path):
        stats = real_statvfs(path)
        return os.statvfs_result((stats.f_bsize, stats.f_frsize, stats.f_blocks, 1, 1, *tuple(stats)[5:]))

    monkeypatch.setattr(os, "statvfs", nearly_full)  # the archive's check_room asks os.statvfs
    status, _, body = get(monitored.metrics_port, "/healthz")
    report = json.loads(body)
    assert status == 503
    assert report["status"] == "failing" and report["failing"] == ["storage"]
    assert "storage.min_free_mb" in report["checks"]["storage"]
    assert report["checks"]["database"] == report["checks"]["dicom"] == "ok"

    monkeypatch.setattr(os, "statvfs", real_statvfs)
    status, _, body = get(monitored.metrics_port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_healthz_names_the_database_and_the_listener_when_they_fail(app, monkeypatch):
    def broken():
        raise RuntimeError("connection refused")

    monkeypatch.setattr(app.db, "get_tables", broken)
    status, report = health.Health(app, listener=None).report()
    assert status == 503 and report["failing"] == ["database", "dicom"]
    assert "connection refused" in report["checks"]["database"]
    assert report["checks"]["dicom"] == "the DICOM listener is not running"


def test_the_listener_check_sees_a_stopped_server(tmp_path):
    settings, _ = _settings(tmp_path)
    app = open_app(settings, clock=Clock(EXAM_DAY))
    try:
        from gateway.dicom.server import build_ae

        ae, handlers = build_ae(app)
        listener = ae.start_server((settings.bind_address, settings.port), block=False, evt_handlers=handlers)
        check = health.Health(app, listener)
        assert check.checks()["dicom"] == "ok"
        listener.shutdown()
        assert check.checks()["dicom"] != "ok"
    finally:
        app.close()


def test_unknown_paths_are_404(monitored):
    assert get(monitored.metrics_port, "/")[0] == 404


def test_a_metrics_port_in_use_is_named(app):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        app.settings = dataclasses.replace(app.settings, metrics_port=port, metrics_bind_address="127.0.0.1")
        with pytest.raises(GatekeeperError, match=rf"port {port} .*metrics\.port = {port}"):
            health.start(app, Metrics(), None)


def test_metrics_off_serves_nothing(app):
    assert app.settings.metrics_port == 0
    assert health.start(app, Metrics(), None) is None


# ---------------------------------------------------------------------------------- /metrics


def test_metrics_after_a_worklist_query_and_a_store(monitored):
    port = monitored.metrics_port
    before = scrape(port)
    assert value(before, "gatekeeper_associations_open") == 0
    assert ("gatekeeper_dicom_operation_duration_seconds_count",
            (("operation", "C-FIND"), ("status", "0x0000"))) not in before

    assoc = _associate(monitored.port)
    assert assoc.is_established
    try:
        assert value(scrape(port), "gatekeeper_associations_open") == 1
        statuses = _worklist_query(assoc)
        assert statuses[-1] == 0x0000 and len(statuses) == 3  # ACC1001 and ACC1003 served, then success
        assert assoc.send_c_store(make_instance(AccessionNumber="ACC9999")).Status == 0x0000  # unknown: held
    finally:
        assoc.release()
    assert _wait_for(lambda: value(scrape(port), "gatekeeper_associations_open") == 0)

    m = scrape(port)
    ops = "gatekeeper_dicom_operation_duration_seconds"
    assert value(m, f"{ops}_count", operation="C-FIND", status="0x0000") == 1
    assert value(m, f"{ops}_count", operation="C-STORE", status="0x0000") == 1
    assert value(m, f"{ops}_bucket", operation="C-FIND", status="0x0000", le="+Inf") == 1
    assert value(m, f"{ops}_sum", operation="C-STORE", status="0x0000") > 0
    # today's orders, decided at scrape time: ACC1002's auth ended yesterday and is for the other knee
    assert value(m, "gatekeeper_orders_today", decision="served") == 2
    assert value(m, "gatekeeper_orders_today", decision="withheld") == 1
    assert value(m, "gatekeeper_orders_withheld_today", reason="AUTH_DATE_OUT_OF_RANGE") == 1
    assert value(m, "gatekeeper_orders_withheld_today", reason="AUTH_LATERALITY_MISMATCH") == 1
    assert value(m, "gatekeeper_orders_withheld_today", reason="AUTH_MISSING") == 0  # every code, 0 when unused
    assert value(m, "gatekeeper_orders_served_today", basis="auth") == 1
    assert value(m, "gatekeeper_orders_served_today", basis="no-auth-needed") == 1
    # the held study, by reason
    assert value(m, "gatekeeper_held_studies") == 1
    assert value(m, "gatekeeper_held_studies_by_reason", reason="ACCESSION_UNKNOWN") == 1
    assert value(m, "gatekeeper_held_studies_by_reason", reason="PATIENT_ID_MISMATCH") == 0
    assert value(m, "gatekeeper_collector_up", collector="orders") == 1
    assert value(m, "gatekeeper_collector_up", collector="held") == 1
    # nothing refused; the jobs are there with no runs yet
    assert value(m, "gatekeeper_associations_refused_total", rule="server.max_associations") == 0
    assert value(m, "gatekeeper_job_runs_total", job="reevaluate") == 0
    # no forward backlog: forwarding does not exist yet
    assert not [name for name, _ in m if "forward" in name]
    # no patient data in any label
    body = get(port, "/metrics")[2]
    for private in ("MRN500", "DOE^", "ROE^", "ACC100", "ACC9999"):
        assert private not in body


def test_refused_associations_are_counted_by_rule(tmp_path):
    settings, port = _settings(tmp_path, [('unknown_aets = "allow"', 'unknown_aets = "refuse"'),
                                          ("max_associations = 20", "max_associations = 1")])
    app = open_app(settings, clock=Clock(EXAM_DAY))
    running = RunningServer(app).start()
    try:
        intruder = _associate(running.port, "INTRUDER")
        assert intruder.is_rejected
        first = _associate(running.port, "MR1")
        assert first.is_established
        second = _associate(running.port, "CT1")
        assert second.is_rejected  # beyond server.max_associations
        first.release()
        m = scrape(port)
        refused = "gatekeeper_associations_refused_total"
        assert value(m, refused, rule="server.unknown_aets") == 1
        assert value(m, "gatekeeper_access_refused_total", rule="server.unknown_aets", service="-") == 1
        assert value(m, refused, rule="server.max_associations") == 1
        assert value(m, refused, rule="server.max_associations_per_address") == 0
    finally:
        running.stop()
        app.close()


def test_two_servers_in_one_process_have_their_own_registries(monitored, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    settings, port = _settings(other)
    app = open_app(settings, clock=Clock(EXAM_DAY))
    running = RunningServer(app).start()
    try:
        assoc = _associate(monitored.port)
        assert _worklist_query(assoc)[-1] == 0x0000
        assoc.release()
        ops = "gatekeeper_dicom_operation_duration_seconds_count"
        assert value(scrape(monitored.metrics_port), ops, operation="C-FIND", status="0x0000") == 1
        assert (ops, (("operation", "C-FIND"), ("status", "0x0000"))) not in scrape(port)
        assert value(scrape(port), "gatekeeper_orders_today", decision="served") == 0  # its own, empty database
    finally:
        running.stop()
        app.close()


def test_mpps_and_commitment_are_counted_by_status_and_logged_with_their_fields(monitored, caplog):
    ae = AE(ae_title="MR1")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", monitored.port, ae_title="GATEKEEPER")
    assert assoc.is_established
    try:
        with caplog.at_level(logging.INFO, logger="gateway.dicom"):
            created = Dataset()
            created.PerformedProcedureStepStatus = "IN PROGRESS"
            item = Dataset()
            item.AccessionNumber = "ACC1001"
            created.ScheduledStepAttributesSequence = [item]
            status, _ = assoc.send_n_create(created, ModalityPerformedProcedureStep, generate_uid())
            assert status.Status == 0x0000
            completed = Dataset()
            completed.PerformedProcedureStepStatus = "COMPLETED"
            status, _ = assoc.send_n_set(completed, ModalityPerformedProcedureStep, generate_uid())
            assert status.Status == 0x0112  # no such step
            empty = Dataset()
            empty.TransactionUID = generate_uid()
            status, _ = assoc.send_n_action(empty, 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance)
            assert status.Status == 0x0115  # no references
    finally:
        assoc.release()
    m = scrape(monitored.metrics_port)
    ops = "gatekeeper_dicom_operation_duration_seconds_count"
    assert value(m, ops, operation="N-CREATE", status="0x0000") == 1
    assert value(m, ops, operation="N-SET", status="0x0112") == 1
    assert value(m, ops, operation="N-ACTION", status="0x0115") == 1
    fields = {r.operation: (r.calling_ae, r.status) for r in caplog.records
              if r.name in ("gateway.dicom.mpps", "gateway.dicom.commitment") and hasattr(r, "operation")}
    assert fields == {"N-CREATE": ("MR1", "0x0000"), "N-SET": ("MR1", "0x0112"), "N-ACTION": ("MR1", "0x0115")}


# ---------------------------------------------------------------------------------- units


def test_job_runs_and_failures_are_counted_by_job(app):
    metrics = Metrics(jobs=jobs.JOBS)
    calls = []

    def flaky(_app):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first run fails")
        return jobs.JobResult("flaky", "fine")

    job = jobs.Job("flaky", "a test job", flaky, lambda s: [], lambda s: "by hand")
    assert jobs.guarded(app, job, metrics) is None
    assert jobs.guarded(app, job, metrics).summary == "fine"
    assert jobs.guarded(app, jobs.get("held_age"), metrics) is not None
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples}
    assert value(m, "gatekeeper_job_runs_total", job="flaky") == 2
    assert value(m, "gatekeeper_job_failures_total", job="flaky") == 1
    assert value(m, "gatekeeper_job_runs_total", job="held_age") == 1
    assert value(m, "gatekeeper_job_failures_total", job="held_age") == 0
    assert value(m, "gatekeeper_job_runs_total", job="purge_rejected") == 0  # every job, before its first run
    assert value(m, "gatekeeper_job_last_success_timestamp_seconds", job="held_age") > 0


def test_a_database_failure_at_scrape_time_is_reported_not_raised(app, monkeypatch, caplog):
    metrics = Metrics(app)

    def down(*_):
        raise RuntimeError("database down")

    monkeypatch.setattr(app.gate, "day", down)
    text = metrics.exposition().decode()
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text)
         for s in f.samples}
    assert value(m, "gatekeeper_collector_up", collector="orders") == 0
    assert value(m, "gatekeeper_collector_up", collector="held") == 1
    assert ("gatekeeper_orders_today", (("decision", "served"),)) not in m
    assert any("could not read the orders figures" in r.getMessage() for r in caplog.records)


def test_scraping_keeps_the_callers_database_connection(app):
    """A scrape in a thread that has a connection (a test, a job) leaves it open."""
    assert not app.db.is_closed()
    Metrics(app).exposition()
    assert not app.db.is_closed()


def test_every_package_is_listed_for_setuptools():
    """A wheel (the Dockerfile's ``pip install``) holds only the packages pyproject.toml lists:
    without gateway.http there, ``gatekeeper serve`` fails to import its health server."""
    import tomllib

    from tests.conftest import ROOT

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {p.parent.relative_to(ROOT).as_posix().replace("/", ".")
             for top in ("infra", "worklist", "store", "gateway") for p in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"


# ------------------------------------------------------------ counts relayed from worker processes


def _samples(metrics: Metrics) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples}


def test_a_relay_counts_in_the_metrics_that_follow_its_pipe():
    from gateway.metrics import MetricsRelay

    metrics = Metrics()
    read, write = os.pipe()
    reader = metrics.follow(read, "receiving worker 0")
    relay = MetricsRelay(write)
    relay.operation("C-STORE", 0x0000, 0.02)
    relay.operation("C-STORE", 0xA700, 0.5)
    relay.operation("C-FIND", 0x0000, -1.0)  # a clock step back counts as 0 s, as Metrics.operation does
    relay.refused("calling 'CT9' from 10.0.0.9: 20 associations already (server.max_associations = 20)")
    relay.access_refused("modalities.host", "C-STORE")
    relay.refusal_not_audited("modalities.host")
    os.close(write)  # the worker ended: the reader applies what is left and stops
    reader.join(5)
    assert not reader.is_alive()
    m = _samples(metrics)
    ops = "gatekeeper_dicom_operation_duration_seconds_count"
    assert value(m, ops, operation="C-STORE", status="0x0000") == 1
    assert value(m, ops, operation="C-STORE", status="0xA700") == 1
    assert value(m, ops, operation="C-FIND", status="0x0000") == 1
    assert value(m, "gatekeeper_dicom_operation_duration_seconds_sum", operation="C-FIND", status="0x0000") == 0
    assert value(m, "gatekeeper_dicom_operation_duration_seconds_bucket", operation="C-STORE", status="0x0000",
                 le="0.025") == 1
    assert value(m, "gatekeeper_associations_refused_total", rule="server.max_associations") == 1
    assert value(m, "gatekeeper_associations_refused_total", rule="server.max_associations_per_address") == 0
    assert value(m, "gatekeeper_access_refused_total", rule="modalities.host", service="C-STORE") == 1
    assert value(m, "gatekeeper_access_refusals_not_audited_total", rule="modalities.host") == 1
    assert relay.dropped == 0


@pytest.mark.parametrize("record", [
    None, [], {}, "operation", ["operation"], ["nothing", 1],
    ["operation", "C-STORE", 0], ["operation", "C-STORE", 0, 0.1, 1],  # too few, too many
    ["operation", "C-STORE", "0x0000", 0.1], ["operation", "C-STORE", 0.0, 0.1], ["operation", "C-STORE", True, 0.1],
    ["operation", "C-STORE", -1, 0.1], ["operation", "C-STORE", 0x10000, 0.1],
    ["operation", "C-STORE", 0, -0.001], ["operation", "C-STORE", 0, float("nan")], ["operation", "C-STORE", 0, "1"],
    ["operation", "C" * 65, 0, 0.1], ["operation", 7, 0, 0.1],
    ["refused"], ["refused", 3], ["access_refused", "modalities.host"], ["access_refused", "r" * 65, "-"],
    ["access_refused", "modalities.host", None], ["refusal_not_audited", "r" * 65], ["refusal_not_audited", []],
])
def test_a_record_that_is_not_a_count_counts_nothing(record):
    metrics = Metrics()
    before = _samples(metrics)
    assert metrics.apply(record) is False
    assert _samples(metrics) == before


@pytest.mark.parametrize("record", [
    ["operation", "C-STORE", 0, 0], ["operation", "C-STORE", 0xFFFF, 0.0], ["operation", "C" * 64, 0, 300.0],
    ["refused", ""], ["access_refused", "r" * 64, "-"], ["refusal_not_audited", "modalities.host"],
])
def test_the_edges_of_a_count_are_counted(record):
    metrics = Metrics()
    before = sum(_samples(metrics).values())
    assert metrics.apply(record) is True
    assert sum(_samples(metrics).values()) > before


def test_lines_that_are_not_counts_are_logged_and_the_rest_still_count(caplog):
    metrics = Metrics()
    read, write = os.pipe()
    reader = metrics.follow(read, "receiving worker 1")
    os.write(write, b'not json\n["operation","C-FIND",0,0.01]\n["operation","C-FI')  # the last line cut short
    os.write(write, b'ND",0,0.01]\n["bogus"]\n')
    os.close(write)
    reader.join(5)
    ops = "gatekeeper_dicom_operation_duration_seconds_count"
    assert value(_samples(metrics), ops, operation="C-FIND", status="0x0000") == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("receiving worker 1 sent a line that is not a count" in w for w in warnings)


def test_a_full_pipe_drops_counts_instead_of_waiting(caplog):
    from gateway.metrics import MetricsRelay

    read, write = os.pipe()
    relay = MetricsRelay(write)  # nobody reads: the pipe fills
    try:
        started = time.monotonic()
        for _ in range(100_000):
            relay.operation("C-STORE", 0, 0.01)
            if relay.dropped:
                break
        assert relay.dropped == 1 and time.monotonic() - started < 30
        relay.operation("C-STORE", 0, 0.01)
        assert relay.dropped == 2
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert warnings == ["metrics: 1 counts not passed to the main process so far ([Errno 11] Resource "
                            "temporarily unavailable); /metrics misses them"]  # once a minute, not per count
        os.read(read, 1 << 20)  # read again: counts pass again
        relay.operation("C-STORE", 0, 0.01)
        assert relay.dropped == 2
    finally:
        os.close(read)
        os.close(write)


def test_a_relay_whose_main_process_is_gone_drops_quietly():
    from gateway.metrics import MetricsRelay

    read, write = os.pipe()
    os.close(read)
    relay = MetricsRelay(write)
    try:
        relay.refused("server.ae_title")  # EPIPE: no exception into the association
        assert relay.dropped == 1
    finally:
        os.close(write)


def test_associations_open_counts_the_slots_of_every_process(tmp_path):
    from gateway.dicom.slots import SharedSlots

    metrics = Metrics()
    one, other = SharedSlots(tmp_path, 5), SharedSlots(tmp_path, 5)  # two processes' views
    metrics.watch_slots(one)
    held = [one.take("10.0.0.1", 0)[0], other.take("10.0.0.2", 0)[0]]
    assert value(_samples(metrics), "gatekeeper_associations_open") == 2
    held[1].release()
    assert value(_samples(metrics), "gatekeeper_associations_open") == 1
    held[0].release()
    assert value(_samples(metrics), "gatekeeper_associations_open") == 0
