# The imaging gatekeeper as a container: `gatekeeper serve` as an unprivileged user, the
# SQLite database and the store on the volume /var/lib/gatekeeper.
#
#   docker build -t imaging-gatekeeper .
#   docker run -d --name gatekeeper -p 11112:11112 -p 127.0.0.1:9102:9102 \
#       -v gatekeeper-data:/var/lib/gatekeeper imaging-gatekeeper
#   docker exec -i gatekeeper gatekeeper orders import /dev/stdin < orders.json
#   docker kill --signal=HUP gatekeeper     # reload [payers] and reconcile.warn_codes
#
# Settings: deploy/docker-settings.toml, copied to /etc/gatekeeper/settings.toml; mount a
# folder with your own settings.toml over /etc/gatekeeper to change them.
# GATEKEEPER_DATABASE_URL=postgresql://... uses PostgreSQL instead of the SQLite file.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The service user, with a fixed numeric id (Kubernetes' runAsNonRoot checks the number).
# The volume's folder is created and owned by it before VOLUME, so a new volume starts so.
RUN groupadd --system --gid 10001 gatekeeper \
 && useradd --system --uid 10001 --gid gatekeeper --home-dir /var/lib/gatekeeper \
        --no-create-home --shell /usr/sbin/nologin gatekeeper \
 && mkdir -p /var/lib/gatekeeper /etc/gatekeeper \
 && chown gatekeeper:gatekeeper /var/lib/gatekeeper \
 && chmod 0750 /var/lib/gatekeeper

# The package from this checkout (.dockerignore lets only the sources in), not editable.
COPY . /usr/src/gatekeeper
RUN pip install /usr/src/gatekeeper \
 && rm -rf /usr/src/gatekeeper

COPY deploy/docker-settings.toml /etc/gatekeeper/settings.toml
ENV GATEKEEPER_CONFIG=/etc/gatekeeper/settings.toml

USER 10001:10001
WORKDIR /var/lib/gatekeeper
VOLUME /var/lib/gatekeeper
# DICOM (server.port) and /healthz, /metrics (metrics.port).
EXPOSE 11112 9102 2575

# Healthy while GET /healthz answers 200 (database, storage reserve and DICOM listener fine);
# with metrics.port = 0 in your settings, run with --no-healthcheck.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9102/healthz', timeout=4).status != 200)"]

# SIGTERM (docker stop) finishes open associations and exits 0; allow it time: docker stop -t 90.
STOPSIGNAL SIGTERM
CMD ["gatekeeper", "--config", "/etc/gatekeeper/settings.toml", "serve"]
