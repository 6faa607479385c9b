"""Payer policy: which CPT codes need a prior authorization, per payer.

Policies come from ``[payers.<id>]`` tables in settings.toml, each with a
``requires_auth`` list of single codes (``"70553"``) and inclusive ranges
(``"70450-70498"``). ``[payers.default]`` applies to every payer without a table
of its own; a payer may have an empty list (self-pay needs no auth).
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


@dataclass(frozen=True)
class PayerPolicy:
    """Code ranges needing an auth, per payer id, with a default for the rest."""

    default: tuple[CodeRange, ...] = ()
    payers: dict[str, tuple[CodeRange, ...]] = field(default_factory=dict)

    def requires_auth(self, payer_id: str, cpt: str) -> bool:
        ranges = self.payers.get(payer_id, self.default)
        return any(cpt in r for r in ranges)


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


def parse_policy(table: dict) -> PayerPolicy:
    """Build a policy from the ``[payers]`` table of settings.toml."""
    if not isinstance(table, dict):
        raise InvalidInput("must be a table of [payers.<payer id>] tables")
    payers = {}
    for payer_id, entry in table.items():
        if not isinstance(entry, dict) or set(entry) - {"requires_auth"}:
            raise InvalidInput(f"payers.{payer_id} takes one key, requires_auth = [...]")
        payers[payer_id] = parse_ranges(entry.get("requires_auth", []), f"payers.{payer_id}")
    default = payers.pop(DEFAULT_PAYER, ())
    return PayerPolicy(default=default, payers=payers)
