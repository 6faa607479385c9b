"""Who may talk to the gate: the one decision, over plain data (no network, no clock).

Two questions, both answered from the settings (:class:`gateway.settings.Settings`) and
the peer's address, each with the rule that refused:

- :func:`admit` (at A-ASSOCIATE-RQ): the called AE title must be ours (``server.ae_title``
  or ``server.extra_ae_titles``, unless ``server.check_called_ae = false``); a known
  modality (``[modalities.AE]``) with a ``host`` must call from that address (or from an
  address the host name resolves to); an unknown calling AE is turned away when
  ``server.unknown_aets = "refuse"``; a known modality with ``services = []`` may use
  nothing, so it is turned away too.
- :func:`decide` (at each operation): may this calling AE, from this address, use this
  service (:data:`SERVICES`)? A known modality: its ``services`` (left out: all); an
  unknown AE: every service under ``"allow"``, ``echo`` and ``store`` under
  ``"echo-and-store"``, none under ``"refuse"``.

Host names are resolved by the ``resolve`` function handed in (the server passes a cached
DNS lookup, tests a table), so the decision itself stays pure. Every service handler is
covered through one place in the wiring (:mod:`gateway.dicom.permissions`): a new service
only needs a name here and its SOP classes mapped there.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable

from gateway.settings import SERVICE_NAMES

#: The service names of ``[modalities.AE] services``: echo, worklist, mpps, store, commitment, qr.
SERVICES = SERVICE_NAMES
#: What an unknown calling AE may use under ``server.unknown_aets = "echo-and-store"``.
ECHO_AND_STORE = frozenset({"echo", "store"})

#: A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21): result 1 rejected-permanent, source 1 DICOM
#: UL service-user, reason 3 calling-AE-title-not-recognized / 7 called-AE-title-not-recognized.
CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)

#: The rules that refuse, as named in the log, the audit trail and the metrics' ``rule`` label.
RULE_CALLED_AE = "server.ae_title"
RULE_UNKNOWN = "server.unknown_aets"
RULE_HOST = "modalities.host"
RULE_SERVICES = "modalities.services"
RULE_NO_SERVICE = "service"
RULES = (RULE_CALLED_AE, RULE_UNKNOWN, RULE_HOST, RULE_SERVICES, RULE_NO_SERVICE)

Resolver = Callable[[str], Iterable[str]]


@dataclass(frozen=True)
class Decision:
    """Allowed, or refused by ``rule`` for ``reason`` (words for the log and the audit trail)."""

    allowed: bool
    rule: str = ""
    reason: str = ""
    rejection: tuple[int, int, int] | None = None  # A-ASSOCIATE-RJ (result, source, reason) for admit()

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED = Decision(True)


def no_resolver(host: str) -> tuple[str, ...]:
    """A resolver that knows no names (a host given as a name then matches no address)."""
    return ()


def _norm(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip().split("%")[0])
    except ValueError:
        return address.strip().lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:  # ::ffff:10.1.2.3 is 10.1.2.3
        ip = ip.ipv4_mapped
    return str(ip)


def host_matches(host: str, address: str, resolve: Resolver = no_resolver) -> bool:
    """True when ``address`` is ``host`` itself or one of the addresses ``host`` resolves to."""
    address = _norm(address)
    if _norm(host) == address:
        return True
    try:
        ipaddress.ip_address(host)
        return False  # an address that differs: no lookup
    except ValueError:
        pass
    return address in {_norm(a) for a in resolve(host)}


def our_titles(settings) -> frozenset[str]:
    """The called AE titles answered: ``server.ae_title`` and ``server.extra_ae_titles``."""
    return frozenset({settings.ae_title, *settings.extra_ae_titles})


def admit(calling_ae: str, called_ae: str, address: str, settings, resolve: Resolver = no_resolver) -> Decision:
    """May this association be established at all? (A-ASSOCIATE-RQ)"""
    calling, called = calling_ae.strip(), called_ae.strip()
    if settings.check_called_ae and called not in our_titles(settings):
        return Decision(False, RULE_CALLED_AE,
                        f"called AE title {called!r} is not ours (server.ae_title {settings.ae_title!r}"
                        + (f", server.extra_ae_titles {list(settings.extra_ae_titles)}" if settings.extra_ae_titles
                           else "") + ")", CALLED_AE_NOT_RECOGNIZED)
    modality = settings.modalities.get(calling)
    if modality is None:
        if settings.unknown_aets == "refuse":
            return Decision(False, RULE_UNKNOWN, f"calling AE {calling!r} is not under [modalities] and "
                                                 f"server.unknown_aets is \"refuse\"", CALLING_AE_NOT_RECOGNIZED)
        return ALLOWED
    if modality.host is not None and not host_matches(modality.host, address, resolve):
        return Decision(False, RULE_HOST, f"calling AE {calling!r} called from {address}, but modalities.{calling}.host "
                                          f"is {modality.host!r}", CALLING_AE_NOT_RECOGNIZED)
    if modality.services is not None and not modality.services:
        return Decision(False, RULE_SERVICES, f"modalities.{calling}.services is empty: {calling!r} may use no service",
                        CALLING_AE_NOT_RECOGNIZED)
    return ALLOWED


def decide(calling_ae: str, address: str, service: str | None, settings, resolve: Resolver = no_resolver) -> Decision:
    """May ``calling_ae`` calling from ``address`` use ``service`` (one of :data:`SERVICES`)?

    ``service`` None (a SOP class no service claims) is refused. The host rule is decided
    again here, so an operation is never allowed where :func:`admit` would have refused.
    """
    calling = calling_ae.strip()
    if service not in SERVICES:
        return Decision(False, RULE_NO_SERVICE, f"no service of the gatekeeper is named {service!r}")
    modality = settings.modalities.get(calling)
    if modality is None:
        mode = settings.unknown_aets
        if mode == "allow" or (mode == "echo-and-store" and service in ECHO_AND_STORE):
            return ALLOWED
        return Decision(False, RULE_UNKNOWN, f"calling AE {calling!r} is not under [modalities] and "
                                             f"server.unknown_aets is {mode!r}: no {service}")
    if modality.host is not None and not host_matches(modality.host, address, resolve):
        return Decision(False, RULE_HOST, f"calling AE {calling!r} called from {address}, but modalities.{calling}.host "
                                          f"is {modality.host!r}")
    if modality.services is not None and service not in modality.services:
        granted = ", ".join(sorted(modality.services)) or "none"
        return Decision(False, RULE_SERVICES, f"modalities.{calling}.services does not grant {service} "
                                              f"(granted: {granted})")
    return ALLOWED
