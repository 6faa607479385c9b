"""Modality Worklist C-FIND SCP (PS3.4 K.4, Modality Worklist Information Model - FIND).

The handler hands the identifier to :class:`worklist.query.WorklistQuery` and encodes
statuses: a pending response per served, matching order; 0xA900 for an identifier the
model cannot answer; 0xC000 for one that cannot be decoded or any failure while
answering; 0xFE00 when the console cancels. One INFO line per query.
"""

from __future__ import annotations

import logging
import time

from pynetdicom import evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from gateway import logs
from gateway.dicom import status as st
from gateway.dicom import syntaxes, tuning
from worklist.query import WorklistQuery

log = logging.getLogger("gateway.dicom.worklist")


def add_to(ae, app, metrics=None) -> list:
    """Support the MWL FIND SOP class; return the C-FIND handler bound to the worklist query
    (and the server's :class:`gateway.metrics.Metrics`, when it has one)."""
    ae.add_supported_context(ModalityWorklistInformationFind, syntaxes.NON_STORAGE)
    return [(evt.EVT_C_FIND, on_find, [app.query, metrics])]


def on_find(event, query: WorklistQuery, metrics=None):
    """EVT_C_FIND handler: a generator of (status, identifier) pairs."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    count, outcome, code = 0, "success", st.SUCCESS
    try:
        for response in query.find(event.identifier, calling):
            if event.is_cancelled:
                outcome, code = "cancelled", st.CANCEL
                yield st.CANCEL, None
                return
            count += 1
            yield st.PENDING, tuning.encoded_once(response)  # the same response object: its bytes are reused
    except Exception as exc:  # the one outer guard
        reply = st.failure(st.C_FIND, exc, log, f"worklist query from {calling}")
        outcome, code = f"refused (0x{reply.Status:04X})", reply.Status
        if reply.Status == st.DOES_NOT_MATCH_SOP_CLASS:
            log.warning("worklist query from %s refused: %s", calling, exc)
        yield reply, None
    finally:
        took = time.monotonic() - started
        if metrics is not None:
            metrics.operation("C-FIND", code, took)
        log.info("worklist query from %s: %s, %d %s, %.0f ms", calling, outcome, count,
                 "match" if count == 1 else "matches", took * 1000,
                 extra=logs.operation(event.assoc, "C-FIND", code, took))
