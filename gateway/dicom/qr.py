"""Query/Retrieve SCP (PS3.4 Annex C): Patient Root and Study Root FIND, MOVE and GET.

Thin handlers over :class:`store.qr.QueryRetrieve`: the identifier goes to the use case,
the answers come back as datasets, the statuses are encoded here. What the caller may see
is decided once per request in :func:`visible_to` (archived studies; held ones too for the
AE titles of ``qr.held_viewers`` when ``qr.include_held`` is on): the one place an access
decision of the ``qr`` service is taken.

- C-FIND: a pending response (0xFF00) per match, 0x0000 at the end; 0xFE00 when the SCU
  cancels; 0xA900 for an identifier the model cannot answer (a wrong level, a key below
  the level, a missing unique key of a level above, a bad range); 0xC000 for one that
  cannot be decoded or any failure while answering.
- C-MOVE: the Move Destination is looked up in the settings
  (:func:`gateway.destinations.move_destination`); an unknown one, or one that refuses the
  association, gets 0xA801. One association to the destination, one presentation context
  per SOP class and stored transfer syntax (an uncompressed instance may go in any
  uncompressed syntax the destination accepts; a compressed one only in its own). A
  pending response after each C-STORE sub-operation with the Number of Remaining,
  Completed, Failed and Warning Sub-operations; the final status is 0x0000 when all
  completed, 0xB000 when some failed or had warnings (Failed SOP Instance UID List in the
  identifier), 0xA702 when all failed, 0xFE00 after a C-CANCEL.
- C-GET: the same, the C-STORE sub-operations on the requester's own association, for
  the storage SOP classes it proposed with SCP/SCU role selection (PS3.7 D.3.3.4);
  an instance of a class it did not negotiate fails its sub-operation.
- An identifier a retrieval cannot use (no unique key of its level) gets 0xA900. pynetdicom
  asks for the destination before the identifier may be refused, so a refused C-MOVE is
  answered after associating with the destination (it is released at once, nothing sent).

One INFO line per operation: calling AE, model, level, matches or instances, UIDs (never
patient names), time taken.
"""

from __future__ import annotations

import logging
import time

from pydicom import uid as ts
from pydicom.dataset import Dataset
from pynetdicom import AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelMove, Verification,
)

from gateway import logs
from gateway.destinations import move_destination
from gateway.dicom import status as st
from gateway.dicom import syntaxes, tuning
from store.qr import Instance
from store.qr_match import PATIENT_ROOT, STUDY_ROOT

log = logging.getLogger("gateway.dicom.qr")

FIND_MODELS = {PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
               StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT}
MOVE_MODELS = {PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
               StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT}
GET_MODELS = {PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
              StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT}
#: Presentation contexts one association to a Move Destination may propose (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128
_UNCOMPRESSED = (ts.ExplicitVRLittleEndian, ts.ImplicitVRLittleEndian)


def add_to(ae, app, metrics=None) -> list:
    """Support the Q/R SOP classes (and SCP/SCU role selection on the storage classes, for
    C-GET); return the C-FIND, C-MOVE and C-GET handlers."""
    for sop_class in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
        ae.add_supported_context(sop_class, syntaxes.NON_STORAGE)
    # After storage.add_to (server.SERVICES order): pynetdicom resets the roles of a context
    # added again, so a later add without roles would undo these.
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, syntaxes.STORAGE, scu_role=True, scp_role=True)
    return [
        (evt.EVT_C_FIND, on_find, [app, metrics]),
        (evt.EVT_C_MOVE, on_move, [app, metrics]),
        (evt.EVT_C_GET, on_get, [app, metrics]),
    ]


def visible_to(event, app) -> frozenset[str]:
    """The study states the caller may query and retrieve: the ``qr`` service's one decision."""
    return app.qr.visible_states(event.assoc.requestor.ae_title)


def on_find(event, app, metrics=None):
    """EVT_C_FIND for the Q/R models: a generator of (status, identifier) pairs."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    model = FIND_MODELS[str(event.request.AffectedSOPClassUID)]
    count, outcome, code, level = 0, "success", st.SUCCESS, "-"
    try:
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "-") or "-")
        for answer in app.qr.find(identifier, model, visible_to(event, app)):
            if event.is_cancelled:
                outcome, code = "cancelled", st.CANCEL
                yield st.CANCEL, None
                return
            count += 1
            yield st.PENDING, answer
    except Exception as exc:  # the one outer guard
        reply = st.failure(st.C_FIND, exc, log, f"Q/R query from {calling}")
        outcome, code = f"refused (0x{reply.Status:04X})", reply.Status
        _warn_refused("query", calling, reply.Status, exc)
        yield reply, None
    finally:
        took = time.monotonic() - started
        if metrics is not None:
            metrics.operation("C-FIND", code, took)
        log.info("Q/R query from %s (%s, %s level): %s, %d %s, %.0f ms", calling, _name(model), level, outcome, count,
                 "match" if count == 1 else "matches", took * 1000,
                 extra=logs.operation(event.assoc, "C-FIND", code, took))


on_find.sop_classes = tuple(FIND_MODELS)  # type: ignore[attr-defined]  # routed by server._route_finds


def on_move(event, app, metrics=None):
    """EVT_C_MOVE: yield the destination, the number of sub-operations, then one dataset each."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    model = MOVE_MODELS[str(event.request.AffectedSOPClassUID)]
    destination = (event.move_destination or "").strip()
    peer = move_destination(app.settings, destination)
    if peer is None:
        took = time.monotonic() - started
        if metrics is not None:
            metrics.operation("C-MOVE", st.MOVE_DESTINATION_UNKNOWN, took)
        log.warning("Q/R move from %s to %r refused (0x%04X): no such destination; add it under [peers] in %s with "
                    "its host and port", calling, destination, st.MOVE_DESTINATION_UNKNOWN, app.settings.source,
                    extra=logs.operation(event.assoc, "C-MOVE", st.MOVE_DESTINATION_UNKNOWN, took))
        yield None, None
        return
    try:
        instances = app.qr.retrieve(event.identifier, model, visible_to(event, app))
    except Exception as exc:  # the one outer guard
        reply = st.failure(st.C_MOVE, exc, log, f"Q/R move from {calling}")
        _warn_refused("move", calling, reply.Status, exc)
        _log_retrieve(event, "C-MOVE", calling, model, f"to {destination}", f"refused (0x{reply.Status:04X})",
                      0, started, metrics, reply.Status)
        yield peer.host, peer.port, {"contexts": [build_context(Verification)]}
        yield 1
        yield reply, None
        return
    yield peer.host, peer.port, {"contexts": _contexts(instances), "evt_handlers": [(evt.EVT_CONN_OPEN, tuning.no_delay)]}
    yield len(instances)
    yield from _send(event, app, instances, "C-MOVE", calling, model, f"to {destination}", started, metrics)


def on_get(event, app, metrics=None):
    """EVT_C_GET: yield the number of sub-operations, then one dataset each (sent on this association)."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    model = GET_MODELS[str(event.request.AffectedSOPClassUID)]
    try:
        instances = app.qr.retrieve(event.identifier, model, visible_to(event, app))
    except Exception as exc:  # the one outer guard
        reply = st.failure(st.C_GET, exc, log, f"Q/R get from {calling}")
        _warn_refused("get", calling, reply.Status, exc)
        _log_retrieve(event, "C-GET", calling, model, "", f"refused (0x{reply.Status:04X})", 0, started,
                      metrics, reply.Status)
        yield 1
        yield reply, None
        return
    yield len(instances)
    yield from _send(event, app, instances, "C-GET", calling, model, "", started, metrics)


def _send(event, app, instances: list[Instance], operation: str, calling: str, model: str, where: str,
          started: float, metrics):
    """(0xFF00, dataset) per instance; a file that cannot be read fails its sub-operation."""
    sent, unreadable = 0, 0
    outcome, code = "done", st.SUCCESS
    try:
        for instance in instances:
            if event.is_cancelled:
                outcome, code = "cancelled", st.CANCEL
                yield st.CANCEL, None
                return
            try:
                dataset = app.qr.load(instance)
            except Exception as exc:  # a file gone or damaged: that sub-operation fails, the rest go on
                log.warning("%s from %s: instance %s could not be read (%s); its sub-operation fails", operation,
                            calling, instance.sop_instance_uid, exc)
                unreadable += 1
                dataset = _unsendable(instance)
            sent += 1
            yield st.PENDING, dataset
    finally:
        studies = sorted({i.study_instance_uid for i in instances})
        detail = f"{outcome}, {sent} of {len(instances)} sub-operations started"
        if unreadable:
            detail += f", {unreadable} unreadable"
        _log_retrieve(event, operation, calling, model, where, detail + f", studies {', '.join(studies) or '-'}",
                      len(instances), started, metrics, code)


def _warn_refused(what: str, calling: str, status: int, exc: Exception) -> None:
    """Why a request was refused, at WARNING (the message may quote the keys sent; INFO never does)."""
    if status == st.DOES_NOT_MATCH_SOP_CLASS:
        log.warning("Q/R %s from %s refused (0x%04X): %s", what, calling, status, exc)


def _unsendable(instance: Instance) -> Dataset:
    """A dataset naming the instance but without the transfer syntax a C-STORE needs: pynetdicom
    fails its sub-operation and lists the instance in Failed SOP Instance UID List."""
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    return ds


def _contexts(instances: list[Instance]) -> list:
    """One presentation context per SOP class and kind of stored syntax (at most 128)."""
    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for instance in instances:
        stored = instance.transfer_syntax_uid or ts.ImplicitVRLittleEndian
        syntaxes_ = _UNCOMPRESSED if stored in (*_UNCOMPRESSED, ts.ExplicitVRBigEndian) else (stored,)
        wanted.setdefault((instance.sop_class_uid, syntaxes_), None)
    contexts = [build_context(sop_class, list(syntaxes_)) for sop_class, syntaxes_ in wanted]
    if len(contexts) > MAX_CONTEXTS:
        log.warning("C-MOVE: %d SOP class and transfer syntax pairs, only %d can be proposed; instances of the others "
                    "fail their sub-operations", len(contexts), MAX_CONTEXTS)
    return contexts[:MAX_CONTEXTS] or [build_context(Verification)]


def _log_retrieve(event, operation: str, calling: str, model: str, where: str, outcome: str, count: int,
                  started: float, metrics, code: int) -> None:
    took = time.monotonic() - started
    if metrics is not None:
        metrics.operation(operation, code, took)
    log.info("Q/R %s from %s (%s)%s: %d %s, %s, %.0f ms", operation, calling, _name(model),
             f" {where}" if where else "", count, "instance" if count == 1 else "instances", outcome, took * 1000,
             extra=logs.operation(event.assoc, operation, code, took))


def _name(model: str) -> str:
    return "Patient Root" if model == PATIENT_ROOT else "Study Root"
