#!/usr/bin/env bash
# Install what the test suite needs and run all of it:
#   - DCMTK (findscu, storescu, echoscu) from Debian, for the end-to-end tests;
#   - systemd-analyze (Debian package systemd), to verify deploy/gatekeeper.service;
#   - openssl (Debian package openssl) for the TLS test certificates;
#   - pg_dump and pg_restore (Debian package postgresql-client) for the backup tests;
#   - Chromium and its WebDriver (Debian packages chromium, chromium-driver) for the review
#     desk's browser tests; their screenshots go to $GATEKEEPER_TEST_ARTIFACTS (default
#     test-artifacts/ here);
#   - rsyslogd with TLS (Debian packages rsyslog, rsyslog-gnutls) and openssl, for the audit trail tests;
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
if ! command -v openssl >/dev/null 2>&1; then  # tests/certs.py makes the TLS test CA and certificates
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends openssl >/dev/null
fi
if ! command -v pg_dump >/dev/null 2>&1; then  # tests/test_backup.py backs PostgreSQL up with pg_dump
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql-client >/dev/null
fi
if [ ! -x /usr/sbin/Orthanc ]; then  # bench/store.py --compare measures the gatekeeper against Orthanc
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends orthanc >/dev/null
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then  # tests/test_browser.py
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi

if [ ! -x /usr/sbin/rsyslogd ] || ! dpkg -s rsyslog-gnutls >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then  # tests/test_audit_rsyslog.py: a syslog collector over UDP and TLS
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends rsyslog rsyslog-gnutls openssl >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

export GATEKEEPER_TEST_PG_URL="${GATEKEEPER_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}"
export GATEKEEPER_TEST_ARTIFACTS="${GATEKEEPER_TEST_ARTIFACTS:-$PWD/test-artifacts}"
exec .venv/bin/python -m pytest "$@"
