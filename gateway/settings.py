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
from infra.syslog import facility_code
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
    Declared("server.extra_ae_titles", list, [], "More called AE titles answered besides server.ae_title."),
    Declared("server.check_called_ae", bool, True, "Reject associations whose called AE title is not ours (reason 7)."),
    Declared("server.unknown_aets", str, "echo-and-store", "Calling AEs not under [modalities]: allow, echo-and-store or refuse."),
    Declared("server.tls_port", int, 2762, "TCP port of DICOM TLS (PS3.15 B.9, BCP 195); listens when tls_cert is set."),
    Declared("server.tls_cert", str, "", "PEM certificate (chain) of the TLS port; empty: no TLS."),
    Declared("server.tls_key", str, "", "PEM private key of server.tls_cert (unencrypted)."),
    Declared("server.tls_ca", str, "", "PEM CA certificates; when set, TLS clients must show a certificate signed by one."),
    Declared("server.max_associations", int, 20, "Associations served at once; more are rejected (transient)."),
    Declared("server.network_timeout", int, 60, "Seconds of silence before an association is aborted."),
    Declared("server.associate_timeout", int, 10, "Seconds a peer has, in all, to deliver its A-ASSOCIATE-RQ after connecting."),
    Declared("server.workers", int, 0, "Processes receiving DICOM on server.port (the main process hands each connection to the least-loaded); 0 = one per core; 1 = the main process alone."),
    Declared("server.max_associations_per_address", int, 10, "Associations at once from one network address; 0 = no cap of its own."),
    Declared("server.log_level", str, "INFO", "Logging level: DEBUG, INFO, WARNING or ERROR."),
    Declared("log.file", str, "", "Log file (relative to the settings file); empty logs to standard error only."),
    Declared("log.max_mb", int, 50, "Size (MiB) at which the log file is rotated."),
    Declared("log.keep", int, 5, "Rotated log files kept."),
    Declared("log.format", str, "text", "text (one line a record) or json (one JSON object a line)."),
    Declared("metrics.port", int, 9102, "Port of /healthz and /metrics (Prometheus); 0 = off."),
    Declared("metrics.bind_address", str, "127.0.0.1", "Address /healthz and /metrics listen on."),
    Declared("http.port", int, 8080, "Port of the review desk (web pages) and the HTTP API; 0 = off."),
    Declared("http.bind_address", str, "127.0.0.1", "Address the review desk and the API listen on."),
    Declared("http.tls_cert", str, "", "PEM certificate (relative to the settings file) to serve HTTPS; empty: plain HTTP."),
    Declared("http.tls_key", str, "", "PEM private key of http.tls_cert."),
    Declared("http.session_hours", int, 12, "Hours a review desk login lasts before the user logs in again."),
    Declared("database.url", str, "sqlite:///var/gatekeeper.db", "Database: sqlite:///relative/or/absolute/path or postgresql://user@host:port/db."),
    Declared("storage.root", str, "var/store", "Folder holding archive/, held/, rejected/ and incoming/."),
    Declared("storage.rejected_retention_days", int, 30, "Days a rejected study is kept before the purge job deletes it."),
    Declared("storage.held_alert_hours", int, 48, "A held study older than this is flagged by the held-age job."),
    Declared("storage.forwarded_retention_days", int, 0, "Days after which the local copy of a study every [forward] destination has is removed; 0 = keep."),
    Declared("storage.min_free_mb", int, 1024, "Free space (MiB) kept on the storage volume; below it C-STORE is refused with 0xA700."),
    Declared("mpps.any_station_aets", list, [], "Calling AEs allowed to send MPPS for orders scheduled on another station."),
    Declared("worklist.auth_attribute", str, "RequestedProcedureComments", "DICOM keyword that carries 'AUTH <number>' on the console."),
    Declared("worklist.restrict_unnamed_station_to_caller", bool, False, "A query naming no station sees only the calling AE's own items."),
    Declared("worklist.complete_without_mpps_minutes", int, 60, "Minutes after its study is archived that an order no MPPS reported is completed from the images."),
    Declared("reconcile.warn_codes", list, ["STUDY_UID_MISMATCH", "POSSIBLE_DUPLICATE_ORDER"], "Reconciliation codes that only warn; every other code holds the study."),
    Declared("jobs.enabled", bool, True, "Run the scheduled jobs inside `gatekeeper serve`."),
    Declared("jobs.reevaluate_minutes", int, 5, "Minutes between worklist re-evaluations (one also runs just after midnight)."),
    Declared("jobs.expiring_auth_days", int, 7, "Warn of orders scheduled in the next N days whose auth will not cover them."),
    Declared("jobs.expiring_auth_hour", int, 6, "Hour of the day (0-23) the expiring-auth warning runs."),
    Declared("jobs.held_age_minutes", int, 60, "Minutes between checks for held studies older than storage.held_alert_hours."),
    Declared("jobs.purge_hour", int, 2, "Hour of the day (0-23) the rejected-study purge runs."),
    Declared("jobs.complete_check_minutes", int, 5, "Minutes between checks for orders whose images arrived without MPPS; 0 = by hand only."),
    Declared("jobs.report_watch_hour", int, 7, "Hour of the day (0-23) the report and timely-filing watch runs."),
    Declared("jobs.filing_alert_days", int, 14, "Flag exams whose claim deadline is this many days away or less while the report is not final."),
    Declared("qr.include_held", bool, False, "Let the AE titles of qr.held_viewers query and retrieve held studies too."),
    Declared("qr.held_viewers", list, [], "AE titles that see held studies when qr.include_held is true."),
    Declared("hl7.port", int, 2575, "TCP port of the HL7 v2 (MLLP) listener for the RIS feed; 0 = off."),
    Declared("hl7.bind_address", str, "0.0.0.0", "Address the MLLP listener listens on."),
    Declared("hl7.allowed_senders", list, [], "Senders accepted, \"APPLICATION^FACILITY\" (MSH-3^MSH-4); empty accepts any."),
    Declared("hl7.processing_ids", list, ["P"], "Processing IDs (MSH-11) taken; another is refused (AR 202)."),
    Declared("hl7.charset", str, "UNICODE UTF-8", "Character set of a message with an empty MSH-18: UNICODE UTF-8, 8859/1 or ASCII."),
    Declared("hl7.patient_id_authority", str, "", "Assigning authority (PID-3 CX-4) of the patient ID used; empty = first repetition."),
    Declared("hl7.default_facility_npi", str, "", "Facility NPI of an order whose ORC-21 has none; empty requires ORC-21."),
    Declared("hl7.max_message_bytes", int, 1_048_576, "Largest MLLP message read; a larger one closes the connection."),
)

#: HL7 character sets (MSH-18) the feed reads, with their Python codecs.
HL7_CHARSETS = {"UNICODE UTF-8": "utf-8", "8859/1": "latin-1", "ASCII": "ascii"}


@dataclass(frozen=True)
class Peer:
    """A remote AE the gatekeeper may call back (storage commitment reports)."""

    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class Modality:
    """A known modality of ``[modalities.AE]``: where it may call from and which services it may use."""

    ae_title: str
    host: str | None = None  # None: any address
    services: frozenset[str] | None = None  # None: every service; empty: none


#: The DICOM services a modality may be granted (``[modalities.AE] services``).
SERVICE_NAMES = ("echo", "worklist", "mpps", "store", "commitment", "qr")
#: The values of ``server.unknown_aets``.
UNKNOWN_AET_MODES = ("allow", "echo-and-store", "refuse")


@dataclass(frozen=True)
class AuditSyslog:
    """``[audit.syslog]``: where the audit trail goes as DICOM audit messages (RFC 5424 syslog)."""

    host: str
    port: int
    transport: str  # "udp" (RFC 5426) or "tls" (RFC 5425)
    ca: Path | None  # TLS: the CA that signs the collector's certificate (None: the system's CAs)
    cert: Path | None  # TLS: the gatekeeper's client certificate, when the collector asks for one
    key: Path | None
    app_name: str
    facility: int
    site: str  # AuditEnterpriseSiteID; empty leaves it out
    poll_seconds: float
    retry_max_seconds: float


#: ``[audit.syslog]`` keys: type(s), default, help. ``host`` empty = the trail is not sent.
AUDIT_SYSLOG_KEYS: dict[str, tuple[tuple[type, ...], Any, str]] = {
    "host": ((str,), "", "Collector's host name or address; empty sends nothing."),
    "port": ((int,), 0, "Collector's port; 0 = 514 for udp, 6514 for tls."),
    "transport": ((str,), "udp", "udp (RFC 5426, best effort) or tls (RFC 5425)."),
    "ca": ((str,), "", "TLS: CA certificate (PEM) the collector's certificate must chain to; empty = system CAs."),
    "cert": ((str,), "", "TLS: client certificate (PEM) for a collector that asks for one."),
    "key": ((str,), "", "TLS: the client certificate's private key (PEM)."),
    "app_name": ((str,), "gatekeeper", "APP-NAME of the syslog messages."),
    "facility": ((str, int), "authpriv", "Syslog facility: a name (authpriv, local0 ...) or a number 0 to 23."),
    "site": ((str,), "", "AuditEnterpriseSiteID of the messages; empty leaves it out."),
    "poll_seconds": ((int, float), 2, "Seconds between looks at the audit log for new events."),
    "retry_max_seconds": ((int, float), 60, "Longest wait between two attempts while the collector is unreachable."),
}


@dataclass(frozen=True)
class Settings:
    """All settings, resolved. Build with :func:`load`."""

    source: Path
    ae_title: str
    bind_address: str
    port: int
    extra_ae_titles: tuple[str, ...]
    check_called_ae: bool
    unknown_aets: str
    tls_port: int
    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None
    any_station_aets: frozenset[str]
    max_associations: int
    network_timeout: int
    associate_timeout: int
    max_associations_per_address: int
    log_level: str
    workers: int
    database_url: str
    log_file: Path | None
    log_max_mb: int
    log_keep: int
    log_format: str
    metrics_port: int
    metrics_bind_address: str
    http_port: int
    http_bind_address: str
    http_tls_cert: Path | None
    http_tls_key: Path | None
    http_session_hours: int
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
    complete_without_mpps_minutes: int = 60
    complete_check_minutes: int = 5
    report_watch_hour: int = 7
    filing_alert_days: int = 14
    peers: dict[str, Peer] = field(default_factory=dict)
    modalities: dict[str, Modality] = field(default_factory=dict)
    audit_syslog: AuditSyslog | None = None  # None: the audit trail is not sent
    qr_include_held: bool = False
    qr_held_viewers: tuple[str, ...] = ()
    hl7_port: int = 0
    hl7_bind_address: str = "0.0.0.0"
    #: (MSH-3, MSH-4) pairs accepted; a facility of "" accepts any facility of that application.
    hl7_allowed_senders: tuple[tuple[str, str], ...] = ()
    hl7_processing_ids: tuple[str, ...] = ("P",)
    hl7_charset: str = "UNICODE UTF-8"
    hl7_patient_id_authority: str = ""
    hl7_default_facility_npi: str = ""
    hl7_max_message_bytes: int = 1_048_576
    #: ``[hl7.stations]``: "MODALITY" or "MODALITY@LOCATION" -> station AE title.
    hl7_stations: dict[str, str] = field(default_factory=dict)
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
    if values["server.workers"] < 0:
        raise SettingsError(f"{path}: server.workers is {values['server.workers']}; it is 1 (the main process "
                            f"receives), more (that many receiving processes) or 0 (one per core).")
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
    for key in ("jobs.expiring_auth_hour", "jobs.purge_hour", "jobs.report_watch_hour"):
        if not 0 <= values[key] <= 23:
            raise SettingsError(f"{path}: {key} must be an hour from 0 to 23, not {values[key]}.")
    tls = {key: (folder / values[key]).resolve() if values[key] else None
           for key in ("server.tls_cert", "server.tls_key", "server.tls_ca")}
    if bool(tls["server.tls_cert"]) != bool(tls["server.tls_key"]):
        raise SettingsError(f"{path}: server.tls_cert and server.tls_key go together: set both (the TLS port "
                            f"listens) or neither (no TLS).")
    if tls["server.tls_ca"] and not tls["server.tls_cert"]:
        raise SettingsError(f"{path}: server.tls_ca is set but server.tls_cert is not; the CA only matters on the "
                            f"TLS port: set server.tls_cert and server.tls_key too, or empty server.tls_ca.")
    if tls["server.tls_cert"] and values["server.tls_port"] == values["server.port"]:
        raise SettingsError(f"{path}: server.tls_port and server.port are both {values['server.port']}; "
                            f"TLS needs a port of its own (2762 is the registered DICOM TLS port).")
    return Settings(
        source=path,
        ae_title=_ae_title(values["server.ae_title"], "server.ae_title", path),
        bind_address=values["server.bind_address"],
        port=values["server.port"],
        extra_ae_titles=tuple(_ae_title(a, "server.extra_ae_titles", path) for a in values["server.extra_ae_titles"]),
        check_called_ae=values["server.check_called_ae"],
        unknown_aets=_unknown_aets(values["server.unknown_aets"], path),
        tls_port=_port(values["server.tls_port"], "server.tls_port", path),
        tls_cert=tls["server.tls_cert"],
        tls_key=tls["server.tls_key"],
        tls_ca=tls["server.tls_ca"],
        any_station_aets=frozenset(_ae_title(a, "mpps.any_station_aets", path) for a in values["mpps.any_station_aets"]),
        max_associations=values["server.max_associations"],
        network_timeout=values["server.network_timeout"],
        associate_timeout=values["server.associate_timeout"],
        max_associations_per_address=values["server.max_associations_per_address"],
        workers=values["server.workers"] or (os.cpu_count() or 1),
        log_level=level,
        database_url=resolve_database_url(url, folder),
        log_file=(folder / values["log.file"]).resolve() if values["log.file"] else None,
        log_max_mb=values["log.max_mb"],
        log_keep=values["log.keep"],
        log_format=_log_format(values["log.format"], path),
        metrics_port=_port(values["metrics.port"], "metrics.port", path, allow_zero=True),
        metrics_bind_address=values["metrics.bind_address"],
        http_port=_port(values["http.port"], "http.port", path, allow_zero=True),
        http_bind_address=values["http.bind_address"],
        http_tls_cert=(folder / values["http.tls_cert"]).resolve() if values["http.tls_cert"] else None,
        http_tls_key=(folder / values["http.tls_key"]).resolve() if values["http.tls_key"] else None,
        http_session_hours=_http_session_hours(values, path),
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
        complete_without_mpps_minutes=values["worklist.complete_without_mpps_minutes"],
        complete_check_minutes=values["jobs.complete_check_minutes"],
        report_watch_hour=values["jobs.report_watch_hour"],
        filing_alert_days=values["jobs.filing_alert_days"],
        peers=_peers(raw.get("peers", {}), path),
        modalities=_modalities(raw.get("modalities", {}), path),
        audit_syslog=_audit_syslog(raw.get("audit", {}), path),
        qr_include_held=values["qr.include_held"],
        qr_held_viewers=tuple(_ae_title(a, "qr.held_viewers", path) for a in values["qr.held_viewers"]),
        **_hl7(values, raw.get("hl7", {}), path),
        destinations=_destinations(raw.get("forward", {}), path, default_calling=values["server.ae_title"].strip()),
    )


def _hl7(values: dict[str, Any], raw: dict, path: Path) -> dict[str, Any]:
    """The ``[hl7]`` settings (and the ``[hl7.stations]`` table), checked."""
    from worklist.npi import is_valid_npi

    charset = values["hl7.charset"].strip().upper()
    if charset not in HL7_CHARSETS:
        raise SettingsError(f"{path}: hl7.charset is {values['hl7.charset']!r}; use one of "
                            f"{', '.join(repr(c) for c in HL7_CHARSETS)}.")
    npi = values["hl7.default_facility_npi"].strip()
    if npi and not is_valid_npi(npi):
        raise SettingsError(f"{path}: hl7.default_facility_npi {npi!r} is not a valid NPI (ten digits with "
                            f"its check digit); correct it or leave it empty.")
    if values["hl7.max_message_bytes"] < 1024:
        raise SettingsError(f"{path}: hl7.max_message_bytes is {values['hl7.max_message_bytes']}; give at least "
                            f"1024 (an order message is a few kilobytes).")
    senders = []
    for entry in values["hl7.allowed_senders"]:
        if not isinstance(entry, str) or not entry.strip() or entry.count("^") > 1:
            raise SettingsError(f"{path}: hl7.allowed_senders has {entry!r}; write \"APPLICATION^FACILITY\" "
                                f"(MSH-3^MSH-4), or \"APPLICATION\" for any facility.")
        application, _, facility = entry.strip().partition("^")
        senders.append((application, facility))
    ids = values["hl7.processing_ids"]
    if not ids or not all(isinstance(i, str) and i.strip() for i in ids):
        raise SettingsError(f"{path}: hl7.processing_ids is {ids!r}; list the MSH-11 values taken, e.g. [\"P\"].")
    stations = raw.get("stations", {}) if isinstance(raw, dict) else {}
    if not isinstance(stations, dict) or not all(isinstance(v, str) for v in stations.values()):
        raise SettingsError(f"{path}: [hl7.stations] must map \"MODALITY\" or \"MODALITY@LOCATION\" to an "
                            f"AE title, e.g. CT = \"CT1\".")
    return dict(
        hl7_port=_port(values["hl7.port"], "hl7.port", path, allow_zero=True),
        hl7_bind_address=values["hl7.bind_address"],
        hl7_allowed_senders=tuple(senders),
        hl7_processing_ids=tuple(i.strip() for i in ids),
        hl7_charset=charset,
        hl7_patient_id_authority=values["hl7.patient_id_authority"].strip(),
        hl7_default_facility_npi=npi,
        hl7_max_message_bytes=values["hl7.max_message_bytes"],
        hl7_stations={key.strip().upper(): _ae_title(ae, f"hl7.stations.{key}", path) for key, ae in stations.items()},
    )


def _unknown_aets(value: str, path: Path) -> str:
    if value not in UNKNOWN_AET_MODES:
        raise SettingsError(f"{path}: server.unknown_aets is {value!r}; use \"allow\" (any calling AE, every "
                            f"service), \"echo-and-store\" (unknown AEs may only verify and store) or \"refuse\".")
    return value
def _http_session_hours(values: dict, path: Path) -> int:
    if bool(values["http.tls_cert"]) != bool(values["http.tls_key"]):
        raise SettingsError(f"{path}: http.tls_cert and http.tls_key go together: set both to serve HTTPS, "
                            "or neither for plain HTTP.")
    if values["http.session_hours"] < 1:
        raise SettingsError(f"{path}: http.session_hours must be at least 1, not {values['http.session_hours']}.")
    return values["http.session_hours"]


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
    if "allowed_calling_aets" in (raw.get("server") or {}):
        raise SettingsError(
            f"{path}: server.allowed_calling_aets is no longer a setting. List each modality in a table of its "
            f"own instead, e.g. [modalities.MR1] with optional host = \"10.1.2.3\" and services = [\"echo\", "
            f"\"worklist\", \"mpps\", \"store\", \"commitment\", \"qr\"], and set server.unknown_aets = "
            f"\"refuse\" to turn every other calling AE away (see README.md, Access).")
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
            if f"{section}.{name}" not in declared and f"{section}.{name}" != "hl7.stations":
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


#: Sections that are tables of named entries, parsed on their own (not in DECLARED).
TABLES = ("payers", "peers", "modalities", "audit", "forward")


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


def _modalities(raw: Any, path: Path) -> dict[str, Modality]:
    """``[modalities.AE]`` tables: ``host`` (optional) and ``services`` (optional, default all)."""
    form = ('[modalities.MR1] with optional host = "10.1.2.3" and services = '
            '["echo", "worklist", "mpps", "store", "commitment", "qr"]')
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: [modalities] must hold one table per AE title: {form}.")
    modalities = {}
    for ae, entry in raw.items():
        key = f"modalities.{ae}"
        title = _ae_title(ae, key, path)
        if not isinstance(entry, dict):
            raise SettingsError(f"{path}: {key} must be a table: {form}.")
        unknown = sorted(set(entry) - {"host", "services"})
        if unknown:
            raise SettingsError(f"{path}: {key} has unknown keys {unknown}; a modality takes host and services: {form}.")
        host = entry.get("host")
        if host is not None and (not isinstance(host, str) or not host.strip()):
            raise SettingsError(f"{path}: {key}.host is {host!r}; give an address or a host name, or leave host out "
                                f"to accept the AE from any address.")
        services = entry.get("services")
        if services is not None:
            if not isinstance(services, list) or not all(isinstance(x, str) for x in services):
                raise SettingsError(f"{path}: {key}.services must be a list of names from {list(SERVICE_NAMES)}.")
            wrong = sorted(set(services) - set(SERVICE_NAMES))
            if wrong:
                raise SettingsError(f"{path}: {key}.services names unknown services {wrong}; "
                                    f"known: {', '.join(SERVICE_NAMES)}.")
            services = frozenset(services)
        if title in modalities:
            raise SettingsError(f"{path}: {key} is listed twice (AE titles are compared without spaces).")
        modalities[title] = Modality(title, host.strip() if host else None, services)
    return modalities


def _audit_syslog(raw: Any, path: Path) -> AuditSyslog | None:
    """``[audit.syslog]``, or None when it is absent or its host is empty."""
    if not isinstance(raw, dict) or set(raw) - {"syslog"}:
        raise SettingsError(f"{path}: [audit] holds only the table [audit.syslog]; found "
                            f"{', '.join(sorted(set(raw) - {'syslog'})) if isinstance(raw, dict) else repr(raw)}.")
    table = raw.get("syslog", {})
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: audit.syslog must be a table ([audit.syslog]).")
    unknown = sorted(set(table) - set(AUDIT_SYSLOG_KEYS))
    if unknown:
        raise SettingsError(f"{path}: unknown setting audit.syslog.{unknown[0]}. Known: {', '.join(AUDIT_SYSLOG_KEYS)}.")
    values = {}
    for key, (kinds, default, help_) in AUDIT_SYSLOG_KEYS.items():
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise SettingsError(f"{path}: audit.syslog.{key} must be {' or '.join(k.__name__ for k in kinds)}, "
                                f"got {value!r}. ({help_})")
        values[key] = value
    host = values["host"].strip()
    if not host:
        return None
    transport = values["transport"].lower()
    if transport not in ("udp", "tls"):
        raise SettingsError(f"{path}: audit.syslog.transport is {values['transport']!r}; use \"udp\" or \"tls\".")
    port = values["port"] or (6514 if transport == "tls" else 514)
    _port(port, "audit.syslog.port", path)
    try:
        facility = facility_code(values["facility"])
    except ValueError as exc:
        raise SettingsError(f"{path}: audit.syslog.facility: {exc}.") from None
    files = {}
    for key in ("ca", "cert", "key"):
        files[key] = (path.parent / values[key]).resolve() if values[key] else None
        if files[key] is not None and not files[key].is_file():
            raise SettingsError(f"{path}: audit.syslog.{key} names {files[key]}, which is not a file; "
                                f"give the PEM file's path (relative to the settings file) or leave it empty.")
    if transport == "udp" and any(files.values()):
        raise SettingsError(f"{path}: audit.syslog.ca, cert and key are for transport = \"tls\"; "
                            f"set transport = \"tls\" or remove them.")
    if files["key"] and not files["cert"]:
        raise SettingsError(f"{path}: audit.syslog.key is set without audit.syslog.cert; set both or neither.")
    for key in ("poll_seconds", "retry_max_seconds"):
        if values[key] <= 0:
            raise SettingsError(f"{path}: audit.syslog.{key} must be more than 0, not {values[key]}.")
    return AuditSyslog(host=host, port=port, transport=transport, ca=files["ca"], cert=files["cert"], key=files["key"],
                       app_name=values["app_name"] or "gatekeeper", facility=facility, site=values["site"],
                       poll_seconds=float(values["poll_seconds"]), retry_max_seconds=float(values["retry_max_seconds"]))
