"""The gatekeeper's clock: local time without an offset, as the RIS schedules.

The core never reads the wall clock itself: every use case is given a clock (a
function returning the time) by its front end, so tests and drills can fix it.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Callable, Mapping

from infra.errors import InvalidInput

#: A function returning the current local time.
Clock = Callable[[], dt.datetime]

#: A fixed local time (YYYY-MM-DDTHH:MM:SS) for drills and tests: the gateway then decides
#: the worklist as of that moment instead of the wall clock.
NOW_ENV = "GATEKEEPER_NOW"


def wall_clock() -> dt.datetime:
    """Local time without an offset, to the second."""
    return dt.datetime.now().replace(microsecond=0)


def fixed_clock(moment: dt.datetime) -> Clock:
    """A clock that always says ``moment``."""
    return lambda: moment


def clock_from_env(environ: Mapping[str, str] | None = None) -> Clock:
    """The wall clock, or the fixed time in ``$GATEKEEPER_NOW``.

    Raises :class:`InvalidInput` naming the variable when its value is not a local date-time.
    """
    environ = os.environ if environ is None else environ
    fixed = environ.get(NOW_ENV)
    if not fixed:
        return wall_clock
    try:
        moment = dt.datetime.fromisoformat(fixed)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is not None:
        raise InvalidInput(f"{NOW_ENV}={fixed!r} is not a local date-time; write YYYY-MM-DDTHH:MM:SS "
                           f"(no offset), or unset {NOW_ENV} to use the wall clock")
    return fixed_clock(moment)
