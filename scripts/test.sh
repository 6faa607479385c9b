#!/usr/bin/env bash
# Install what the test suite needs and run all of it:
#   - DCMTK (findscu, storescu, echoscu) from Debian, for the end-to-end tests;
#   - systemd-analyze (Debian package systemd), to verify deploy/gatekeeper.service;
#   - pg_dump and pg_restore (Debian package postgresql-client) for the backup tests;
#   - Orthanc (Debian package orthanc), the PACS of the forwarding tests;
#   - a virtualenv in .venv with the project and pytest;
#   - the PostgreSQL suite against GATEKEEPER_TEST_PG_URL
#     (default: the server on this machine, postgresql://postgres@127.0.0.1:5432/test).
# Extra arguments go to pytest, e.g. scripts/test.sh -k mwl
set -euo pipefail
cd "$(dirname "$0")/.."

if ! /usr/bin/findscu --version >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dcmtk >/dev/null
fi
if ! /usr/bin/systemd-analyze --version >/dev/null 2>&1; then  # tests/test_deploy.py verifies the unit
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi
if ! command -v pg_dump >/dev/null 2>&1; then  # tests/test_backup.py backs PostgreSQL up with pg_dump
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql-client >/dev/null
fi

if ! [ -x /usr/sbin/Orthanc ]; then  # tests/test_e2e_forward.py forwards to Orthanc as the PACS
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends orthanc >/dev/null
    # the package starts a system Orthanc on ports 4242 and 8042; the tests start their own
    $sudo systemctl disable --now orthanc >/dev/null 2>&1 || true
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

export GATEKEEPER_TEST_PG_URL="${GATEKEEPER_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}"
exec .venv/bin/python -m pytest "$@"
