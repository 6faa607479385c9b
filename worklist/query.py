"""What a modality console sees: the Modality Worklist C-FIND (rule 2 of docs/rules.md).

Decided at query time (rule 1): candidates come from an indexed lookup built from the
query's exact keys (:func:`worklist.mwl.plan_query`), each is gated with today's auths
and overrides, and only served orders are turned into items and matched in full.
Orders are read in chunks, so the first response goes out early and a C-CANCEL (the
caller stops iterating) stops the work.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import threading
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
#: Estimated bytes (:func:`_weight`) the cached responses hold at most, all together.
RESPONSE_CACHE_BYTES = 32 * 1024 * 1024
#: Identifiers heavier than this (:func:`_weight`) have their responses built afresh and never
#: cached: a console's identifier weighs a few KiB, and a large one must not pin megabytes
#: or push the consoles' answers out.
CACHED_IDENTIFIER_BYTES = 64 * 1024
#: Bytes an element costs beyond its value's characters: about what pydicom spends on one.
ELEMENT_BYTES = 200
#: What the response cache keeps for a served order whose item does not match the identifier.
_NO_MATCH = Dataset()


class WorklistQuery:
    """Answers Modality Worklist identifiers with the served orders that match them."""

    def __init__(self, policy: PayerPolicy, clock: Clock, *, auth_attribute: str = "RequestedProcedureComments",
                 restrict_unnamed_station_to_caller: bool = False) -> None:
        self.policy = policy
        self.clock = clock
        self.auth_attribute = auth_attribute
        self.restrict_unnamed_station_to_caller = restrict_unnamed_station_to_caller
        self._items = _Cache(CACHE_SIZE)
        self._responses = _Cache(CACHE_SIZE, max_bytes=RESPONSE_CACHE_BYTES,
                                 weigh=lambda value: ELEMENT_BYTES if value is _NO_MATCH else _weight(value))

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
        asked = _fingerprint(query)
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
            response = self._response(query, asked, keys, order, decision.auth_number)
            if response is not _NO_MATCH:
                yield response

    def _response(self, query: Dataset, asked: bytes | None, keys, order: Order, auth_number: str | None) -> Dataset:
        """The response identifier for a served order's item (PS3.4 K.4.1.1.3.2), or :data:`_NO_MATCH`
        when the item does not match; both reused for the same identifier and version of the order.

        The item depends on nothing but the order and its auth, and the match on nothing but the
        item and the identifier, so a console polling with the same identifier gets its answer
        without the item being matched again. ``asked`` is the identifier's fingerprint; None (too
        heavy to cache) matches and builds afresh.
        """
        def answer() -> Dataset:
            item = self._item(order, auth_number)
            return build_response(query, item) if matches(keys, item) else _NO_MATCH

        if asked is None:
            return answer()
        return self._responses.get((asked, order, auth_number), answer)

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
    if plan.date_to and plan.date_to < dt.date.max:  # a range to 99991231 has no end (PS3.4 C.2.2.2.5.1)
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


def _weight(ds: Dataset) -> int:
    """Estimated bytes of a dataset in memory: :data:`ELEMENT_BYTES` per element plus its value's characters."""
    return sum(ELEMENT_BYTES + (sum(_weight(i) for i in e.value) if e.VR == "SQ" else len(str(e.value))) for e in ds)


def _fingerprint(ds: Dataset) -> bytes | None:
    """The cache key of an identifier: a SHA-256 digest of its keys and values (32 bytes,
    however large the identifier); None when it weighs more than :data:`CACHED_IDENTIFIER_BYTES`."""
    if _weight(ds) > CACHED_IDENTIFIER_BYTES:
        return None
    digest = hashlib.sha256()
    _feed(digest, ds)
    return digest.digest()


def _feed(digest, ds: Dataset) -> None:
    """Every key's tag, VR and value into ``digest``, each length-prefixed or delimited so that
    no two identifiers feed the same bytes."""
    for elem in ds:
        if elem.VR == "SQ":
            digest.update(b"S%08x%d[" % (elem.tag, len(elem.value)))
            for item in elem.value:
                _feed(digest, item)
                digest.update(b"]")
        else:
            text = str(elem.value).encode("utf-8", "surrogatepass")
            digest.update(b"E%08x%s%d:" % (elem.tag, elem.VR.encode("ascii", "replace"), len(text)))
            digest.update(text)


class _Cache:
    """A least-recently-used map bounded by its number of entries and by their weight.

    ``weigh`` estimates an entry's bytes; without it only the count bounds the map. A
    lock keeps the count and the weight right across association threads; values are
    built outside it (two threads may build the same one; the last stays).
    """

    def __init__(self, size: int, *, max_bytes: float = math.inf,
                 weigh: Callable[[Dataset], int] = lambda value: 0) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.weigh = weigh
        self.bytes = 0
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, build: Callable[[], Dataset]) -> Dataset:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        value = build()
        weight = self.weigh(value)
        with self._lock:
            replaced = self._entries.pop(key, None)
            self.bytes += weight - (replaced[1] if replaced else 0)
            self._entries[key] = (value, weight)
            while self._entries and (len(self._entries) > self.size or self.bytes > self.max_bytes):
                self.bytes -= self._entries.popitem(last=False)[1][1]
        return value
