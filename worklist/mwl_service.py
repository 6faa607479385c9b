"""The worklist a console sees: served orders matching a C-FIND identifier.

Decided at query time (SPEC rule 1 and 2): candidates come from an indexed lookup
built from the query's exact keys (:func:`worklist.mwl.plan_query`), each is gated
with today's auths and overrides, and only served orders are turned into items and
matched in full. Orders are read in chunks, so the first response goes out early
and a C-CANCEL stops the work.
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Iterator

import peewee as pw
from pydicom import Dataset

from worklist.mwl import QueryPlan, build_item, build_response, matches, matching_keys
from worklist.models import OrderRow
from worklist.orders import WORKABLE_STATUSES, Order
from worklist.policy import PayerPolicy
from worklist.service import decide_all

CHUNK = 200


def plan_conditions(plan: QueryPlan, only_station: str | None = None) -> list[pw.Expression]:
    """Peewee conditions for the plan (each one answerable by an index on orders)."""
    conditions = [OrderRow.status.in_(WORKABLE_STATUSES)]
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


def responses(
    query: Dataset,
    plan: QueryPlan,
    *,
    policy: PayerPolicy,
    today: dt.date,
    auth_attribute: str,
    only_station: str | None = None,
) -> Iterator[Dataset]:
    """Yield one C-FIND response identifier per served order that matches ``query``."""
    rows = OrderRow.select().where(*plan_conditions(plan, only_station))
    rows = rows.order_by(OrderRow.scheduled_start, OrderRow.id)
    keys = matching_keys(query)
    asked = _Query(query)
    chunk = []
    for row in rows.iterator():
        chunk.append(row.to_order())
        if len(chunk) == CHUNK:
            yield from _served_matches(asked, keys, chunk, policy, today, auth_attribute)
            chunk = []
    if chunk:
        yield from _served_matches(asked, keys, chunk, policy, today, auth_attribute)


class _Query:
    """A C-FIND identifier with a hashable signature of its keys and values.

    Consoles poll with the same identifier again and again; the signature lets the
    response for an order be built once per (order version, identifier).
    """

    def __init__(self, query: Dataset):
        self.dataset = query
        self.signature = _signature(query)

    def __hash__(self) -> int:
        return hash(self.signature)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Query) and self.signature == other.signature


def _signature(ds: Dataset) -> tuple:
    return tuple(
        (elem.tag, elem.VR, tuple(_signature(i) for i in elem.value) if elem.VR == "SQ" else str(elem.value))
        for elem in ds
    )


@lru_cache(maxsize=4096)
def _item(order: Order, auth_number: str | None, auth_attribute: str) -> Dataset:
    """The worklist item of a served order, built once per version of the order.

    Orders are frozen values, so a changed order (or auth) is a new key; items are
    never modified after they are built (responses share their elements).
    """
    return build_item(order, auth_number, auth_attribute=auth_attribute)


@lru_cache(maxsize=4096)
def _response(asked: _Query, order: Order, auth_number: str | None, auth_attribute: str) -> Dataset:
    """The response identifier for one served order; the same inputs give the same answer."""
    return build_response(asked.dataset, _item(order, auth_number, auth_attribute))


def _served_matches(asked, keys, orders, policy, today, auth_attribute) -> Iterator[Dataset]:
    for order, decision in zip(orders, decide_all(orders, policy, today)):
        if not decision.served:
            continue
        item = _item(order, decision.auth_number, auth_attribute)
        if matches(keys, item):
            yield _response(asked, order, decision.auth_number, auth_attribute)
