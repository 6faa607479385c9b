"""Modality Worklist C-FIND SCP (PS3.4 K.4, Modality Worklist Information Model - FIND).

The handler decodes the identifier, hands it to :mod:`worklist.mwl_service`, and
encodes statuses: a pending response per served, matching order; 0xA900 for an
identifier the model cannot answer; 0xC000 for one that cannot be decoded or any
failure while answering; 0xFE00 when the console cancels. One INFO line per query.
"""

from __future__ import annotations

import logging
import time

from pydicom import Dataset
from pynetdicom import evt
from pynetdicom.sop_class import ModalityWorklistInformationFind

from gateway.status import CANCEL, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, PENDING, UNABLE_TO_PROCESS
from worklist.mwl import InvalidQuery, plan_query
from worklist.mwl_service import responses

log = logging.getLogger("gateway.mwl")


def add_to(ae, app) -> list:
    ae.add_supported_context(ModalityWorklistInformationFind)
    return [(evt.EVT_C_FIND, on_find, [app])]


def on_start(app) -> None:
    pass


def _names_no_station(query: Dataset) -> bool:
    steps = query.get("ScheduledProcedureStepSequence")
    if not steps:
        return True
    station = str(steps[0].get("ScheduledStationAETitle", "") or "").strip()
    return station in ("", "*")


def on_find(event, app):
    """EVT_C_FIND handler: a generator of (status, identifier) pairs."""
    started = time.monotonic()
    calling = event.assoc.requestor.ae_title
    count, outcome = 0, "success"
    try:
        query = event.identifier
        plan = plan_query(query)
        only_station = None
        if app.settings.restrict_unnamed_station_to_caller and _names_no_station(query):
            only_station = calling
        found = responses(query, plan, policy=app.settings.policy, today=app.today(),
                          auth_attribute=app.settings.auth_attribute, only_station=only_station)
        for response in found:
            if event.is_cancelled:
                outcome = "cancelled"
                yield CANCEL, None
                return
            count += 1
            yield PENDING, response
    except InvalidQuery as exc:
        outcome = "refused (0xA900)"
        log.warning("worklist query from %s refused: %s", calling, exc)
        yield IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
    except Exception:
        outcome = "failed (0xC000)"
        log.exception("worklist query from %s failed", calling)
        yield UNABLE_TO_PROCESS, None
    finally:
        log.info("worklist query from %s: %s, %d match(es), %.0f ms",
                 calling, outcome, count, (time.monotonic() - started) * 1000)
