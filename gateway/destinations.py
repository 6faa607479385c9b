"""Where the gatekeeper may send studies when a workstation asks (C-MOVE Move Destination).

:func:`move_destination` is the one lookup of a Move Destination AE title: today the
``[peers]`` table of settings.toml (AE title -> host, port). Another table of destinations
is added here, and only here.
"""

from __future__ import annotations

from gateway.settings import Peer, Settings


def move_destination(settings: Settings, ae_title: str) -> Peer | None:
    """The peer a C-MOVE may send to under ``ae_title``; None when no setting names it (0xA801)."""
    wanted = ae_title.strip()
    if not wanted:
        return None
    peer = settings.peers.get(wanted)
    if peer is not None:
        return peer
    for destination in settings.destinations:
        if destination.ae_title == wanted:
            return Peer(destination.ae_title, destination.host, destination.port)
    return None
