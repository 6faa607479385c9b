"""Payer policy: which CPT codes need a prior authorization, per payer.

Policies come from ``[payers.<id>]`` tables in settings.toml, each with a
``requires_auth`` list of single codes (``"70553"``) and inclusive ranges
(``"70450-70498"``). ``[payers.default]`` applies to every payer without a table
of its own; a payer may have an empty list (self-pay needs no auth).

The same tables carry the payer's deadlines (rule 7, :class:`PayerTerms`):
``report_due_days`` (days after a study is archived by which its report must be final)
and ``timely_filing_days`` (days after the exam by which the claim must be filed). A key
a payer's table leaves out is taken from ``[payers.default]``, else the built-in default;
so is ``requires_auth`` when a payer's table names only deadlines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from infra.errors import InvalidInput

DEFAULT_PAYER = "default"
_CPT = re.compile(r"^[0-9]{4}[0-9A-Z]$")


@dataclass(frozen=True)
class CodeRange:
    first: str
    last: str

    def __contains__(self, cpt: str) -> bool:
        # CPT codes are five characters of the same shape, so string order is code order.
        return self.first <= cpt <= self.last


#: Built-in deadlines when [payers.default] names none: a final report within 3 days of the
#: study, a claim within 90 days of the exam (many commercial payers; Medicare allows a year).
REPORT_DUE_DAYS = 3
TIMELY_FILING_DAYS = 90
_TERM_KEYS = ("report_due_days", "timely_filing_days")


@dataclass(frozen=True)
class PayerTerms:
    """A payer's deadlines (rule 7): days to a final report after archiving, days to file the claim."""

    report_due_days: int = REPORT_DUE_DAYS
    timely_filing_days: int = TIMELY_FILING_DAYS


@dataclass(frozen=True)
class PayerPolicy:
    """Code ranges needing an auth, and deadlines, per payer id, with a default for the rest."""

    default: tuple[CodeRange, ...] = ()
    payers: dict[str, tuple[CodeRange, ...]] = field(default_factory=dict)
    default_terms: PayerTerms = PayerTerms()
    terms: dict[str, PayerTerms] = field(default_factory=dict)

    def requires_auth(self, payer_id: str, cpt: str) -> bool:
        ranges = self.payers.get(payer_id, self.default)
        return any(cpt in r for r in ranges)

    def terms_of(self, payer_id: str) -> PayerTerms:
        """The payer's deadlines: its own table's, else [payers.default]'s."""
        return self.terms.get(payer_id, self.default_terms)


def parse_ranges(entries: list, where: str) -> tuple[CodeRange, ...]:
    """Parse ``["70553", "70450-70498"]``; raise InvalidInput naming the bad entry."""
    if not isinstance(entries, list):
        raise InvalidInput(f"{where}.requires_auth must be a list of CPT codes or ranges")
    ranges = []
    for entry in entries:
        text = str(entry).strip()
        first, dash, last = (part.strip() for part in text.partition("-"))
        last = last if dash else first
        if not (_CPT.match(first) and _CPT.match(last)) or first > last:
            raise InvalidInput(
                f"{where}.requires_auth has {entry!r}; write a CPT code like \"70553\" "
                f"or an ascending range like \"70450-70498\""
            )
        ranges.append(CodeRange(first, last))
    return tuple(ranges)


def _days(entry: dict, key: str, where: str, fallback: int) -> int:
    value = entry.get(key, fallback)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{where}.{key} must be a whole number of days, at least 1, not {value!r}")
    return value


def parse_policy(table: dict) -> PayerPolicy:
    """Build a policy from the ``[payers]`` table of settings.toml."""
    if not isinstance(table, dict):
        raise InvalidInput("must be a table of [payers.<payer id>] tables")
    for payer_id, entry in table.items():
        if not isinstance(entry, dict) or set(entry) - {"requires_auth", *_TERM_KEYS}:
            raise InvalidInput(f"payers.{payer_id} takes requires_auth = [...], report_due_days = N and "
                               f"timely_filing_days = N")
    base = table.get(DEFAULT_PAYER, {})
    default_terms = PayerTerms(*(_days(base, key, f"payers.{DEFAULT_PAYER}", getattr(PayerTerms(), key))
                                 for key in _TERM_KEYS))
    default = parse_ranges(base.get("requires_auth", []), f"payers.{DEFAULT_PAYER}")
    payers, terms = {}, {}
    for payer_id, entry in table.items():
        if payer_id == DEFAULT_PAYER:
            continue
        where = f"payers.{payer_id}"
        if "requires_auth" in entry or not set(entry) & set(_TERM_KEYS):
            payers[payer_id] = parse_ranges(entry.get("requires_auth", []), where)
        else:  # a table naming only deadlines keeps the default list
            payers[payer_id] = default
        terms[payer_id] = PayerTerms(*(_days(entry, key, where, getattr(default_terms, key)) for key in _TERM_KEYS))
    return PayerPolicy(default=default, payers=payers, default_terms=default_terms, terms=terms)
