"""Errors the command line turns into an exit code and a message for the operator."""


class Refused(Exception):
    """An action cannot be done (unknown order or study, wrong state); nothing changed."""


class BadInput(Exception):
    """Input was rejected whole (a file, an argument); the message names what to fix."""
