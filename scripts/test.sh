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
#   - Orthanc (Debian package orthanc), the PACS of the forwarding tests;
#   - a virtualenv in .venv with the project and pytest;
#   - the PostgreSQL suite against GATEKEEPER_TEST_PG_URL
#     (default: the server on this machine, postgresql://postgres@127.0.0.1:5432/test).
# Extra arguments go to pytest, e.g. scripts/test.sh -k mwl
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: each with the check that says it is there (one apt-get run for all that are not).
missing=()
need() {  # PACKAGE CHECK-COMMAND...
    local package=$1; shift
    "$@" >/dev/null 2>&1 || missing+=("$package")
}
need dcmtk /usr/bin/findscu --version              # the modalities and workstations of the e2e tests
need systemd /usr/bin/systemd-analyze --version    # tests/test_deploy.py verifies the unit
need openssl command -v openssl                    # tests/certs.py makes the TLS test CA and certificates
need postgresql-client command -v pg_dump          # tests/test_backup.py backs PostgreSQL up with pg_dump
need chromium test -x /usr/bin/chromium            # tests/test_browser.py
need chromium-driver test -x /usr/bin/chromedriver
need rsyslog test -x /usr/sbin/rsyslogd            # tests/test_audit_rsyslog.py: a collector over UDP and TLS
need rsyslog-gnutls dpkg -s rsyslog-gnutls
need orthanc test -x /usr/sbin/Orthanc             # tests/test_e2e_forward.py: the PACS
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # the orthanc package may start a system Orthanc on ports 4242 and 8042; the tests start their own
    $sudo systemctl disable --now orthanc >/dev/null 2>&1 || true
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

export GATEKEEPER_TEST_PG_URL="${GATEKEEPER_TEST_PG_URL:-postgresql://postgres@127.0.0.1:5432/test}"
export GATEKEEPER_TEST_ARTIFACTS="${GATEKEEPER_TEST_ARTIFACTS:-$PWD/test-artifacts}"
exec .venv/bin/python -m pytest "$@"
