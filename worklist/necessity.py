"""Medical necessity policies (rule 7 of docs/rules.md): which diagnoses justify which CPT codes.

A policy names a payer, the CPT codes it applies to (single codes and inclusive ranges,
as in the payer policy of settings.toml) and the ICD-10-CM codes that justify them, as
prefixes: ``G43`` covers ``G43.909``; dots are ignored on both sides, so ``R51.9``,
``R519`` and ``R51.90`` all fall under ``R51.9``. A prefix covers itself and every longer
code that starts with it, never a shorter one (``R51.9`` does not cover ``R51``).

The check lives in :func:`worklist.gating.decide` (reason codes ``DIAGNOSIS_MISSING`` and
``DIAGNOSIS_NOT_COVERED``); this module only says which policies apply to an order and
whether a diagnosis is covered. Pure: no database, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from worklist.orders import Order
from worklist.policy import CodeRange


def icd10_key(code: str) -> str:
    """A diagnosis code as compared: capitals, no dots, no spaces (``g43.909`` -> ``G43909``)."""
    return code.replace(".", "").replace(" ", "").upper()


@dataclass(frozen=True)
class NecessityPolicy:
    """For ``payer_id`` and the CPT codes in ``cpt``, the ICD-10-CM prefixes that justify the exam.

    ``cpt`` keeps the entries as written (``"70551-70553"``) for listing; :attr:`ranges`
    is what is matched.
    """

    payer_id: str
    cpt: tuple[str, ...]
    covered_icd10: tuple[str, ...]

    @property
    def ranges(self) -> tuple[CodeRange, ...]:
        found = []
        for entry in self.cpt:
            first, dash, last = entry.partition("-")
            found.append(CodeRange(first.strip(), (last if dash else first).strip()))
        return tuple(found)

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """What makes two policies the same one (a file may not give it twice)."""
        return self.payer_id, self.cpt

    def applies_to(self, payer_id: str, cpt: str) -> bool:
        return payer_id == self.payer_id and any(cpt in r for r in self.ranges)

    def covers(self, diagnosis: str) -> bool:
        """True when ``diagnosis`` starts with one of the covered prefixes (dots ignored)."""
        code = icd10_key(diagnosis)
        return any(code.startswith(icd10_key(prefix)) for prefix in self.covered_icd10)


def applicable(order: Order, policies: Iterable[NecessityPolicy]) -> tuple[NecessityPolicy, ...]:
    """The policies for the order's payer whose CPT codes include the order's."""
    return tuple(p for p in policies if p.applies_to(order.payer_id, order.cpt))


def covering(order: Order, policies: Iterable[NecessityPolicy]) -> tuple[str, ...]:
    """The order's diagnoses that some applicable policy covers (empty when none does).

    Several policies may apply to one order (a payer lists 70553 in two policies): a
    diagnosis covered by any one of them justifies the exam.
    """
    found = applicable(order, policies)
    return tuple(d for d in order.diagnoses if any(p.covers(d) for p in found))
