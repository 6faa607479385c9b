"""Modality Worklist C-FIND (PS3.4 Annex K) as plain functions over pydicom datasets.

The handler's path through it, for one C-FIND request::

    validate_query(query)                  # InvalidQuery -> status 0xA900
    plan = plan_query(query)               # indexed lookup, a superset of the answer
    for order, auth in candidates(plan):   # the data layer, outside this package
        item = build_item(order, auth)
        if matches(query, item):
            yield build_response(query, item)

Matching and response shaping live in :mod:`worklist.mwl_match`, the item in
:mod:`worklist.mwl_item`; this module checks identifiers and plans the lookup,
and is the one to import from.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterator

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import PersonName

from worklist.mwl_item import build_item, describe
from worklist.mwl_match import (
    NOT_MATCHED, NUMERIC_VRS, RANGE_HINT, RANGE_VRS, UNMATCHABLE_VRS, WILDCARD_VRS, InvalidQuery, build_response,
    has_wildcard, key_vr, matches, matching_keys, mismatched_key, name_of, parse_range, person_name_matches,
    shown, skipped, values_of,
)

__all__ = [
    "InvalidQuery", "QueryPlan", "build_item", "build_response", "describe", "matches", "matching_keys",
    "mismatched_key", "person_name_matches", "plan_query", "validate_query",
]

_UID_CHARS = frozenset("0123456789.")
#: Longest list of Study Instance UIDs the lookup takes; a longer list is matched in memory
#: only (a database takes a bounded number of parameters: SQLite 250,000, PostgreSQL 65,535).
PLANNED_UIDS = 1000
#: Python types pydicom gives the values of string VRs (dates when datetime_conversion is on).
_TEXT_TYPES = {vr: (str, PersonName) for vr in WILDCARD_VRS | {"AS", "UI"}}
_TEXT_TYPES.update({vr: (str, dt.date, dt.time) for vr in RANGE_VRS})


def _element_problems(ds: Dataset, path: str) -> Iterator[str]:
    for tag in list(ds.keys()):
        where = path + name_of(tag)
        try:
            elem = ds[tag]
        except Exception as exc:  # pydicom raises several types for undecodable values
            yield f"{where} cannot be decoded ({exc}); check its VR and the Specific Character Set"
            continue
        if skipped(tag):
            continue
        try:
            sequence_key = dictionary_VR(tag) == "SQ"
        except KeyError:
            sequence_key = False
        if sequence_key or elem.VR == "SQ":
            if elem.VR != "SQ" or not isinstance(elem.value, Sequence):
                yield (f"{where} is a sequence but was sent as {elem.VR}; send it as a sequence "
                       "with one item holding the keys to match, or empty to have it returned")
            elif len(elem.value) > 1:
                yield (f"{where} has {len(elem.value)} items; a sequence key holds one item "
                       "(PS3.4 C.2.2.2.6): put all its keys in a single item")
            elif elem.value:
                yield from _element_problems(elem.value[0], where + ">")
            continue
        if tag in NOT_MATCHED:
            continue
        yield from _value_problems(elem, where)


def _value_problems(elem, where: str) -> Iterator[str]:
    vr = key_vr(elem)
    raw = elem.value
    parts = raw if isinstance(raw, (list, tuple, MultiValue)) else [raw]
    allowed = _TEXT_TYPES.get(vr)
    if allowed and any(p is not None and not isinstance(p, allowed) for p in parts):
        wrong = next(p for p in parts if p is not None and not isinstance(p, allowed))
        yield f"{where} must be text for VR {vr}, got {type(wrong).__name__}; send it as a string"
        return
    values = values_of(elem)
    if not values:
        return
    if len(values) > 1 and vr != "UI":
        listed = shown("\\".join(values))
        yield (f"{where} has {len(values)} values ({listed}); only UID keys take a list "
               "(PS3.4 C.2.2.2.2): send one value, or a wild card")
        return
    text = values[0]
    if vr in UNMATCHABLE_VRS:
        yield f"{where} has VR {vr}, which has no matching; send it empty to have it returned"
    elif vr == "UI":
        bad = [v for v in values if not set(v) <= _UID_CHARS]
        if bad:
            yield (f"{where} '{shown(bad[0])}' is not a UID (digits and dots only); wild cards are not "
                   "allowed in UID keys, send the full UID or a list of UIDs separated by \\")
    elif vr in RANGE_VRS:
        found = parse_range(vr, text)
        if found is None:
            yield f"{where} '{shown(text)}' is not a valid {vr} key; use {RANGE_HINT[vr]}"
        elif found.reversed and vr != "TM":
            yield f"{where} '{shown(text)}' starts after it ends; put the earlier {vr} first"
    elif vr in NUMERIC_VRS:
        try:
            float(text)
        except ValueError:
            yield f"{where} '{shown(text)}' is not a number; send a number or leave it empty"


def validate_query(query: Dataset) -> None:
    """Refuse an identifier this SCP cannot match, naming every problem found.

    Raises InvalidQuery, which the C-FIND handler answers with 0xA900
    (Identifier does not match SOP Class, PS3.4 K.4.1.1.4). Refused: a sequence
    key sent with another VR, or with more than one item (C.2.2.2.6); several
    values in a non-UID key (without Multiple Value Matching they have no
    meaning, C.2.2.2.8 note 4); a DA, TM or DT key that is not a value or a
    range (C.2.2.2.5), or a date range that ends before it starts; a UID key
    with characters other than digits and dots (no wild cards in UIDs,
    C.2.2.2.4); a non-string value where a string VR needs one; a non-empty
    key of a binary VR; a value pydicom cannot decode. A reversed time range is
    accepted: it matches nothing alone and means "overnight" when combined
    with a date range (C.2.2.2.5.4).
    """
    problems = list(_element_problems(query, ""))
    if problems:
        raise InvalidQuery(*problems)


@dataclass(frozen=True)
class QueryPlan:
    """The constraints of an identifier an indexed database lookup can answer.

    Only exact values go in (no wild cards, no person names): the in-memory
    matcher always runs afterwards over the candidates, so the plan only has to
    select a superset of the answer. Fields are the order's columns:

    - ``station_ae``, ``modality``: the step's Scheduled Station AE Title and
      Modality, exact (case sensitive, as PS3.4 C.2.2.2.1 matches them);
    - ``date_from``, ``date_to``: inclusive bounds on the scheduled date, from
      Scheduled Procedure Step Start Date; either may be None (open);
    - ``accession_number``, ``patient_id``: exact;
    - ``study_instance_uids``: any of these (empty: no constraint; a list longer
      than :data:`PLANNED_UIDS` is left to the matcher);
    - ``requested_procedure_id``: exact, but an order without one answers with
      its accession number (build_item), so look up
      ``requested_procedure_id = X or (requested_procedure_id = '' and
      accession_number = X)``.

    None (or an empty tuple) means "no constraint".
    """

    station_ae: str | None = None
    modality: str | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    study_instance_uids: tuple[str, ...] = ()
    requested_procedure_id: str | None = None


def _exact(ds: Dataset, keyword: str) -> str | None:
    values = values_of(ds.get(tag_for_keyword(keyword)))
    if len(values) != 1 or has_wildcard(values[0]):
        return None
    return values[0]


def _planned_uids(query: Dataset) -> tuple[str, ...]:
    """The Study Instance UID list (PS3.4 C.2.2.2.2) for the lookup; () when empty or too long to plan."""
    uids = values_of(query.get(tag_for_keyword("StudyInstanceUID")))
    return tuple(uids) if len(uids) <= PLANNED_UIDS else ()


def plan_query(query: Dataset) -> QueryPlan:
    """The database constraints of a C-FIND identifier; validates it first (InvalidQuery).

    Keys with wild cards, person names, time ranges and everything else are
    left to :func:`matches`.
    """
    validate_query(query)
    sequence = query.get("ScheduledProcedureStepSequence")
    step = sequence[0] if sequence else Dataset()
    dates = None
    date_text = _exact(step, "ScheduledProcedureStepStartDate")
    if date_text:
        dates = parse_range("DA", date_text)
    return QueryPlan(
        station_ae=_exact(step, "ScheduledStationAETitle"),
        modality=_exact(step, "Modality"),
        date_from=dates.low if dates else None,
        date_to=dates.high if dates else None,
        accession_number=_exact(query, "AccessionNumber"),
        patient_id=_exact(query, "PatientID"),
        study_instance_uids=_planned_uids(query),
        requested_procedure_id=_exact(query, "RequestedProcedureID"),
    )
