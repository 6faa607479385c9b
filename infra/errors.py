"""The errors the core raises, one hierarchy for every front end.

The worklist and the store raise these (or a named subclass, such as
:class:`worklist.intake.IntakeError`); each front end turns them into its own answer in
one place: the DICOM server in :mod:`gateway.dicom.status`, the command line in
:mod:`gateway.cli.main` (exit codes). A message says what happened and what to do next;
it never carries a patient's name or birth date.
"""

from __future__ import annotations


class GatekeeperError(Exception):
    """Something the gatekeeper would not or could not do; nothing was changed."""


class InvalidInput(GatekeeperError):
    """A file, argument or request is malformed or incomplete; the message names what to fix."""


class MissingValue(InvalidInput):
    """A value the request must carry is absent (DICOM: a missing type 1 attribute)."""


class Undecodable(InvalidInput):
    """The input cannot be read at all (not DICOM, not UTF-8, malformed UIDs)."""


class NotFound(GatekeeperError):
    """No order, auth, study, step or job has that identifier."""


class AlreadyExists(GatekeeperError):
    """Something with that identifier exists already and may not be created again."""


class WrongState(GatekeeperError):
    """The thing exists but its state does not allow the action (a study not held, a step ended)."""


class Refused(GatekeeperError):
    """The action is not allowed as asked: it is unsafe, or needs a confirmation it lacks."""


class NotAuthorized(GatekeeperError):
    """The caller may not do this (an MPPS for another station's order); ``rule`` names the setting."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule


class NotSupported(GatekeeperError):
    """The action asked for is not one the gatekeeper offers."""


class OutOfResources(GatekeeperError):
    """Disk full, quota, memory or file descriptors: trying again later may succeed."""


class StorageFailure(GatekeeperError):
    """The storage volume or the database refused a write or a read (permissions, I/O error)."""
