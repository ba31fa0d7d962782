#!/usr/bin/env bash
# The Debian packages the test suite runs for real: redis-server and redis-sentinel (shared state, failover),
# an MIT Kerberos KDC and client tools (SPNEGO), Chromium with its driver (browser tests).
# Installs only what is missing, so a machine that has them all is not touched.
set -euo pipefail
packages=(redis-server redis-sentinel krb5-kdc krb5-admin-server krb5-user libkrb5-dev chromium chromium-driver)
missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian packages start their own daemons where they can; the tests start private ones on free ports instead.
