"""Query/Retrieve matching (PS3.4 Annex C): which stored entities a C-FIND identifier finds,
what each answer holds, which instances a C-MOVE or C-GET identifier names, and who sees
which studies.

Pure: the records are plain dicts keyed by DICOM keyword (built by :mod:`store.qr` from the
index), the identifiers plain pydicom datasets; nothing here touches a socket, a database,
a file or the clock. The matching itself is :mod:`worklist.mwl_match`'s (PS3.4 C.2.2.2:
single value, list of UIDs, universal, wild card, range, sequence, person names), the same
code the worklist matches with.

Information models (PS3.4 C.6.1 Patient Root, C.6.2 Study Root) and their keys, as
:data:`KEYS` lists them (PS3.4 Tables C.6-1 to C.6-6):

- Patient Root: PATIENT, STUDY, SERIES and IMAGE levels. Study Root: STUDY (the patient's
  attributes are study-level keys there), SERIES and IMAGE.
- Hierarchical search (C.4.1.2.1), relational not supported: below the top level the
  identifier must carry the unique key of every level above (a single UID, or for Patient
  ID a single value without wild cards); a key of a level below the Query/Retrieve Level is
  refused (:class:`worklist.mwl_match.InvalidQuery`, answered 0xA900). Keys of the levels
  above, besides their unique keys, are matched and returned too (we know them).
- A key the gatekeeper does not index (an optional key of no table here, a private one) is
  not matched, and comes back empty (C.4.1.1.3.2: an SCP that does not support an
  optional key ignores it).
- ``Number of ... Related ...`` keys are return keys only: a value sent is ignored.
  Modalities in Study (0008,0061) and SOP Classes in Study (0008,0062) may carry several
  values: a study matches when any of them matches any of the study's.
- Each answer holds the keys of the identifier, the Query/Retrieve Level, the unique key of
  its level, and Retrieve AE Title (0008,0054), the gatekeeper's own.

Visibility (:func:`visible_states`): archived studies always; held studies only to the AE
titles of ``qr.held_viewers`` when ``qr.include_held`` is on; rejected and purged never.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pydicom import config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from store.states import ARCHIVED, HELD
from worklist import mwl_match as m
from worklist.mwl_match import InvalidQuery

PATIENT_ROOT, STUDY_ROOT = "PATIENT_ROOT", "STUDY_ROOT"
PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"

#: The levels of each information model, top first.
LEVELS = {PATIENT_ROOT: (PATIENT, STUDY, SERIES, IMAGE), STUDY_ROOT: (STUDY, SERIES, IMAGE)}
#: The unique key of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", IMAGE: "SOPInstanceUID"}

_PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
_STUDY_KEYS = ("StudyDate", "StudyTime", "AccessionNumber", "StudyID", "StudyInstanceUID", "ReferringPhysicianName",
               "StudyDescription", "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
               "NumberOfStudyRelatedInstances")
_SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesInstanceUID", "SeriesDescription", "NumberOfSeriesRelatedInstances")
_IMAGE_KEYS = ("InstanceNumber", "SOPInstanceUID", "SOPClassUID")

#: The keys the gatekeeper matches and returns, per model and level.
KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    PATIENT_ROOT: {
        PATIENT: _PATIENT_KEYS + ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
                                  "NumberOfPatientRelatedInstances"),
        STUDY: _STUDY_KEYS, SERIES: _SERIES_KEYS, IMAGE: _IMAGE_KEYS,
    },
    STUDY_ROOT: {STUDY: _PATIENT_KEYS + _STUDY_KEYS, SERIES: _SERIES_KEYS, IMAGE: _IMAGE_KEYS},
}
#: Keys whose value is never matched (return keys only).
RETURN_ONLY = frozenset(k for k in (*KEYS[PATIENT_ROOT][PATIENT], *_STUDY_KEYS, *_SERIES_KEYS) if k.startswith("Number"))
#: Multi-valued keys: a match when any value of the key matches any stored value.
ANY_OF = frozenset({"ModalitiesInStudy", "SOPClassesInStudy"})

_LEVEL_TAG = tag_for_keyword("QueryRetrieveLevel")
_NEVER_KEYS = frozenset(tag_for_keyword(k) for k in ("SpecificCharacterSet", "QueryRetrieveLevel",
                                                     "TimezoneOffsetFromUTC"))
#: The character set of record datasets: the index holds decoded text.
RECORD_CHARSET = "ISO_IR 192"

Record = Mapping[str, Any]
"""One entity as the index knows it: DICOM keyword -> text, tuple of texts (multi-valued)
or int (counts). The record of an entity carries the attributes of its parents too."""


def visible_states(calling_ae: str, include_held: bool, held_viewers: Iterable[str]) -> frozenset[str]:
    """The study states ``calling_ae`` may query and retrieve (rejected and purged: never)."""
    if include_held and calling_ae.strip() in {v.strip() for v in held_viewers}:
        return frozenset({ARCHIVED, HELD})
    return frozenset({ARCHIVED})


@dataclass(frozen=True)
class Query:
    """A checked C-FIND identifier: its model and level, the keys to match, the keys to return."""

    model: str
    level: str
    matching: Dataset  # the non-universal keys the gatekeeper matches (mwl_match form)
    any_of: tuple[tuple[str, tuple[str, ...]], ...]  # (keyword, wanted values) of ANY_OF keys
    returned: Dataset  # every key to return (the identifier without the level)

    def value(self, keyword: str) -> str | None:
        """The single exact value of a matching key, or None (absent, universal, a wild card or a list):
        what an index lookup may narrow by."""
        elem = self.matching.data_element(keyword) if keyword in self.matching else None
        if elem is None:
            return None
        values = m.values_of(elem)
        if len(values) != 1 or (m.key_vr(elem) in m.WILDCARD_VRS and m.has_wildcard(values[0])):
            return None
        if m.key_vr(elem) in m.RANGE_VRS:
            return None
        return values[0]

    def date_range(self, keyword: str) -> tuple[str | None, str | None] | None:
        """The bounds of a DA key as ``YYYYMMDD`` text (None for an open end), or None when
        it is absent or universal: what an index lookup may narrow by."""
        elem = self.matching.data_element(keyword) if keyword in self.matching else None
        if elem is None or m.key_vr(elem) != "DA":
            return None
        found = m.range_of(elem, keyword)
        return (found.low.strftime("%Y%m%d") if found.low else None,
                found.high.strftime("%Y%m%d") if found.high else None)

    def uids(self, keyword: str) -> tuple[str, ...]:
        """The UIDs a UID key lists, () when it is absent or universal."""
        elem = self.matching.data_element(keyword) if keyword in self.matching else None
        return tuple(m.values_of(elem)) if elem is not None else ()


def level_of(identifier: Dataset, model: str) -> str:
    """The Query/Retrieve Level (0008,0052) of ``identifier``, checked against ``model``."""
    elem = identifier.get(_LEVEL_TAG)
    level = (m.values_of(elem) or [""])[0].upper() if elem is not None else ""
    if level not in LEVELS[model]:
        allowed = ", ".join(LEVELS[model])
        raise InvalidQuery(f"Query/Retrieve Level (0008,0052) is {m.shown(level) or 'missing'}; the "
                           f"{_model_name(model)} model takes {allowed}")
    return level


def parse_query(identifier: Dataset, model: str) -> Query:
    """Check a C-FIND identifier (hierarchical search, PS3.4 C.4.1.2.1) and split it into keys."""
    level = level_of(identifier, model)
    levels = LEVELS[model]
    here = levels.index(level)
    known_here = {k for lv in levels[:here + 1] for k in KEYS[model][lv]}
    below = {k for lv in levels[here + 1:] for k in KEYS[model][lv]}
    problems = []
    wrong = sorted(kw for kw in (keyword_for_tag(e.tag) for e in identifier if not m.skipped(e.tag)) if kw in below)
    if wrong:
        problems.append(f"{', '.join(wrong)} {'is a key' if len(wrong) == 1 else 'are keys'} below the "
                        f"{level} level (hierarchical query): ask at that level, or leave {'it' if len(wrong) == 1 else 'them'} out")
    for upper in levels[:here]:
        problems += _unique_key_problem(identifier, UNIQUE[upper], level)
    if problems:
        raise InvalidQuery(*problems)
    matching, returned, any_of = Dataset(), Dataset(), []
    for elem in identifier:
        if elem.tag in _NEVER_KEYS or m.skipped(elem.tag):
            continue
        returned.add(elem)
        keyword = keyword_for_tag(elem.tag)
        if keyword not in known_here or keyword in RETURN_ONLY or m.is_universal(elem):
            continue
        if keyword in ANY_OF:
            any_of.append((keyword, tuple(m.values_of(elem))))
            continue
        if elem.VR == "SQ":
            continue  # no sequence attribute is indexed: universal for us
        matching.add(elem)
    # Fail now, not per record, on a key that cannot be matched (a bad range, several values).
    for elem in matching:
        _check_key(elem)
    return Query(model, level, matching, tuple(any_of), returned)


def _check_key(elem: DataElement) -> None:
    """Raise InvalidQuery for a key no record could be matched against."""
    where, vr = m.name_of(elem.tag), m.key_vr(elem)
    if vr in m.UNMATCHABLE_VRS:
        raise InvalidQuery(f"{where} has VR {vr}, which has no matching; send it empty to have it returned")
    if vr == "UI":
        return
    if vr in m.RANGE_VRS:
        m.range_of(elem, where)
        return
    text = m.single_value(elem, where)
    if vr in m.NUMERIC_VRS:
        try:
            float(text)
        except ValueError:
            raise InvalidQuery(f"{where} '{m.shown(text)}' is not a number; send a number or leave it empty") from None


def _unique_key_problem(identifier: Dataset, keyword: str, level: str) -> list[str]:
    elem = identifier.data_element(keyword) if keyword in identifier else None
    values = m.values_of(elem) if elem is not None else []
    if len(values) != 1 or m.has_wildcard(values[0]):
        return [f"a {level} level query needs {keyword} of the level above with one value "
                f"(hierarchical query, PS3.4 C.4.1.2.1); it has {m.shown(chr(92).join(values)) or 'none'}"]
    return []


def record_dataset(record: Record) -> Dataset:
    """``record`` as a dataset of the standard's VRs, what :mod:`worklist.mwl_match` matches against."""
    ds = Dataset()
    ds.SpecificCharacterSet = RECORD_CHARSET
    for keyword, value in record.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = dictionary_VR(tag)
        if isinstance(value, (tuple, list)):
            value = [str(v) for v in value if v != ""] or None
            if value is not None and len(value) == 1:
                value = value[0]
        elif isinstance(value, int):
            value = str(value)
        elif value == "":
            value = None
        # As stored: a malformed value (a modality's) is matched as text, not warned about per query.
        ds.add(DataElement(tag, vr, value, validation_mode=config.IGNORE))
    return ds


def matches(query: Query, record: Record) -> bool:
    """True when ``record`` matches every key of ``query`` (PS3.4 C.2.2.2)."""
    for keyword, wanted in query.any_of:
        stored = record.get(keyword) or ()
        stored = (stored,) if isinstance(stored, str) else tuple(stored)
        if not any(m.text_matches(w, s) for w in wanted for s in stored if s):
            return False
    if not len(query.matching):
        return True
    keywords = [keyword_for_tag(elem.tag) for elem in query.matching]
    return m.matches(query.matching, record_dataset({k: record[k] for k in keywords if k in record}))


def response(query: Query, record: Record, retrieve_ae: str) -> Dataset:
    """The C-FIND answer for one matching record (PS3.4 C.4.1.1.3.2)."""
    item = record_dataset(record)
    out = m.build_response(query.returned, item)
    out.QueryRetrieveLevel = query.level
    unique = UNIQUE[query.level]
    if unique not in out and unique in item:
        out[unique] = item[unique]
    out.RetrieveAETitle = retrieve_ae
    if "SpecificCharacterSet" in out and all(_ascii(e) for e in out):
        del out.SpecificCharacterSet  # the default repertoire says it all
    return out


def _ascii(elem: DataElement) -> bool:
    if elem.VR not in m.CHARSET_VRS or elem.value is None:
        return True
    return all(str(v).isascii() for v in (elem.value if elem.VM > 1 else [elem.value]))


@dataclass(frozen=True)
class Retrieval:
    """A checked C-MOVE or C-GET identifier: the level and the unique keys that name what to send."""

    model: str
    level: str
    keys: tuple[tuple[str, tuple[str, ...]], ...]  # (unique keyword, values), top level first

    def values(self, keyword: str) -> tuple[str, ...]:
        return dict(self.keys).get(keyword, ())


def parse_retrieval(identifier: Dataset, model: str) -> Retrieval:
    """Check a C-MOVE / C-GET identifier (PS3.4 C.4.2.2.1, C.4.3.2.1): the unique key of the
    Query/Retrieve Level (one value, or a list of UIDs) and one value of each level above.
    Other keys are ignored."""
    level = level_of(identifier, model)
    levels = LEVELS[model]
    here = levels.index(level)
    problems, keys = [], []
    for upper in levels[:here]:
        problems += _unique_key_problem(identifier, UNIQUE[upper], level)
    elem = identifier.data_element(UNIQUE[level]) if UNIQUE[level] in identifier else None
    values = tuple(m.values_of(elem)) if elem is not None else ()
    if not values or any(m.has_wildcard(v) for v in values):
        problems.append(f"a {level} level retrieval needs {UNIQUE[level]} with the value(s) to send "
                        f"(PS3.4 C.4.2.2.1); it has {m.shown(chr(92).join(values)) or 'none'}")
    elif level == PATIENT and len(values) > 1:
        problems.append("a PATIENT level retrieval takes one PatientID")
    if problems:
        raise InvalidQuery(*problems)
    for upper in levels[:here]:
        keys.append((UNIQUE[upper], tuple(m.values_of(identifier[UNIQUE[upper]]))))
    keys.append((UNIQUE[level], values))
    return Retrieval(model, level, tuple(keys))


def _model_name(model: str) -> str:
    return "Patient Root" if model == PATIENT_ROOT else "Study Root"
