"""Matching a Modality Worklist C-FIND identifier against a worklist item.

Implements the attribute matching of PS3.4 C.2.2.2 as the Modality Worklist
Information Model uses it (PS3.4 Annex K, Table K.6-1), and the shaping of the
response identifier (PS3.4 K.4.1.1.3.2). The
identifier and the item are plain pydicom datasets; nothing here touches a
socket, a database or the clock.

Matching types, by the VR of the key (the data dictionary VR wins over the VR
the SCU sent, so explicit-VR mistakes do not change the semantics):

- Universal matching (C.2.2.2.3): an empty value, or a wild card value made of
  ``*`` only (C.2.2.2.4 note), matches everything, an absent stored value too.
- Single value matching (C.2.2.2.1): exact and case sensitive; leading and
  trailing spaces are not significant (only trailing ones for ST, LT, UT, UR).
- Wild card matching (C.2.2.2.4): ``*`` and ``?`` for AE, CS, LO, LT, PN, SH,
  ST, UC, UR and UT.
- List of UID matching (C.2.2.2.2): a UI key with several values.
- Range matching (C.2.2.2.5.1 to .3) for DA, TM and DT: ``A-B``, ``A-`` and
  ``-B``. A single DA, TM or DT value is the range of its own precision, so
  ``0930`` matches ``093015``; an upper bound covers its whole precision, so
  ``-10`` ends at 10:59:59.999999. Time ranges do not cross midnight
  (C.2.2.2.5.2): ``2200-0600`` alone matches nothing. Offsets from UTC in DT
  values are ignored: order times are naive local times (docs/rules.md, "Words").
- Combined date and time (C.2.2.2.5.4): when a date key and its time key (for
  example ScheduledProcedureStepStartDate and ScheduledProcedureStepStartTime)
  are both ranges of the same form, they are matched as one datetime range:
  ``20261201-20261202`` with ``2200-0600`` is 1 Dec 22:00 to 2 Dec 06:00, not
  two evening windows. The standard makes this an extended negotiation option;
  ``combine_date_time=False`` matches them separately.
- Sequence matching (C.2.2.2.6): a sequence key holds at most one item; it
  matches when some stored item matches every key in it. An empty sequence, or
  an item whose keys are all universal, matches everything.
- Person names (PN): see :func:`person_name_matches`.

A non-universal key never matches an empty or absent stored value. Specific
Character Set, Query/Retrieve Level (which some consoles send to a worklist
although the MWL identifier has no such key) and Timezone Offset From UTC are
never matched; private and command-group elements are ignored. Values are compared
as decoded text: pydicom decodes each value with the Specific Character Set of
its own dataset, so ISO_IR 100 and ISO_IR 192 identifiers match alike.
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Iterator

from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.multival import MultiValue

from infra.errors import InvalidInput

#: VRs for which ``*`` and ``?`` are wild cards (PS3.4 C.2.2.2.4).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
#: VRs that take range matching (PS3.4 C.2.2.2.5).
RANGE_VRS = frozenset({"DA", "TM", "DT"})
#: VRs whose values are encoded with the Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
#: VRs compared as numbers.
NUMERIC_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "SV", "UL", "US", "UV"})
#: VRs for which the standard defines no matching: such keys may only be empty.
UNMATCHABLE_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

_SPECIFIC_CHARACTER_SET = tag_for_keyword("SpecificCharacterSet")
#: Never matched: they describe the identifier, not the entity (PS3.4 C.2.2.2).
NOT_MATCHED = frozenset(
    tag_for_keyword(k) for k in ("SpecificCharacterSet", "QueryRetrieveLevel", "TimezoneOffsetFromUTC")
)
#: Never copied into a response as keys; the character set is set by build_response.
NOT_RETURNED = frozenset(tag_for_keyword(k) for k in ("SpecificCharacterSet", "QueryRetrieveLevel"))

#: How to write a DA, TM or DT key, for error messages.
RANGE_HINT = {
    "DA": "YYYYMMDD, or a range YYYYMMDD-YYYYMMDD, YYYYMMDD- or -YYYYMMDD",
    "TM": "HHMM[SS[.FFFFFF]], or a range such as 0800-1200, 0800- or -1200",
    "DT": "YYYYMMDD[HHMM[SS]], or a range such as 202612010800-202612011200",
}


class InvalidQuery(InvalidInput):
    """The C-FIND identifier cannot be matched as it stands.

    The DICOM handler answers it with status 0xA900 (Identifier does not match
    SOP Class, PS3.4 C.4.1.1.4 / K.4.1.1.4); this module keeps status numbers
    out. ``problems`` lists every problem found; the message joins them.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(problems))


# --- reading keys and stored values -------------------------------------------------


def skipped(tag: int) -> bool:
    """Group lengths, command and file meta groups, and private elements are not keys."""
    group, element = tag >> 16, tag & 0xFFFF
    return element == 0 or group < 0x0008 or group % 2 == 1


def key_vr(elem: DataElement) -> str:
    """The data dictionary VR of ``elem``, else the VR it arrived with."""
    try:
        vr = dictionary_VR(elem.tag)
    except KeyError:
        return elem.VR
    return elem.VR if " or " in vr else vr


def name_of(tag: int) -> str:
    """The pydicom keyword of a tag, else its (gggg,eeee) form."""
    return keyword_for_tag(tag) or f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def values_of(elem: DataElement | None) -> list[str]:
    """The values of an element as stripped text; ``[]`` when it is absent or empty."""
    if elem is None or elem.value is None or elem.value == "" or elem.value == b"":
        return []
    raw = elem.value if isinstance(elem.value, (list, tuple, MultiValue)) else [elem.value]
    vr = key_vr(elem)
    keep_leading = vr in {"ST", "LT", "UT", "UR"}
    texts = [str(v).rstrip(" \0") if keep_leading else str(v).strip(" \0") for v in raw if v is not None]
    return texts if any(texts) else []


def single_value(elem: DataElement, where: str) -> str:
    """The one value of a non-UID key; several values are refused (PS3.4 C.2.2.2.8 note 4)."""
    values = values_of(elem)
    if len(values) > 1:
        listed = shown("\\".join(values))
        raise InvalidQuery(
            f"{where} has {len(values)} values ({listed}); only UID keys take a list "
            "(PS3.4 C.2.2.2.2): send one value, or a wild card such as MR*"
        )
    return values[0] if values else ""


def shown(text: str, limit: int = 40) -> str:
    """``text`` as a message quotes it: cut to ``limit`` characters, since a key may be megabytes long."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


# --- ranges of DA, TM and DT ----------------------------------------------------------

#: The longest DA, TM or DT key, spaces around the ``-`` included: PS3.5 Table 6.2-1
#: allows 18, 28 and 54 bytes for range matching keys of DA, TM and DT.
LONGEST_RANGE = 64

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})")
_TM = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_DT = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,6}))?(?:[+-]\d{4})?")


def _fraction(digits: str | None, ceil: bool) -> int:
    if digits is None:
        return 999999 if ceil else 0
    return int(digits.ljust(6, "9" if ceil else "0"))


def _parse_point(vr: str, text: str, ceil: bool = False) -> Any:
    """A DA, TM or DT value as date, time or datetime; ``ceil`` gives the end of its precision.

    Returns None for text that is not a value of the VR (PS3.5 Table 6.2-1).
    """
    try:
        if vr == "DA":
            m = _DA.fullmatch(text)
            return dt.date(*map(int, m.groups())) if m else None
        if vr == "TM":
            m = _TM.fullmatch(text)
            if not m:
                return None
            hh, mm, ss, frac = m.groups()
            fill = 59 if ceil else 0
            return dt.time(int(hh), int(mm) if mm else fill, int(ss) if ss else fill,
                           _fraction(frac, ceil) if (ss or ceil) else 0)
        m = _DT.fullmatch(text)
        if not m:
            return None
        year, month, day, hh, mm, ss, frac = m.groups()
        y, mo = int(year), int(month) if month else (12 if ceil else 1)
        last_day = calendar.monthrange(y, mo)[1]
        return dt.datetime(
            y, mo, int(day) if day else (last_day if ceil else 1),
            int(hh) if hh else (23 if ceil else 0), int(mm) if mm else (59 if ceil else 0),
            int(ss) if ss else (59 if ceil else 0), _fraction(frac, ceil),
        )
    except ValueError:
        return None


@dataclass(frozen=True)
class Range:
    """An inclusive range of dates, times or datetimes; None is an open end.

    ``form`` is ``single`` (one value), ``closed`` (A-B), ``from`` (A-), ``to``
    (-B) or ``open`` (a lone ``-``), the forms of PS3.4 C.2.2.2.5.
    """

    low: Any
    high: Any
    form: str

    def __contains__(self, point: Any) -> bool:
        return (self.low is None or self.low <= point) and (self.high is None or point <= self.high)

    @property
    def reversed(self) -> bool:
        return self.low is not None and self.high is not None and self.low > self.high


def parse_range(vr: str, text: str) -> Range | None:
    """Parse a DA, TM or DT key (PS3.4 C.2.2.2.5); None when it is not one.

    A DT key is one value when the whole text is a DT (its ``-`` is then an
    offset from UTC), else it is split at the first ``-`` that leaves two valid
    ends. Text longer than :data:`LONGEST_RANGE` is no range: it is refused
    before any splitting (trying every ``-`` of a long key is quadratic) and
    before the cache (which would keep it).
    """
    text = text.strip()
    return _parse_range(vr, text) if len(text) <= LONGEST_RANGE else None


@functools.lru_cache(maxsize=512)
def _parse_range(vr: str, text: str) -> Range | None:
    if _parse_point(vr, text) is not None:
        return Range(_parse_point(vr, text), _parse_point(vr, text, ceil=True), "single")
    cuts = [i for i, ch in enumerate(text) if ch == "-"]
    if vr != "DT" and len(cuts) != 1:
        return None
    for cut in cuts:
        left, right = text[:cut].strip(), text[cut + 1:].strip()
        low = _parse_point(vr, left) if left else None
        high = _parse_point(vr, right, ceil=True) if right else None
        if (left and low is None) or (right and high is None):
            continue
        form = "closed" if left and right else "from" if left else "to" if right else "open"
        return Range(low, high, form)
    return None


def range_of(elem: DataElement, where: str) -> Range:
    """The range of a DA, TM or DT key, or InvalidQuery naming the format to use."""
    vr, text = key_vr(elem), single_value(elem, where)
    found = parse_range(vr, text)
    if found is None:
        raise InvalidQuery(f"{where} '{shown(text)}' is not a valid {vr} key; use {RANGE_HINT[vr]}")
    return found


# --- person names -------------------------------------------------------------------


def fold(text: str) -> str:
    """Case and accent folded text: NFKD, combining marks dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()


def _fits(segment: str, text: str, at: int) -> bool:
    """True when ``segment`` (``?``: any one character, no ``*``) equals ``text`` at index ``at``."""
    if at < 0 or at + len(segment) > len(text):
        return False
    if "?" not in segment:
        return text.startswith(segment, at)
    return all(s == "?" or s == t for s, t in zip(segment, text[at:at + len(segment)]))


def _find(segment: str, text: str, start: int, end: int) -> int:
    """The first index in ``text[start:end]`` where ``segment`` fits wholly inside it, else -1."""
    if "?" not in segment:
        return text.find(segment, start, end)
    for at in range(start, end - len(segment) + 1):
        if _fits(segment, text, at):
            return at
    return -1


def wildcard_matches(pattern: str, text: str) -> bool:
    """Wild card matching (PS3.4 C.2.2.2.4): ``*`` any run of characters, ``?`` any one.

    No regular expression and no backtracking: the pattern is split at its ``*``
    runs into segments; the first must start ``text``, the last must end it, and
    each one between is taken at its leftmost place after the one before (the
    leftmost place never loses a match that a later one would find). A pattern
    with more fixed characters than ``text`` fails at once, so the segments
    hold at most ``len(text)`` characters together and each is tried at most
    ``len(text)`` times: O(len(pattern) + len(text)**2) whatever the pattern,
    linear in the key (which the SCU controls).
    """
    if "*" not in pattern:
        return len(pattern) == len(text) and _fits(pattern, text, 0)
    if len(pattern) - pattern.count("*") > len(text):
        return False
    head, *middle, tail = pattern.split("*")
    if not (_fits(head, text, 0) and _fits(tail, text, len(text) - len(tail))):
        return False
    at, end = len(head), len(text) - len(tail)
    for segment in middle:
        if segment:
            found = _find(segment, text, at, end)
            if found < 0:
                return False
            at = found + len(segment)
    return True


def text_matches(key: str, stored: str) -> bool:
    """Single value or wild card matching of one text value (PS3.4 C.2.2.2.1, C.2.2.2.4)."""
    if has_wildcard(key):
        return wildcard_matches(key, stored)
    return key == stored


def person_name_matches(key: str, stored: str) -> bool:
    """Match a PN key against a stored name, component by component.

    PS3.4 C.2.2.2.1 lets PN matching ignore case and accents, and C.2.2.2.4
    leaves PN wild card matching to the implementation. Here:

    - both names are split into component groups (``=``) and components (``^``:
      family, given, middle, prefix, suffix); each key component is matched
      against the same stored component, case and accent insensitively, with
      ``*`` and ``?`` as wild cards inside that component (they do not cross a
      ``^``);
    - an empty or absent key component, or one that is only ``*``, matches any
      stored component, so ``DOE^JANE`` finds ``DOE^JANE^Q``: a console user
      rarely knows the middle name the RIS holds. ``DOE^JANE^Q`` does not find
      ``DOE^JANE`` (the key asks for a middle name the order does not have);
    - ``DOE*`` and ``doe^jane*`` find ``DOE^JANE^Q``; ``*JANE*`` does not (it
      is a family name key).
    """
    stored_groups = stored.split("=")
    for index, key_group in enumerate(key.split("=")):
        stored_parts = (stored_groups[index] if index < len(stored_groups) else "").split("^")
        for position, part in enumerate(key_group.split("^")):
            part = part.strip()
            if not part.strip("*"):
                continue
            against = stored_parts[position].strip() if position < len(stored_parts) else ""
            if not against or not text_matches(fold(part), fold(against)):
                return False
    return True


# --- matching -----------------------------------------------------------------------


def is_universal(elem: DataElement) -> bool:
    """Universal matching (PS3.4 C.2.2.2.3, C.2.2.2.4 note 1, C.2.2.2.6)."""
    if elem.VR == "SQ":
        return not elem.value or all(is_universal(e) for e in elem.value[0] if not skipped(e.tag))
    values = values_of(elem)
    return not values or (key_vr(elem) in WILDCARD_VRS and all(not v.strip("*") for v in values))


def element_matches(key: DataElement, stored: DataElement | None, where: str = "") -> bool:
    """Match one non-sequence key against the stored element (None when absent)."""
    where = where or name_of(key.tag)
    if is_universal(key):
        return True
    vr = key_vr(key)
    if vr in UNMATCHABLE_VRS:
        raise InvalidQuery(f"{where} has VR {vr}, which has no matching; send it empty to have it returned")
    stored_values = values_of(stored)
    if not stored_values:
        return False
    if vr == "UI":
        wanted = set(values_of(key))
        return any(v in wanted for v in stored_values)
    if vr in RANGE_VRS:
        wanted_range = range_of(key, where)
        return any((point := _parse_point(vr, v)) is not None and point in wanted_range for v in stored_values)
    text = single_value(key, where)
    if vr == "PN":
        return any(person_name_matches(text, v) for v in stored_values)
    if vr in NUMERIC_VRS:
        try:
            return any(float(v) == float(text) for v in stored_values)
        except ValueError:
            raise InvalidQuery(f"{where} '{shown(text)}' is not a number; send a number or leave it empty") from None
    return any(text_matches(text, v) if vr in WILDCARD_VRS else text == v for v in stored_values)


def _combined_pairs(key_ds: Dataset) -> Iterator[tuple[int, int, Range, Range]]:
    """Date and time keys that are ranges of the same form (PS3.4 C.2.2.2.5.4)."""
    for elem in key_ds:
        keyword = keyword_for_tag(elem.tag)
        if key_vr(elem) != "DA" or not keyword.endswith("Date"):
            continue
        time_tag = tag_for_keyword(keyword[:-4] + "Time")
        if time_tag is None or time_tag not in key_ds:
            continue
        time_elem = key_ds[time_tag]
        if is_universal(elem) or is_universal(time_elem):
            continue
        dates = range_of(elem, keyword)
        times = range_of(time_elem, name_of(time_tag))
        if dates.form == times.form and dates.form in {"closed", "from", "to"}:
            yield elem.tag, time_tag, dates, times


def _combined_matches(dates: Range, times: Range, stored_date: DataElement | None,
                      stored_time: DataElement | None) -> bool:
    date_values, time_values = values_of(stored_date), values_of(stored_time)
    if not date_values or not time_values:
        return False
    day, clock = _parse_point("DA", date_values[0]), _parse_point("TM", time_values[0])
    if day is None or clock is None:
        return False
    low = dt.datetime.combine(dates.low, times.low) if dates.low is not None else None
    high = dt.datetime.combine(dates.high, times.high) if dates.high is not None else None
    return dt.datetime.combine(day, clock) in Range(low, high, dates.form)


def _mismatch(query: Dataset, item: Dataset, combine: bool, path: str) -> str | None:
    done: set[int] = set()
    if combine:
        for date_tag, time_tag, dates, times in _combined_pairs(query):
            done |= {date_tag, time_tag}
            if not _combined_matches(dates, times, item.get(date_tag), item.get(time_tag)):
                return f"{path}{name_of(date_tag)}+{name_of(time_tag)}"
    for elem in query:
        if elem.tag in done or elem.tag in NOT_MATCHED or skipped(elem.tag):
            continue
        where = path + name_of(elem.tag)
        if elem.VR != "SQ":
            if not element_matches(elem, item.get(elem.tag), where):
                return where
            continue
        if len(elem.value) > 1:
            raise InvalidQuery(f"{where} has {len(elem.value)} items; a sequence key holds one item (PS3.4 C.2.2.2.6)")
        if is_universal(elem):
            continue
        stored = item.get(elem.tag)
        stored_items = list(stored.value) if stored is not None and stored.VR == "SQ" else []
        misses = [_mismatch(elem.value[0], s, combine, where + ">") for s in stored_items or [Dataset()]]
        if all(misses):
            return misses[0] if len(misses) == 1 else where
    return None


def mismatched_key(query: Dataset, item: Dataset, *, combine_date_time: bool = True) -> str | None:
    """The first key of ``query`` that ``item`` fails, as a keyword path; None on a match.

    The path names sequence keys as ``ScheduledProcedureStepSequence>Modality``
    and combined date and time keys as ``...StartDate+...StartTime``: what a
    debug log needs to say why an order is not on a console. Raises
    InvalidQuery for a key that cannot be matched (see mwl.validate_query).
    """
    return _mismatch(query, item, combine_date_time, "")


def matching_keys(query: Dataset) -> Dataset:
    """The keys of ``query`` that can reject an item: universal ones left out.

    Matching an item against this gives the same answer as against ``query``
    (universal keys match everything), so a handler computes it once per query
    and matches every candidate against the short form.
    """
    keys = Dataset()
    for elem in query:
        if elem.tag in NOT_MATCHED or skipped(elem.tag) or is_universal(elem):
            continue
        if elem.VR == "SQ" and len(elem.value) == 1:
            keys.add(DataElement(elem.tag, "SQ", [matching_keys(elem.value[0])]))
        else:
            keys.add(elem)
    return keys


def matches(query: Dataset, item: Dataset, *, combine_date_time: bool = True) -> bool:
    """True when ``item`` matches every key of the C-FIND identifier ``query`` (PS3.4 C.2.2.2)."""
    return mismatched_key(query, item, combine_date_time=combine_date_time) is None


# --- the response identifier --------------------------------------------------------


def _empty_element(elem: DataElement) -> DataElement:
    """A zero-length element for a key asked for but not known (type 2 behaviour)."""
    vr = "SQ" if elem.VR == "SQ" else key_vr(elem)
    return DataElement(elem.tag, vr, [] if vr == "SQ" else None)


def _project(query: Dataset, item: Dataset, out: Dataset, combine_date_time: bool) -> None:
    for elem in query:
        if elem.tag in NOT_RETURNED or skipped(elem.tag):
            continue
        stored = item.get(elem.tag)
        if stored is None or (elem.VR == "SQ") != (stored.VR == "SQ"):
            out.add(_empty_element(elem))
            continue
        if elem.VR != "SQ":
            out.add(stored)
            continue
        key_item = elem.value[0] if elem.value else None
        if key_item is None or not any(not skipped(e.tag) for e in key_item):
            out.add(stored)
            continue
        returned = []
        for stored_item in stored.value:
            if _mismatch(key_item, stored_item, combine_date_time, "") is None:
                sub = Dataset()
                _project(key_item, stored_item, sub, combine_date_time)
                returned.append(sub)
        out.add(DataElement(elem.tag, "SQ", returned))


def _has_encoded_text(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if any(_has_encoded_text(sub) for sub in elem.value):
                return True
        elif elem.VR in CHARSET_VRS and values_of(elem):
            return True
    return False


def build_response(query: Dataset, item: Dataset, *, combine_date_time: bool = True) -> Dataset:
    """The response identifier for one matching item (PS3.4 C.4.1.1.3.2, K.4.1.1.3.2).

    Only the keys of ``query`` come back. A key the item does not have comes
    back empty. A sequence key with an item returns, for each stored item that
    matches it, just the sub-keys it lists (C.2.2.2.6); an empty sequence key
    returns the whole stored sequence. Specific Character Set is the item's
    whenever the response holds text encoded with it.

    The response shares element objects with ``item`` (no copies: a response is
    built per match and only encoded), so neither may be changed afterwards.
    """
    response = Dataset()
    _project(query, item, response, combine_date_time)
    if _SPECIFIC_CHARACTER_SET in item and _has_encoded_text(response):
        response.SpecificCharacterSet = item.SpecificCharacterSet
    return response
