"""Where the logs go and how each line looks (``[log]`` in settings.toml).

:func:`configure` replaces ``logging.basicConfig``:

- without ``log.file``, every record at ``server.log_level`` and above goes to standard
  error (a service manager such as systemd keeps it);
- with ``log.file``, a :class:`~logging.handlers.RotatingFileHandler` gets every record at
  ``server.log_level`` and above, rotated at ``log.max_mb`` MiB into ``.1`` to
  ``.<log.keep>`` (older ones deleted), and standard error gets WARNING and above;
- ``log.format = "json"`` writes one JSON object a line: ``time``, ``level``, ``logger``,
  ``message`` and, when the record carries them, :data:`FIELDS` (``association``,
  ``calling_ae``, ``operation``, ``status``, ``duration_ms``), plus ``exception`` with a
  traceback. The DICOM handlers pass those fields as ``extra=`` (:func:`operation`) on
  their one summary line per operation; they never carry a patient's name or ID.

Calling :func:`configure` again replaces the handlers it installed before (tests, a reload)
and leaves other handlers of the root logger alone. As ``logging.basicConfig`` did, it adds
no standard-error handler when the root logger already has handlers of someone else's (a
program embedding the gateway, pytest): only the file, when one is set.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import logging.handlers
import sys

#: The optional fields of a JSON line, in the order they are written.
FIELDS = ("association", "calling_ae", "operation", "status", "duration_ms")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Marks the handlers :func:`configure` installed, so a second call replaces them.
_MARK = "_gatekeeper_handler"

_association_ids = itertools.count(1)


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (local, ISO 8601 with offset), level, logger, message, fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": dt.datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record comes (as logging's last resort does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def configure(settings, *, service: bool = True) -> list[logging.Handler]:
    """Install the gateway's log handlers on the root logger; return them.

    ``service`` (``gatekeeper serve``) honours ``log.file`` and ``log.format``; the other
    commands log as text to standard error only, as a person at a terminal reads them, and
    never write the service's file (two processes rotating one file would mangle it).

    As ``logging.basicConfig`` did, standard error is left to whoever configured the root
    logger already (a program embedding the gateway, the test runner): then only the file
    is added. Raises :class:`OSError` when the log file cannot be opened.
    """
    root = logging.getLogger()
    remove_handlers()
    configured_elsewhere = bool(root.handlers)
    formatter = JsonFormatter() if service and settings.log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handlers: list[logging.Handler] = []
    stderr = _Stderr()
    if service and settings.log_file is not None:
        path = settings.log_file
        path.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(
            path, maxBytes=int(settings.log_max_mb * 1024 * 1024), backupCount=settings.log_keep, encoding="utf-8")
        to_file.setLevel(settings.log_level)
        handlers.append(to_file)
        stderr.setLevel(logging.WARNING)
    if not configured_elsewhere:
        handlers.append(stderr)
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    if handlers:
        root.setLevel(settings.log_level)
    return handlers


def remove_handlers() -> None:
    """Remove (and close) the handlers :func:`configure` installed; other handlers stay."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()


def association_id(assoc) -> int:
    """A number naming ``assoc`` in the logs, the same for all its lines (unique in this process)."""
    value = getattr(assoc, "gk_log_id", None)
    if value is None:
        value = assoc.gk_log_id = next(_association_ids)
    return value


def operation(assoc, name: str, status: int | None = None, seconds: float | None = None) -> dict:
    """The ``extra=`` of an operation's summary line: association, calling AE, operation, status, duration.

    ``status`` is written as in DICOM, ``"0x0000"``; ``seconds`` as ``duration_ms``.
    """
    fields = {"association": association_id(assoc), "calling_ae": assoc.requestor.ae_title, "operation": name}
    if status is not None:
        fields["status"] = f"0x{status:04X}"
    if seconds is not None:
        fields["duration_ms"] = round(seconds * 1000, 1)
    return fields
