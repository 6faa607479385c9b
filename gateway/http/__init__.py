"""HTTP front ends. :mod:`.health` serves ``GET /healthz`` and ``GET /metrics`` for a
service manager and a Prometheus server, on ``metrics.port`` at ``metrics.bind_address``
(:func:`gateway.http.health.start`, called by ``gatekeeper serve``)."""
