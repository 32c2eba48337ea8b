#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real when they are missing:
# chromium + chromium-driver (browser tests), prometheus (promtool and the scrape test), haproxy
# (the load balancer of deploy/compose.scale.yaml, run in front of test processes) and
# docker-compose (its `config` command checks the compose files without a Docker daemon).
# Usage: scripts/system-deps.sh            (idempotent; quiet when everything is present)
set -euo pipefail

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || { [[ " ${missing[*]-} " == *" prometheus "* ]] || missing+=(prometheus); }
# Debian installs haproxy in /usr/sbin, outside a normal user's PATH.
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: apt-get not found; install ${missing[*]} yourself (the tests that need them will fail)" >&2
    exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "system-deps: need root (or sudo) to install ${missing[*]}" >&2
        exit 1
    fi
fi

echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# The Debian prometheus package would start a service and try to scrape; the tests run their own.
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# A package install may start the prometheus service (on :9090) and the haproxy service; the
# tests run their own and never need them.
if command -v service >/dev/null 2>&1; then
    "${as_root[@]}" service prometheus stop >/dev/null 2>&1 || true
    "${as_root[@]}" service haproxy stop >/dev/null 2>&1 || true
fi
