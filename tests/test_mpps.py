"""MPPS (PS3.4 F.7, rule 6 of docs/rules.md): the state machine alone, then the SCP end to end.

The SCU tests drive the in-process server with a pynetdicom SCU, as a modality does:
N-CREATE IN PROGRESS, then N-SET COMPLETED or DISCONTINUED.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityPerformedProcedureStep, MRImageStorage

from worklist import mpps
from worklist.gating import BASIS_AUTH, BASIS_NOT_REQUIRED, BASIS_OVERRIDE, Decision, Reason
from worklist.intake import parse_auths, parse_orders
from infra.audit import AuditEvent
from worklist.models import AuthRow, MppsRow, OrderRow
from worklist.mpps import COMPLETE, COMPLETED, DISCONTINUED, FREE, IN_PROGRESS, NO_EFFECT, START
from worklist.orders import Override
from tests.conftest import EXAMPLES, import_auths, import_orders

# ---------------------------------------------------------------- the state machine, pure


@pytest.mark.parametrize("status, after", [
    ("IN PROGRESS", IN_PROGRESS),
    ("in progress ", IN_PROGRESS),
])
def test_create_accepts_only_in_progress(status, after):
    assert mpps.on_create(status) == mpps.Transition(None, after, START)


@pytest.mark.parametrize("status, error", [
    (None, mpps.MissingStatus),
    ("", mpps.InvalidStatus),
    ("COMPLETED", mpps.InvalidStatus),
    ("DISCONTINUED", mpps.InvalidStatus),
    ("PAUSED", mpps.InvalidStatus),
])
def test_create_refuses_other_statuses(status, error):
    with pytest.raises(error):
        mpps.on_create(status)


@pytest.mark.parametrize("current, requested, after, effect", [
    (IN_PROGRESS, "COMPLETED", COMPLETED, COMPLETE),
    (IN_PROGRESS, "DISCONTINUED", DISCONTINUED, FREE),
    (IN_PROGRESS, "discontinued", DISCONTINUED, FREE),
    (IN_PROGRESS, None, IN_PROGRESS, NO_EFFECT),  # interim update: series added
    (IN_PROGRESS, "IN PROGRESS", IN_PROGRESS, NO_EFFECT),
])
def test_set_on_a_step_in_progress(current, requested, after, effect):
    t = mpps.on_set(current, requested)
    assert (t.before, t.after, t.effect) == (current, after, effect)
    assert t.changed == (after != current)


@pytest.mark.parametrize("current, requested", [
    (COMPLETED, "COMPLETED"),
    (COMPLETED, "DISCONTINUED"),
    (COMPLETED, None),
    (DISCONTINUED, "COMPLETED"),
    (DISCONTINUED, "IN PROGRESS"),
])
def test_set_on_an_ended_step_is_refused(current, requested):
    with pytest.raises(mpps.StepFinal, match="may no longer be updated"):
        mpps.on_set(current, requested)


def test_set_with_an_unknown_status_is_refused():
    with pytest.raises(mpps.InvalidStatus, match="PAUSED"):
        mpps.on_set(IN_PROGRESS, "PAUSED")


@pytest.mark.parametrize("order_status, effect, others, expected", [
    ("scheduled", START, False, "in-progress"),
    ("in-progress", START, False, "in-progress"),
    ("cancelled", START, False, "cancelled"),
    ("completed", START, False, "completed"),
    ("in-progress", COMPLETE, False, "completed"),
    ("scheduled", COMPLETE, False, "completed"),
    ("cancelled", COMPLETE, False, "cancelled"),
    ("in-progress", FREE, False, "scheduled"),
    ("in-progress", FREE, True, "in-progress"),  # another step still running
    ("completed", FREE, False, "completed"),  # a second, abandoned step does not undo the exam
    ("discontinued", FREE, False, "discontinued"),
    ("in-progress", NO_EFFECT, False, "in-progress"),
])
def test_order_status_after(order_status, effect, others, expected):
    assert mpps.order_status_after(order_status, effect, others) == expected


_OVERRIDE = Override("ACC1", "tech", "stroke protocol", dt.datetime(2026, 12, 1, 9, 0))


@pytest.mark.parametrize("decision, already_used, expected", [
    (Decision("ACC1", True, BASIS_AUTH, "PA-1", ()), None, "PA-1"),
    (Decision("ACC1", True, BASIS_AUTH, "PA-1", ()), "", "PA-1"),
    (Decision("ACC1", True, BASIS_AUTH, "PA-1", ()), "PA-1", None),  # once per order
    (Decision("ACC1", True, BASIS_NOT_REQUIRED, None, ()), None, None),
    (Decision("ACC1", True, BASIS_OVERRIDE, None, (Reason("AUTH_MISSING", "x"),), _OVERRIDE), None, None),
    (Decision("ACC1", False, None, "PA-1", (Reason("AUTH_EXHAUSTED", "x"),)), None, None),
])
def test_unit_to_use(decision, already_used, expected):
    assert mpps.unit_to_use(decision, already_used) == expected


# ---------------------------------------------------------------- helpers for the database and SCU tests


def load_examples(app, auth_units: int | None = None) -> None:
    """Import the shared example orders and auths; optionally give every auth more units."""
    orders = parse_orders((EXAMPLES / "orders.json").read_text())
    auths = parse_auths((EXAMPLES / "auths.json").read_text())
    if auth_units is not None:
        auths = [dataclasses.replace(a, units=auth_units) for a in auths]
    import_orders(app, orders, app.now())
    import_auths(app, auths, app.now())


def order(accession: str) -> OrderRow:
    return OrderRow.get(OrderRow.accession_number == accession)


def units_used(auth_number: str = "PA-778899") -> int:
    return AuthRow.get(AuthRow.auth_number == auth_number).units_used


def actions(subject: str) -> list[tuple[str, str]]:
    return [(e.action, e.user) for e in AuditEvent.select().where(AuditEvent.subject == subject).order_by(AuditEvent.id)]


def creation(accession: str | None, status: str = "IN PROGRESS") -> Dataset:
    """An N-CREATE Attribute List as a modality sends it (PS3.4 Table F.7.2-1, abridged)."""
    step = Dataset()
    if accession is not None:
        step.AccessionNumber = accession
    step.StudyInstanceUID = generate_uid()
    step.RequestedProcedureID = "RP1"
    step.ScheduledProcedureStepID = "SPS1"
    ds = Dataset()
    ds.ScheduledStepAttributesSequence = [step]
    ds.PatientName = "DOE^JANE"
    ds.PatientID = "MRN5001"
    ds.PerformedStationAETitle = "MR1"
    ds.PerformedProcedureStepID = "PPS1"
    ds.PerformedProcedureStepStartDate = "20261201"
    ds.PerformedProcedureStepStartTime = "093000"
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "MR"
    ds.PerformedSeriesSequence = []
    return ds


def completion(status: str = "COMPLETED", series_uid: str | None = None, reason: str | None = None) -> Dataset:
    """An N-SET Modification List ending the step, with one performed series."""
    image = Dataset()
    image.ReferencedSOPClassUID = MRImageStorage
    image.ReferencedSOPInstanceUID = generate_uid()
    series = Dataset()
    series.SeriesInstanceUID = series_uid or generate_uid()
    series.ReferencedImageSequence = [image]
    series.ProtocolName = "BRAIN"
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20261201"
    ds.PerformedProcedureStepEndTime = "100000"
    ds.PerformedSeriesSequence = [series]
    if reason:
        code = Dataset()
        code.CodeValue = "110514"
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = reason
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [code]
    return ds


class Modality:
    """A pynetdicom MPPS SCU associated with the server."""

    def __init__(self, port: int, ae_title: str = "MR1"):
        ae = AE(ae_title=ae_title)
        ae.add_requested_context(ModalityPerformedProcedureStep)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="GATEKEEPER")
        assert self.assoc.is_established

    def create(self, uid: str, ds: Dataset) -> tuple[Dataset, Dataset | None]:
        return self.assoc.send_n_create(ds, ModalityPerformedProcedureStep, uid)

    def set(self, uid: str, ds: Dataset) -> tuple[Dataset, Dataset | None]:
        return self.assoc.send_n_set(ds, ModalityPerformedProcedureStep, uid)

    def release(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def modality(server):
    load_examples(server.app)
    scu = Modality(server.port)
    yield scu
    scu.release()


# ---------------------------------------------------------------- the SCP, end to end


def test_full_life_cycle_completes_the_order_and_uses_one_unit(modality):
    uid = generate_uid()
    status, created = modality.create(uid, creation("ACC1001"))
    assert status.Status == 0x0000
    assert created.PerformedProcedureStepStatus == "IN PROGRESS"
    assert created.ScheduledStepAttributesSequence[0].AccessionNumber == "ACC1001"
    assert order("ACC1001").status == "in-progress"
    assert units_used() == 0

    series_uid = generate_uid()
    status, _ = modality.set(uid, completion(series_uid=series_uid))
    assert status.Status == 0x0000
    row = order("ACC1001")
    assert row.status == "completed"
    assert row.auth_unit_used == "PA-778899"
    assert units_used() == 1
    step = MppsRow.get(MppsRow.sop_instance_uid == uid)
    assert (step.status, step.accession_number, step.calling_ae) == ("COMPLETED", "ACC1001", "MR1")
    assert [s["series_instance_uid"] for s in json.loads(step.performed_series)] == [series_uid]
    assert actions("ACC1001")[-2:] == [("mpps.start", "MR1"), ("mpps.complete", "MR1")]
    assert actions("PA-778899") == [("auth.unit_used", "MR1")]


def test_completed_again_is_refused_and_uses_no_second_unit(modality):
    uid = generate_uid()
    modality.create(uid, creation("ACC1001"))
    assert modality.set(uid, completion())[0].Status == 0x0000

    again, _ = modality.set(uid, completion())
    assert again.Status == 0x0110
    assert again.ErrorID == 0xA710
    assert again.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    late, _ = modality.set(uid, completion("DISCONTINUED", reason="Equipment failure"))
    assert late.Status == 0x0110
    assert units_used() == 1
    assert order("ACC1001").status == "completed"
    assert MppsRow.get(MppsRow.sop_instance_uid == uid).discontinuation_reason == ""


@pytest.mark.parametrize("reimport", [False, True])
def test_second_step_for_the_same_order_uses_no_second_unit(server, reimport):
    load_examples(server.app, auth_units=3)  # units left, so only the once-per-order guard can stop it
    scu = Modality(server.port)
    try:
        first, second = generate_uid(), generate_uid()
        scu.create(first, creation("ACC1001"))
        scu.create(second, creation("ACC1001"))
        assert scu.set(first, completion())[0].Status == 0x0000
        assert units_used() == 1
        if reimport:
            # The RIS sends its feed again: the completed order stays completed...
            load_examples(server.app, auth_units=3)
            assert order("ACC1001").status == "completed"
            # ...and even if someone puts it back to scheduled by hand, served on the auth,
            # only the once-per-order guard stands between it and a second unit.
            OrderRow.update(status="scheduled").where(OrderRow.accession_number == "ACC1001").execute()
        assert scu.set(second, completion())[0].Status == 0x0000
    finally:
        scu.release()
    assert units_used() == 1
    assert order("ACC1001").auth_unit_used == "PA-778899"
    assert order("ACC1001").status == "completed"


def test_discontinued_frees_the_order_with_its_reason(modality):
    uid = generate_uid()
    modality.create(uid, creation("ACC1001"))
    status, _ = modality.set(uid, completion("DISCONTINUED", reason="Patient refused"))
    assert status.Status == 0x0000
    row = order("ACC1001")
    assert row.status == "scheduled"
    assert row.auth_unit_used is None
    assert units_used() == 0
    assert MppsRow.get(MppsRow.sop_instance_uid == uid).discontinuation_reason == "Patient refused"
    event = AuditEvent.select().where(AuditEvent.action == "mpps.discontinue").get()
    assert (event.subject, event.user, event.reason) == ("ACC1001", "MR1", "Patient refused")

    # Freed, the order can be performed again, and then uses its unit.
    again = generate_uid()
    assert modality.create(again, creation("ACC1001"))[0].Status == 0x0000
    assert order("ACC1001").status == "in-progress"
    assert modality.set(again, completion())[0].Status == 0x0000
    assert order("ACC1001").status == "completed"
    assert units_used() == 1


def test_order_needing_no_auth_completes_without_a_unit(server, modality):
    uid = generate_uid()
    dx1 = Modality(server.port, "DX1")  # ACC1003 is scheduled on DX1
    dx1.create(uid, creation("ACC1003"))
    assert dx1.set(uid, completion())[0].Status == 0x0000
    dx1.release()
    row = order("ACC1003")
    assert (row.status, row.auth_unit_used) == ("completed", None)
    assert units_used() == 0


def test_interim_update_keeps_the_step_open_and_records_series(modality):
    uid = generate_uid()
    modality.create(uid, creation("ACC1001"))
    interim = completion()
    del interim.PerformedProcedureStepStatus
    series_uid = interim.PerformedSeriesSequence[0].SeriesInstanceUID
    assert modality.set(uid, interim)[0].Status == 0x0000
    step = MppsRow.get(MppsRow.sop_instance_uid == uid)
    assert step.status == "IN PROGRESS"
    assert json.loads(step.performed_series)[0]["series_instance_uid"] == series_uid
    assert order("ACC1001").status == "in-progress"
    assert units_used() == 0


def test_set_on_an_unknown_instance_is_no_such_object(modality):
    status, _ = modality.set(generate_uid(), completion())
    assert status.Status == 0x0112
    assert order("ACC1001").status == "scheduled"


def test_duplicate_create_is_refused_and_leaves_the_step_alone(server, modality):
    uid = generate_uid()
    assert modality.create(uid, creation("ACC1001"))[0].Status == 0x0000
    dx1 = Modality(server.port, "DX1")  # ACC1003's own station
    status, _ = dx1.create(uid, creation("ACC1003"))
    dx1.release()
    assert status.Status == 0x0111
    assert "exists already" in status.ErrorComment
    assert MppsRow.get(MppsRow.sop_instance_uid == uid).accession_number == "ACC1001"
    assert order("ACC1003").status == "scheduled"


def test_create_without_a_uid_gets_one_assigned(modality):
    status, created = modality.create(None, creation("ACC1001"))
    assert status.Status == 0x0000
    (step,) = MppsRow.select()
    assert step.sop_instance_uid and step.accession_number == "ACC1001"
    assert order("ACC1001").status == "in-progress"


@pytest.mark.parametrize("status", ["COMPLETED", "DISCONTINUED"])
def test_create_not_in_progress_is_invalid_attribute_value(modality, status):
    uid = generate_uid()
    answer, _ = modality.create(uid, creation("ACC1001", status=status))
    assert answer.Status == 0x0106
    assert MppsRow.get_or_none(MppsRow.sop_instance_uid == uid) is None
    assert order("ACC1001").status == "scheduled"


def test_create_without_status_is_missing_attribute(modality):
    ds = creation("ACC1001")
    del ds.PerformedProcedureStepStatus
    assert modality.create(generate_uid(), ds)[0].Status == 0x0120


@pytest.mark.parametrize("accession", ["ACC9999", None])
def test_unscheduled_step_is_recorded_and_warned(modality, caplog, accession):
    uid = generate_uid()
    with caplog.at_level(logging.WARNING, logger="worklist.steps"):
        assert modality.create(uid, creation(accession))[0].Status == 0x0000
        assert modality.set(uid, completion())[0].Status == 0x0000
    step = MppsRow.get(MppsRow.sop_instance_uid == uid)
    assert (step.status, step.accession_number) == ("COMPLETED", accession)
    assert any("unscheduled" in r.getMessage() and uid in r.getMessage() for r in caplog.records)
    assert [o.status for o in OrderRow.select()] == ["scheduled"] * 3
    assert units_used() == 0


def test_an_unexpected_error_is_processing_failure_and_keeps_the_association(app, modality, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(app.steps, "create", broken)
    assert modality.create(generate_uid(), creation("ACC1001"))[0].Status == 0x0110
    assert modality.assoc.is_established
    monkeypatch.undo()
    assert modality.create(generate_uid(), creation("ACC1001"))[0].Status == 0x0000


def test_one_info_line_per_operation_without_patient_data(modality, caplog):
    uid = generate_uid()
    with caplog.at_level(logging.INFO, logger="gateway.dicom.mpps"):
        modality.create(uid, creation("ACC1001"))
        modality.set(uid, completion())
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.dicom.mpps"]
    assert len(lines) == 2
    assert "N-CREATE from MR1" in lines[0] and uid in lines[0] and "ACC1001" in lines[0] and "0x0000" in lines[0]
    assert "N-SET from MR1" in lines[1] and "ACC1001" in lines[1]
    assert not any("MRN5001" in line or "DOE" in line for line in lines)


# ---------------------------------------------------------------- the service without the network


def test_override_completes_without_a_unit(app):
    load_examples(app)
    app.gate.override("ACC1002", user="dr.who", reason="emergency")
    report = mpps.StepReport(generate_uid(), "IN PROGRESS", "ACC1002")
    app.steps.create(report, "MR1")
    done = app.steps.set(dataclasses.replace(report, status="COMPLETED", accession_number=None), "MR1")
    assert (done.order_status, done.auth_unit_used) == ("completed", None)
    assert units_used("PA-112233") == 0


def test_discontinuing_one_of_two_running_steps_keeps_the_order_in_progress(app):
    load_examples(app)
    first = mpps.StepReport(generate_uid(), "IN PROGRESS", "ACC1001")
    second = mpps.StepReport(generate_uid(), "IN PROGRESS", "ACC1001")
    for report in (first, second):
        app.steps.create(report, "MR1")
    stop = dataclasses.replace(first, status="DISCONTINUED", discontinuation_reason="Equipment failure")
    stopped = app.steps.set(stop, "MR1")
    assert stopped.order_status == "in-progress"
    stop = dataclasses.replace(second, status="DISCONTINUED")
    last = app.steps.set(stop, "MR1")
    assert last.order_status == "scheduled"


def test_completion_uses_the_auth_that_serves_the_order_at_that_time(app, clock):
    load_examples(app)
    clock.now = dt.datetime(2026, 12, 1, 9, 40)
    report = mpps.StepReport(generate_uid(), "IN PROGRESS", "ACC1001")
    app.steps.create(report, "MR1")
    done = app.steps.set(dataclasses.replace(report, status="COMPLETED"), "MR1")
    assert (done.order_status, done.auth_unit_used) == ("completed", "PA-778899")
    assert units_used() == 1
