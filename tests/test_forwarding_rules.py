"""Rule 10 of docs/rules.md as pure functions (store/forwarding.py): what is queued for whom,
what queueing again does, the back-off, the transfer syntaxes offered, what a C-STORE status
means, and when a forwarded study's local copy may go. Table-driven, edges included."""

from __future__ import annotations

import datetime as dt

import pytest

from store import forwarding as rules
from store.forwarding import COMMITTED, FAILED, PENDING, SENT, Destination, QueueItem

PACS = Destination("PACS", "PACS", "pacs", 104, "GATEKEEPER", storage_commitment=True)
VNA = Destination("VNA", "VNA", "vna", 104, "GATEKEEPER")
CT_ONLY = Destination("CT", "CTARCH", "ct", 104, "GATEKEEPER", modalities=frozenset({"CT", "PT"}))
NOW = dt.datetime(2026, 12, 2, 9, 0)


@pytest.mark.parametrize("destination, modality, received_from, corrected, wanted", [
    (VNA, "MR", "MR1", False, True),
    (VNA, "", "", False, True),  # no modality, no sender: an unfiltered destination takes it
    (CT_ONLY, "CT", "CT1", False, True),
    (CT_ONLY, "ct", "CT1", False, True),  # case does not matter
    (CT_ONLY, " PT ", "PET1", False, True),
    (CT_ONLY, "MR", "MR1", False, False),
    (CT_ONLY, "", "MR1", False, False),  # a filter needs a modality
    (PACS, "MR", "PACS", False, False),  # loop: clean or released from the PACS stays
    (PACS, "MR", "PACS", True, True),  # corrected: the PACS gets the corrected instances
    (PACS, "MR", "PACS ", False, False),  # padded AE title is the same AE
    (PACS, "MR", "PACS2", False, True),  # another AE title
    (VNA, "MR", "PACS", False, True),  # the loop rule is per destination
    (CT_ONLY, "MR", "CTARCH", True, False),  # a correction does not lift the modality filter
])
def test_wants(destination, modality, received_from, corrected, wanted):
    assert rules.wants(destination, modality=modality, received_from=received_from, corrected=corrected) is wanted


@pytest.mark.parametrize("current, changed, action", [
    (None, False, rules.INSERT),
    (None, True, rules.INSERT),
    (PENDING, False, rules.KEEP),  # keeps its attempts and back-off
    (PENDING, True, rules.RESET),  # new content: from attempt 0, new generation
    (SENT, False, rules.KEEP),  # released again: not sent twice
    (SENT, True, rules.RESET),  # corrected after forwarding: sent again
    (COMMITTED, False, rules.KEEP),
    (COMMITTED, True, rules.RESET),
    (FAILED, False, rules.RESET),  # archived again: a new chance
    (FAILED, True, rules.RESET),
])
def test_enqueue_action(current, changed, action):
    assert rules.enqueue_action(current, changed=changed) == action


@pytest.mark.parametrize("attempts, seconds", [
    (0, 0), (1, 10), (2, 20), (3, 40), (4, 80), (9, 2560), (10, 3600), (11, 3600), (29, 3600), (400, 3600),
])
def test_backoff_grows_to_an_hour(attempts, seconds):
    assert rules.backoff_seconds(attempts) == seconds


@pytest.mark.parametrize("attempts, expected", [
    (1, NOW + dt.timedelta(seconds=10)),
    (rules.MAX_ATTEMPTS - 1, NOW + dt.timedelta(seconds=3600)),
    (rules.MAX_ATTEMPTS, None),  # given up: failed
    (rules.MAX_ATTEMPTS + 1, None),
])
def test_next_attempt(attempts, expected):
    assert rules.next_attempt(NOW, attempts) == expected


def test_next_attempt_with_a_smaller_limit():
    assert rules.next_attempt(NOW, 2, max_attempts=3) is not None and rules.next_attempt(NOW, 3, max_attempts=3) is None


@pytest.mark.parametrize("stored, offered", [
    ("1.2.840.10008.1.2.4.50", ["1.2.840.10008.1.2.4.50", rules.EXPLICIT_LE, rules.IMPLICIT_LE]),
    (rules.EXPLICIT_LE, [rules.EXPLICIT_LE, rules.IMPLICIT_LE]),
    (rules.IMPLICIT_LE, [rules.IMPLICIT_LE, rules.EXPLICIT_LE]),
    (rules.EXPLICIT_BE, [rules.EXPLICIT_BE, rules.EXPLICIT_LE, rules.IMPLICIT_LE]),
    ("", [rules.EXPLICIT_LE, rules.IMPLICIT_LE]),
])
def test_offered_syntaxes_put_the_stored_one_first(stored, offered):
    assert rules.offered_syntaxes(stored) == offered


@pytest.mark.parametrize("stored, accepted, ok", [
    (rules.EXPLICIT_LE, rules.EXPLICIT_LE, True),
    (rules.EXPLICIT_LE, rules.IMPLICIT_LE, True),
    (rules.IMPLICIT_LE, rules.EXPLICIT_LE, True),
    ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.50", True),
    ("1.2.840.10008.1.2.4.50", rules.EXPLICIT_LE, False),  # never decompressed
    (rules.EXPLICIT_LE, "1.2.840.10008.1.2.4.50", False),  # never compressed
])
def test_can_convert(stored, accepted, ok):
    assert rules.can_convert(stored, accepted) is ok


@pytest.mark.parametrize("status, outcome", [
    (0x0000, rules.DONE), (0xB000, rules.DONE), (0xB006, rules.DONE), (0xB007, rules.DONE),
    (None, rules.RETRY), (0xA700, rules.RETRY), (0xA7FF, rules.RETRY), (0xA900, rules.RETRY),
    (0xC000, rules.RETRY), (0x0110, rules.RETRY), (0x0122, rules.RETRY), (0xFF00, rules.RETRY),
])
def test_outcome_of_status(status, outcome):
    assert rules.outcome_of_status(status) == outcome


DESTS = {"PACS": PACS, "VNA": VNA}
DAY = dt.timedelta(days=1)


def items(pacs=(COMMITTED, NOW - 8 * DAY), vna=(SENT, NOW - 8 * DAY), sops=("1", "2")):
    out = []
    for sop in sops:
        if pacs:
            out.append(QueueItem(sop, "PACS", pacs[0], pacs[1]))
        if vna:
            out.append(QueueItem(sop, "VNA", vna[0], vna[1]))
    return out


@pytest.mark.parametrize("case, kwargs, due", [
    ("all done 8 days ago", dict(), True),
    ("exactly 7 days", dict(items=items(pacs=(COMMITTED, NOW - 7 * DAY))), True),
    ("a second short of 7 days", dict(items=items(pacs=(COMMITTED, NOW - 7 * DAY + dt.timedelta(seconds=1)))), False),
    ("retention off", dict(days=0), False),
    ("held study", dict(study_state="held"), False),
    ("rejected study", dict(study_state="rejected"), False),
    ("commitment destination only sent", dict(items=items(pacs=(SENT, NOW - 8 * DAY))), False),
    ("plain destination committed counts", dict(items=items(vna=(COMMITTED, NOW - 8 * DAY))), True),
    ("one pending", dict(items=items(vna=(PENDING, None))), False),
    ("one failed", dict(items=items(vna=(FAILED, NOW - 8 * DAY))), False),
    ("an instance queued nowhere", dict(instances=["1", "2", "3"]), False),
    ("no queue rows", dict(items=[]), False),
    ("no instances", dict(instances=[]), False),
    ("a destination removed from settings no longer counts",
     dict(items=items(vna=(PENDING, None)), destinations={"PACS": PACS}), True),
    ("only removed destinations", dict(destinations={}), False),
    ("done time unknown", dict(items=items(vna=(SENT, None))), False),
])
def test_retention_due(case, kwargs, due):
    args = dict(study_state="archived", instances=["1", "2"], items=items(), destinations=DESTS, now=NOW, days=7)
    args.update(kwargs)
    assert rules.retention_due(**args) is due, case


def test_done_state():
    assert (PACS.done_state(), VNA.done_state()) == (COMMITTED, SENT)
