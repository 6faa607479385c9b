"""What a modality console sees: the Modality Worklist C-FIND (rule 2 of docs/rules.md).

Decided at query time (rule 1): candidates come from an indexed lookup built from the
query's exact keys (:func:`worklist.mwl.plan_query`), each is gated with today's auths
and overrides, and only served orders are turned into items and matched in full.
Orders are read in chunks, so the first response goes out early and a C-CANCEL (the
caller stops iterating) stops the work.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import Callable, Hashable, Iterator

import peewee as pw
from pydicom import Dataset

from infra.clock import Clock
from worklist import records
from worklist.models import OrderRow
from worklist.mwl import QueryPlan, build_item, build_response, matches, matching_keys, plan_query
from worklist.orders import Order
from worklist.policy import PayerPolicy

#: Orders gated per batch.
CHUNK = 200
#: Items and responses kept for reuse: consoles poll with the same identifier again and again.
CACHE_SIZE = 4096


class WorklistQuery:
    """Answers Modality Worklist identifiers with the served orders that match them."""

    def __init__(self, policy: PayerPolicy, clock: Clock, *, auth_attribute: str = "RequestedProcedureComments",
                 restrict_unnamed_station_to_caller: bool = False) -> None:
        self.policy = policy
        self.clock = clock
        self.auth_attribute = auth_attribute
        self.restrict_unnamed_station_to_caller = restrict_unnamed_station_to_caller
        self._items = _Cache(CACHE_SIZE)
        self._responses = _Cache(CACHE_SIZE)

    def find(self, query: Dataset, calling_ae: str = "") -> Iterator[Dataset]:
        """One response identifier per served order that matches ``query``.

        Raises :class:`~worklist.mwl.InvalidQuery` (before yielding anything) for an
        identifier the model cannot answer. With ``restrict_unnamed_station_to_caller``
        a query that names no station sees only ``calling_ae``'s items.
        """
        plan = plan_query(query)
        only_station = calling_ae if self.restrict_unnamed_station_to_caller and _names_no_station(query) else None
        return self._responses_for(query, plan, only_station)

    def _responses_for(self, query: Dataset, plan: QueryPlan, only_station: str | None) -> Iterator[Dataset]:
        today = self.clock().date()
        keys = matching_keys(query)
        asked = _signature(query)
        chunk: list[Order] = []
        for order in records.served_candidates(plan_conditions(plan, only_station)):
            chunk.append(order)
            if len(chunk) == CHUNK:
                yield from self._served_matches(query, asked, keys, chunk, today)
                chunk = []
        if chunk:
            yield from self._served_matches(query, asked, keys, chunk, today)

    def _served_matches(self, query, asked, keys, orders, today) -> Iterator[Dataset]:
        for order, decision in zip(orders, records.decide_all(orders, self.policy, today)):
            if not decision.served:
                continue
            item = self._item(order, decision.auth_number)
            if matches(keys, item):
                yield self._responses.get((asked, order, decision.auth_number),
                                          lambda: build_response(query, item))

    def _item(self, order: Order, auth_number: str | None) -> Dataset:
        """The worklist item of a served order, built once per version of the order.

        Orders are frozen values, so a changed order (or auth) is a new key; items are
        never modified after they are built (responses share their elements).
        """
        return self._items.get((order, auth_number),
                               lambda: build_item(order, auth_number, auth_attribute=self.auth_attribute))


def plan_conditions(plan: QueryPlan, only_station: str | None = None) -> list[pw.Expression]:
    """Peewee conditions for the plan (each one answerable by an index on orders)."""
    conditions = []
    station = plan.station_ae or only_station
    if station:
        conditions.append(OrderRow.station_ae == station)
    if plan.modality:
        conditions.append(OrderRow.modality == plan.modality)
    if plan.date_from:
        conditions.append(OrderRow.scheduled_start >= dt.datetime.combine(plan.date_from, dt.time.min))
    if plan.date_to:
        conditions.append(OrderRow.scheduled_start < dt.datetime.combine(plan.date_to + dt.timedelta(days=1), dt.time.min))
    if plan.accession_number:
        conditions.append(OrderRow.accession_number == plan.accession_number)
    if plan.patient_id:
        conditions.append(OrderRow.patient_id == plan.patient_id)
    if plan.study_instance_uids:
        conditions.append(OrderRow.study_instance_uid.in_(plan.study_instance_uids))
    if plan.requested_procedure_id:
        rp = plan.requested_procedure_id
        conditions.append((OrderRow.requested_procedure_id == rp)
                          | ((OrderRow.requested_procedure_id == "") & (OrderRow.accession_number == rp)))
    return conditions


def _names_no_station(query: Dataset) -> bool:
    steps = query.get("ScheduledProcedureStepSequence")
    if not steps:
        return True
    station = str(steps[0].get("ScheduledStationAETitle", "") or "").strip()
    return station in ("", "*")


def _signature(ds: Dataset) -> tuple:
    """A hashable signature of an identifier's keys and values."""
    return tuple(
        (elem.tag, elem.VR, tuple(_signature(i) for i in elem.value) if elem.VR == "SQ" else str(elem.value))
        for elem in ds
    )


class _Cache:
    """A small least-recently-used map; thread-safe enough for CPython (a lost entry is rebuilt)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Dataset]) -> Dataset:
        try:
            value = self._entries[key]
            self._entries.move_to_end(key)
            return value
        except KeyError:
            pass
        value = build()
        self._entries[key] = value
        while len(self._entries) > self.size:
            try:
                self._entries.popitem(last=False)
            except KeyError:
                break
        return value
