"""DICOM TLS (PS3.15 Annex B, B.9 the BCP 195 TLS Secure Transport Connection Profile).

The TLS port carries the same AE, services, handlers and access rules as the plain port;
only the transport differs. The profile, as BCP 195 (RFC 7525, RFC 9325) has it:

- TLS 1.2 or later, never SSL or TLS 1.0/1.1; no compression, no renegotiation;
- TLS 1.2 cipher suites: the recommended AEAD suites with forward secrecy only
  (:data:`BCP195_CIPHERS`); TLS 1.3 suites are all AEAD and kept as OpenSSL has them;
- the server's certificate and key from ``server.tls_cert`` / ``server.tls_key``; with
  ``server.tls_ca`` a client must present a certificate that chains to one of its CAs
  (else the handshake fails and no association starts); without it no client certificate
  is asked for.
"""

from __future__ import annotations

import ssl

#: TLS 1.2 cipher suites of BCP 195 (RFC 7525 section 4.2, RFC 9325 section 4.2), OpenSSL names.
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
))


class _DeferredHandshake(ssl.SSLContext):
    """Wraps accepted sockets without the handshake: pynetdicom wraps each one in the thread
    that accepts connections, where a peer that connects and sends nothing (or a slow
    handshake) would hold up every other TLS connection. :func:`handshake` does it in the
    connection's own thread, within ``server.associate_timeout``."""

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, *args, **kwargs):
        return super().wrap_socket(sock, server_side, False, *args, **kwargs)


def server_context(settings) -> ssl.SSLContext:
    """The server side of the TLS port. Raises :class:`ssl.SSLError` / :class:`OSError` for files that do not load."""
    context = _DeferredHandshake(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    if settings.tls_ca:
        context.load_verify_locations(cafile=str(settings.tls_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def enabled(settings) -> bool:
    """True when the TLS port listens (``server.tls_cert`` and ``server.tls_key`` are set)."""
    return bool(settings.tls_cert and settings.tls_key)


def handshake(sock, timeout: float) -> str | None:
    """Complete the TLS handshake of an accepted connection within ``timeout`` seconds.

    None when done (or ``sock`` is not a TLS socket); else why it failed, in words.
    """
    if not isinstance(sock, ssl.SSLSocket):
        return None
    before = sock.gettimeout()
    try:
        sock.settimeout(timeout)
        sock.do_handshake()
    except ssl.SSLError as exc:
        return f"TLS handshake failed: {exc.reason or exc}"
    except (OSError, ValueError) as exc:  # timeout, reset, closed
        return f"TLS handshake failed: {exc or type(exc).__name__}"
    finally:
        try:
            sock.settimeout(before)
        except OSError:
            pass
    return None
