"""Studies received per day and how many matched their order cleanly: the dashboard's line.

:func:`clean_by_day` is pure (plain facts in, counts out); :func:`load_clean_by_day` reads
the facts from the index, as :func:`store.report.load_report` does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Iterable

from store.report import StudyFact


@dataclass(frozen=True)
class Day:
    day: dt.date
    received: int
    clean: int

    @property
    def rate(self) -> float | None:
        return round(self.clean / self.received, 4) if self.received else None


def clean_by_day(studies: Iterable[StudyFact], since: dt.date, until: dt.date) -> list[Day]:
    """One :class:`Day` for every day from ``since`` to ``until`` (inclusive), by first receipt."""
    received: dict[dt.date, int] = {}
    clean: dict[dt.date, int] = {}
    for s in studies:
        day = s.first_received_at.date()
        received[day] = received.get(day, 0) + 1
        clean[day] = clean.get(day, 0) + s.clean
    days, day = [], since
    while day <= until:
        days.append(Day(day, received.get(day, 0), clean.get(day, 0)))
        day += dt.timedelta(days=1)
    return days


def load_clean_by_day(index, since: dt.date, today: dt.date) -> list[Day]:
    start = dt.datetime.combine(since, dt.time.min)
    facts = [StudyFact(r.study_instance_uid, r.state, r.first_received_at, r.state_changed_at, r.held_at, codes)
             for r, codes in index.studies_since(start)]
    return clean_by_day(facts, since, today)
