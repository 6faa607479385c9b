"""Modality Performed Procedure Step SCP (PS3.4 F.7): N-CREATE and N-SET.

Thin handlers: decode the request into a :class:`~worklist.mpps.StepReport`, make one
call into :class:`worklist.steps.Steps`, answer with a status. A refused request gets
the standard failure status (below, mapped in :mod:`gateway.dicom.status`); anything
unexpected is logged and answered with 0x0110 Processing failure, never a dropped
association.

| refusal | status |
|---|---|
| N-CREATE without Performed Procedure Step Status | 0x0120 Missing attribute |
| N-CREATE not IN PROGRESS, unknown status value | 0x0106 Invalid attribute value (F.7.2.1.3) |
| N-CREATE with an existing SOP Instance UID | 0x0111 Duplicate SOP Instance |
| N-SET on an unknown SOP Instance | 0x0112 No such SOP Instance |
| N-SET on a COMPLETED or DISCONTINUED step | 0x0110 with Error ID A710 (F.7.2.2.3, Table F.7.2-2) |
| N-CREATE or N-SET for an order scheduled on another station, from an AE not in ``mpps.any_station_aets`` | 0x0124 Refused: not authorized (PS3.7 Annex C) |
"""

from __future__ import annotations

import logging
import time

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from gateway import logs
from gateway.dicom import status as st
from gateway.dicom import syntaxes
from gateway.dicom.access import Decision
from infra.errors import NotAuthorized
from worklist.mpps import PerformedSeries, StepReport
from worklist.steps import Steps

log = logging.getLogger("gateway.dicom.mpps")


def add_to(ae, app, metrics=None) -> list:
    """Add the MPPS SOP class (SCP role); return the N-CREATE and N-SET handlers (bound to the
    steps and the server's :class:`gateway.metrics.Metrics`, when it has one)."""
    ae.add_supported_context(ModalityPerformedProcedureStep, syntaxes.NON_STORAGE)
    return [(evt.EVT_N_CREATE, on_n_create, [app.steps, metrics]), (evt.EVT_N_SET, on_n_set, [app.steps, metrics])]


def on_n_create(event, steps: Steps, metrics=None):
    """EVT_N_CREATE: a modality started a step (PS3.4 F.7.2.1)."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    uid = event.request.AffectedSOPInstanceUID
    accession = None
    try:
        attrs = event.attribute_list
        report = step_report(str(uid) if uid else generate_uid(), attrs, scheduled=True)
        uid, accession = report.sop_instance_uid, report.accession_number
        steps.create(report, calling)
        status, reply = st.SUCCESS, _created(attrs, uid, assigned=event.request.AffectedSOPInstanceUID is None)
    except Exception as exc:  # the one outer guard
        _refused(event, exc, "N-CREATE")
        status, reply = st.failure(st.MPPS, exc, log, f"MPPS N-CREATE of {uid}"), None
    _log(event, "N-CREATE", uid, accession, status, started, metrics)
    return status, reply


def on_n_set(event, steps: Steps, metrics=None):
    """EVT_N_SET: a modality updated, completed or discontinued a step (PS3.4 F.7.2.2)."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    uid = str(event.request.RequestedSOPInstanceUID or "")
    accession = None
    try:
        changes = event.modification_list
        report = step_report(uid, changes, scheduled=False)
        outcome = steps.set(report, calling)
        accession = outcome.accession_number
        status, reply = st.SUCCESS, changes
    except Exception as exc:  # the one outer guard
        _refused(event, exc, "N-SET")
        status, reply = st.failure(st.MPPS, exc, log, f"MPPS N-SET of {uid}"), None
    _log(event, "N-SET", uid, accession, status, started, metrics)
    return status, reply


def _refused(event, exc: Exception, operation: str) -> None:
    """A step of another station's order (``mpps.any_station_aets``): logged and audited as a refusal."""
    refusals = getattr(event.assoc.ae, "gk_refusals", None)  # set by the server (gateway.dicom.permissions)
    if isinstance(exc, NotAuthorized) and refusals is not None:
        refusals.record(event.assoc, "operation.refused", Decision(False, exc.rule, str(exc)), "mpps", operation)


def step_report(uid: str, ds: Dataset, *, scheduled: bool) -> StepReport:
    """Decode an N-CREATE Attribute List or N-SET Modification List (PS3.4 Table F.7.2-1).

    The accession number comes from Scheduled Step Attributes Sequence (0040,0270), which
    only N-CREATE may carry; the first item naming one wins.
    """
    accession = None
    if scheduled:
        accessions = [str(i.get("AccessionNumber", "") or "").strip() for i in ds.get("ScheduledStepAttributesSequence", [])]
        accessions = [a for a in accessions if a]
        accession = accessions[0] if accessions else None
        if len(set(accessions)) > 1:
            log.warning("MPPS %s groups accessions %s; only %s is tracked", uid, ", ".join(accessions), accession)
    status = ds.get("PerformedProcedureStepStatus")
    series = None
    if "PerformedSeriesSequence" in ds:
        series = tuple(_series(item) for item in ds.PerformedSeriesSequence)
    reason = ""
    for code in ds.get("PerformedProcedureStepDiscontinuationReasonCodeSequence", [])[:1]:
        reason = str(code.get("CodeMeaning", "") or code.get("CodeValue", "") or "")
    return StepReport(
        sop_instance_uid=uid,
        status=str(status) if status is not None else None,
        accession_number=accession,
        performed_series=series,
        discontinuation_reason=reason,
    )


def _series(item: Dataset) -> PerformedSeries:
    refs = [*item.get("ReferencedImageSequence", []),
            *item.get("ReferencedNonImageCompositeSOPInstanceSequence", [])]
    return PerformedSeries(
        series_instance_uid=str(item.get("SeriesInstanceUID", "") or ""),
        instance_uids=tuple(str(r.ReferencedSOPInstanceUID) for r in refs if r.get("ReferencedSOPInstanceUID")),
    )


def _created(attrs: Dataset, uid: str, assigned: bool) -> Dataset:
    """The N-CREATE Attribute List: the attributes as created (PS3.7 10.1.5.1.6)."""
    reply = Dataset()
    reply.update(attrs)
    if assigned:
        # The SCU sent no UID: pynetdicom moves this into the response's Affected SOP Instance UID.
        reply.AffectedSOPInstanceUID = uid
    return reply


def _log(event, operation: str, uid, accession: str | None, status, started: float, metrics=None) -> None:
    """The one summary line of an N-CREATE or N-SET, and its count in the metrics."""
    code = status.Status if isinstance(status, Dataset) else status
    took = time.monotonic() - started
    if metrics is not None:
        metrics.operation(operation, code, took)
    log.info("MPPS %s from %s: instance %s, accession %s, status 0x%04X",
             operation, event.assoc.requestor.ae_title, uid or "-", accession or "-", code,
             extra=logs.operation(event.assoc, operation, code, took))
