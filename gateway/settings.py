"""Settings: parsed once from ``settings.toml`` into a frozen object and passed down.

Every setting is declared once in :data:`DECLARED` with its type, default and a help
line; ``settings.toml`` shipped with the project documents each one (a test checks
this). An error names the file and the key and says what to change.

Relative paths in the file are resolved from the file's own folder, so two copies of
the file in two folders run two independent gateways.
"""

from __future__ import annotations

import errno
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.errors import InvalidInput
from store.forwarding import Destination
from store.reconcile import ALL_CODES
from worklist.mwl_item import check_auth_attribute
from worklist.policy import PayerPolicy, parse_policy

DEFAULT_FILE = "settings.toml"
#: Environment variable naming the settings file (``--config`` wins over it).
CONFIG_ENV = "GATEKEEPER_CONFIG"
#: Environment variable that overrides ``database.url`` (handy for tests and containers).
DATABASE_URL_ENV = "GATEKEEPER_DATABASE_URL"


class SettingsError(InvalidInput):
    """The settings file is missing or wrong; the message names the file and key."""


@dataclass(frozen=True)
class Declared:
    key: str  # "section.name"
    kind: type
    default: Any
    help: str


#: Every scalar setting: key, type, default, help. Tables (payers, peers, forward) are below.
DECLARED: tuple[Declared, ...] = (
    Declared("server.ae_title", str, "GATEKEEPER", "AE title of the gatekeeper (worklist, store, MPPS, commitment)."),
    Declared("server.bind_address", str, "0.0.0.0", "Address to listen on."),
    Declared("server.port", int, 11112, "TCP port to listen on."),
    Declared("server.allowed_calling_aets", list, [], "Calling AE titles accepted; empty accepts any caller."),
    Declared("server.max_associations", int, 20, "Associations served at once; more are rejected (transient)."),
    Declared("server.network_timeout", int, 60, "Seconds of silence before an association is aborted."),
    Declared("server.associate_timeout", int, 10, "Seconds a peer has, in all, to deliver its A-ASSOCIATE-RQ after connecting."),
    Declared("server.max_associations_per_address", int, 10, "Associations at once from one network address; 0 = no cap of its own."),
    Declared("server.log_level", str, "INFO", "Logging level: DEBUG, INFO, WARNING or ERROR."),
    Declared("log.file", str, "", "Log file (relative to the settings file); empty logs to standard error only."),
    Declared("log.max_mb", int, 50, "Size (MiB) at which the log file is rotated."),
    Declared("log.keep", int, 5, "Rotated log files kept."),
    Declared("log.format", str, "text", "text (one line a record) or json (one JSON object a line)."),
    Declared("metrics.port", int, 9102, "Port of /healthz and /metrics (Prometheus); 0 = off."),
    Declared("metrics.bind_address", str, "127.0.0.1", "Address /healthz and /metrics listen on."),
    Declared("database.url", str, "sqlite:///var/gatekeeper.db", "Database: sqlite:///relative/or/absolute/path or postgresql://user@host:port/db."),
    Declared("storage.root", str, "var/store", "Folder holding archive/, held/, rejected/ and incoming/."),
    Declared("storage.rejected_retention_days", int, 30, "Days a rejected study is kept before the purge job deletes it."),
    Declared("storage.held_alert_hours", int, 48, "A held study older than this is flagged by the held-age job."),
    Declared("storage.forwarded_retention_days", int, 0, "Days after which the local copy of a study every [forward] destination has is removed; 0 = keep."),
    Declared("storage.min_free_mb", int, 1024, "Free space (MiB) kept on the storage volume; below it C-STORE is refused with 0xA700."),
    Declared("worklist.auth_attribute", str, "RequestedProcedureComments", "DICOM keyword that carries 'AUTH <number>' on the console."),
    Declared("worklist.restrict_unnamed_station_to_caller", bool, False, "A query naming no station sees only the calling AE's own items."),
    Declared("reconcile.warn_codes", list, ["STUDY_UID_MISMATCH"], "Reconciliation codes that only warn; every other code holds the study."),
    Declared("jobs.enabled", bool, True, "Run the scheduled jobs inside `gatekeeper serve`."),
    Declared("jobs.reevaluate_minutes", int, 5, "Minutes between worklist re-evaluations (one also runs just after midnight)."),
    Declared("jobs.expiring_auth_days", int, 7, "Warn of orders scheduled in the next N days whose auth will not cover them."),
    Declared("jobs.expiring_auth_hour", int, 6, "Hour of the day (0-23) the expiring-auth warning runs."),
    Declared("jobs.held_age_minutes", int, 60, "Minutes between checks for held studies older than storage.held_alert_hours."),
    Declared("jobs.purge_hour", int, 2, "Hour of the day (0-23) the rejected-study purge runs."),
)


@dataclass(frozen=True)
class Peer:
    """A remote AE the gatekeeper may call back (storage commitment reports)."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Settings:
    """All settings, resolved. Build with :func:`load`."""

    source: Path
    ae_title: str
    bind_address: str
    port: int
    allowed_calling_aets: tuple[str, ...]
    max_associations: int
    network_timeout: int
    associate_timeout: int
    max_associations_per_address: int
    log_level: str
    database_url: str
    log_file: Path | None
    log_max_mb: int
    log_keep: int
    log_format: str
    metrics_port: int
    metrics_bind_address: str
    storage_root: Path
    rejected_retention_days: int
    forwarded_retention_days: int
    held_alert_hours: int
    min_free_mb: int
    auth_attribute: str
    restrict_unnamed_station_to_caller: bool
    warn_codes: frozenset[str]
    jobs_enabled: bool
    reevaluate_minutes: int
    expiring_auth_days: int
    expiring_auth_hour: int
    held_age_minutes: int
    purge_hour: int
    policy: PayerPolicy
    peers: dict[str, Peer] = field(default_factory=dict)
    #: The ``[forward.NAME]`` archive destinations, in the file's order.
    destinations: tuple[Destination, ...] = ()


def config_path(cli_value: str | None, environ: dict[str, str] | None = None) -> Path:
    """The settings file: ``--config``, else ``$GATEKEEPER_CONFIG``, else ``./settings.toml``."""
    environ = os.environ if environ is None else environ
    return Path(cli_value or environ.get(CONFIG_ENV) or DEFAULT_FILE).resolve()


def load(path: Path, environ: dict[str, str] | None = None) -> Settings:
    """Read and check a settings file. Raises :class:`SettingsError` naming file and key."""
    environ = os.environ if environ is None else environ
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(
            f"{path}: settings file not found. Pass --config FILE, set {CONFIG_ENV}, "
            f"or run from the folder holding settings.toml."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc}). Fix the line named and start again.") from None
    return from_dict(raw, path, environ)


def from_dict(raw: dict, path: Path, environ: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from parsed TOML; ``path`` anchors relative paths and errors."""
    environ = {} if environ is None else environ
    values = _scalars(raw, path)
    folder = path.parent
    url = environ.get(DATABASE_URL_ENV) or values["database.url"]
    warn_codes = frozenset(values["reconcile.warn_codes"])
    _check_codes(warn_codes, path)
    try:
        policy = parse_policy(raw.get("payers", {}))
    except InvalidInput as exc:
        raise SettingsError(f"{path}: [payers] {exc}") from None
    for key in ("server.max_associations", "server.associate_timeout", "server.network_timeout"):
        if values[key] < 1:
            raise SettingsError(f"{path}: {key} must be at least 1, not {values[key]}; 0 would refuse every "
                                f"association or drop every connection.")
    if not 1 <= values["server.port"] <= 65535:
        raise SettingsError(f"{path}: server.port is {values['server.port']}; a TCP port is 1 to 65535 "
                            f"(11112 is the usual unprivileged DICOM port).")
    try:
        check_auth_attribute(values["worklist.auth_attribute"])
    except InvalidInput as exc:
        raise SettingsError(f"{path}: worklist.auth_attribute: {exc}.") from None
    level = values["server.log_level"].upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"{path}: server.log_level is {level!r}; use DEBUG, INFO, WARNING or ERROR.")
    for key in ("jobs.expiring_auth_hour", "jobs.purge_hour"):
        if not 0 <= values[key] <= 23:
            raise SettingsError(f"{path}: {key} must be an hour from 0 to 23, not {values[key]}.")
    return Settings(
        source=path,
        ae_title=_ae_title(values["server.ae_title"], "server.ae_title", path),
        bind_address=values["server.bind_address"],
        port=values["server.port"],
        allowed_calling_aets=tuple(
            _ae_title(a, "server.allowed_calling_aets", path) for a in values["server.allowed_calling_aets"]
        ),
        max_associations=values["server.max_associations"],
        network_timeout=values["server.network_timeout"],
        associate_timeout=values["server.associate_timeout"],
        max_associations_per_address=values["server.max_associations_per_address"],
        log_level=level,
        database_url=resolve_database_url(url, folder),
        log_file=(folder / values["log.file"]).resolve() if values["log.file"] else None,
        log_max_mb=values["log.max_mb"],
        log_keep=values["log.keep"],
        log_format=_log_format(values["log.format"], path),
        metrics_port=_port(values["metrics.port"], "metrics.port", path, allow_zero=True),
        metrics_bind_address=values["metrics.bind_address"],
        storage_root=(folder / values["storage.root"]).resolve(),
        rejected_retention_days=values["storage.rejected_retention_days"],
        forwarded_retention_days=values["storage.forwarded_retention_days"],
        held_alert_hours=values["storage.held_alert_hours"],
        min_free_mb=values["storage.min_free_mb"],
        auth_attribute=values["worklist.auth_attribute"],
        restrict_unnamed_station_to_caller=values["worklist.restrict_unnamed_station_to_caller"],
        warn_codes=warn_codes,
        jobs_enabled=values["jobs.enabled"],
        reevaluate_minutes=values["jobs.reevaluate_minutes"],
        expiring_auth_days=values["jobs.expiring_auth_days"],
        expiring_auth_hour=values["jobs.expiring_auth_hour"],
        held_age_minutes=values["jobs.held_age_minutes"],
        purge_hour=values["jobs.purge_hour"],
        policy=policy,
        peers=_peers(raw.get("peers", {}), path),
        destinations=_destinations(raw.get("forward", {}), path, default_calling=values["server.ae_title"].strip()),
    )


def _log_format(value: str, path: Path) -> str:
    if value not in ("text", "json"):
        raise SettingsError(f"{path}: log.format is {value!r}; use \"text\" or \"json\".")
    return value


def _port(value: int, key: str, path: Path, allow_zero: bool = False) -> int:
    if (allow_zero and value == 0) or 1 <= value <= 65535:
        return value
    raise SettingsError(f"{path}: {key} is {value}; a TCP port is 1 to 65535" + (" (0 = off)." if allow_zero else "."))


def port_unavailable(exc: OSError, *, setting: str, address_setting: str, address: str, port: int,
                     source: Path | str, serves: str = "", off: str = "") -> str:
    """One sentence for a port from the settings that cannot be listened on, naming the setting.

    ``serves`` says what the port is for (e.g. " for /healthz and /metrics"); ``off`` how to
    turn the listener off, when it can be.
    """
    where = f"{setting} = {port} (with {address_setting} = {address!r}) in {source}{off}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port}{serves} is already in use: stop the program that holds it, or change {where}"
    if exc.errno == errno.EACCES:
        return f"port {port}{serves} needs privileges this user lacks: use a port above 1023, or change {where}"
    return f"cannot listen on {address}:{port}{serves} ({exc.strerror or exc}): check {where}"


def resolve_database_url(url: str, folder: Path) -> str:
    """Make a relative ``sqlite:///path`` absolute from the settings file's folder."""
    if url.startswith("sqlite:///"):
        target = Path(url[len("sqlite:///"):])
        if not target.is_absolute():
            target = (folder / target).resolve()
        return f"sqlite:///{target}"
    return url


def _scalars(raw: dict, path: Path) -> dict[str, Any]:
    known_sections = {d.key.split(".")[0] for d in DECLARED} | set(TABLES)
    for section in raw:
        if section not in known_sections:
            raise SettingsError(
                f"{path}: unknown section [{section}]. Known sections: {', '.join(sorted(known_sections))}."
            )
    declared = {d.key: d for d in DECLARED}
    for section, table in raw.items():
        if section in TABLES:
            continue
        if not isinstance(table, dict):
            raise SettingsError(f"{path}: {section} must be a table ([{section}]).")
        for name in table:
            if f"{section}.{name}" not in declared:
                raise SettingsError(
                    f"{path}: unknown setting {section}.{name}. Check the spelling against the "
                    f"settings table in README.md."
                )
    values: dict[str, Any] = {}
    for d in DECLARED:
        section, name = d.key.split(".")
        value = raw.get(section, {}).get(name, d.default)
        if d.kind is int and isinstance(value, bool) or not isinstance(value, d.kind):
            raise SettingsError(
                f"{path}: {d.key} must be {d.kind.__name__}, got {value!r}. ({d.help})"
            )
        if d.kind is int and value < 0:
            raise SettingsError(f"{path}: {d.key} must not be negative, got {value}.")
        values[d.key] = value
    return values


#: Sections that are tables of named entries rather than scalar settings.
TABLES = ("payers", "peers", "forward")
#: The keys of a ``[forward.NAME]`` table: (key, type, required).
FORWARD_KEYS = (("ae_title", str, True), ("host", str, True), ("port", int, True), ("calling_ae", str, False),
                ("storage_commitment", bool, False), ("modalities", list, False))


def _destinations(raw: Any, path: Path, *, default_calling: str) -> tuple[Destination, ...]:
    """The ``[forward.NAME]`` tables: ``ae_title``, ``host``, ``port``, optional ``calling_ae``
    (default ``server.ae_title``), ``storage_commitment`` (default false) and ``modalities``."""
    example = 'ae_title = "PACS", host = "pacs.example", port = 104'
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: [forward] must hold tables [forward.NAME] with {example}.")
    found = []
    for name, entry in raw.items():
        where = f"{path}: forward.{name}"
        if not isinstance(entry, dict):
            raise SettingsError(f"{where} must be a table with {example}.")
        if not name.strip() or len(name) > 64:
            raise SettingsError(f"{where}: a destination's name is 1 to 64 characters.")
        unknown = sorted(set(entry) - {k for k, _, _ in FORWARD_KEYS})
        if unknown:
            raise SettingsError(f"{where}: unknown key {unknown[0]}; the keys are "
                                f"{', '.join(k for k, _, _ in FORWARD_KEYS)}.")
        for key, kind, required in FORWARD_KEYS:
            if key not in entry:
                if required:
                    raise SettingsError(f"{where} lacks {key}; a destination needs {example}.")
                continue
            value = entry[key]
            if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
                raise SettingsError(f"{where}.{key} must be {kind.__name__}, got {value!r}.")
        if not isinstance(entry["host"], str) or not entry["host"].strip():
            raise SettingsError(f"{where}.host is empty; name the destination's host or address.")
        modalities = entry.get("modalities", [])
        if not all(isinstance(m, str) and m.strip() for m in modalities):
            raise SettingsError(f"{where}.modalities must list modality codes such as \"CT\", \"MR\".")
        found.append(Destination(
            name=name, ae_title=_ae_title(entry["ae_title"], f"forward.{name}.ae_title", path),
            host=entry["host"].strip(), port=_port(entry["port"], f"forward.{name}.port", path),
            calling_ae=_ae_title(entry.get("calling_ae", default_calling), f"forward.{name}.calling_ae", path),
            storage_commitment=entry.get("storage_commitment", False),
            modalities=frozenset(m.strip().upper() for m in modalities)))
    return tuple(found)


def _ae_title(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > 16 or "\\" in value:
        raise SettingsError(f"{path}: {key} has {value!r}; an AE title is 1 to 16 characters, no backslash.")
    return value.strip()


def _check_codes(codes: frozenset[str], path: Path) -> None:
    unknown = sorted(codes - ALL_CODES)
    if unknown:
        raise SettingsError(
            f"{path}: reconcile.warn_codes names unknown codes {unknown}. Known: {', '.join(sorted(ALL_CODES))}."
        )


def _peers(raw: Any, path: Path) -> dict[str, Peer]:
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: [peers] must be a table of AE title = {{ host = ..., port = ... }}.")
    peers = {}
    for ae, entry in raw.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("host"), str) or not isinstance(entry.get("port"), int):
            raise SettingsError(f"{path}: peers.{ae} must be {{ host = \"name\", port = 104 }}.")
        peers[_ae_title(ae, f"peers.{ae}", path)] = Peer(ae, entry["host"], entry["port"])
    return peers
