#!/usr/bin/env bash
# Install Prometheus (Debian bookworm's package, 2.42.x), which the `rbd-wasm serve` tests
# run as a real scraper of the service's `/metrics`: they start their own instance
# (tests/src/prometheus.rs) on a free loopback port with a config of their own, so the
# package's daemon must not run. Idempotent: nothing happens when /usr/bin/prometheus is
# there already, and `apt-get update` runs only when it is not.
#
# Usage: scripts/install-prometheus.sh      (as root, or with sudo available)
#
# The package's maintainer scripts enable and start prometheus.service (or its init.d
# script) on :9090 with /etc/prometheus/prometheus.yml. A daemon left running there would
# hold the port and scrape whatever that config names for as long as the machine lives, so
# the install runs under a policy-rc.d that forbids starting services (exit 101, see
# /usr/share/doc/init-system-helpers/README.policy-rc.d), and anything that started anyway
# (a systemd machine, where deb-systemd-invoke honours policy-rc.d but a later boot would
# not) is stopped and disabled afterwards.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { echo "install-prometheus: $*" >&2; }

if [[ -x /usr/bin/prometheus ]]; then
    log "already installed: $(/usr/bin/prometheus --version 2>&1 | head -n 1)"
    exit 0
fi

# Use sudo only when not already root (CI and dev machines run as root).
sudo_cmd=()
if ((EUID != 0)); then
    sudo_cmd=(sudo)
fi

# A policy-rc.d of our own only if there is none: container images often ship one
# (Docker's exits 101 too), and that one is not ours to replace or remove.
policy=/usr/sbin/policy-rc.d
made_policy=false
remove_policy() {
    if $made_policy; then
        "${sudo_cmd[@]}" rm -f "$policy"
    fi
}
trap remove_policy EXIT
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# scripts/install-prometheus.sh: no service starts during the install.\nexit 101\n' |
        "${sudo_cmd[@]}" tee "$policy" >/dev/null
    "${sudo_cmd[@]}" chmod 755 "$policy"
    made_policy=true
fi

# No recommends: they are prometheus-node-exporter, another daemon (on :9100) the tests
# have no use for.
log "installing prometheus"
"${sudo_cmd[@]}" apt-get update
"${sudo_cmd[@]}" apt-get install -y --no-install-recommends prometheus

# Stop whatever started regardless (a pre-existing policy-rc.d that allows it, say), and
# keep the unit from starting at the next boot. Without systemd as PID 1 (a container)
# systemctl cannot talk to a manager, so the init.d script is asked instead; either may
# find nothing to stop.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    "${sudo_cmd[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
else
    if command -v systemctl >/dev/null 2>&1; then
        # Offline (no manager needed): removes the wants/ symlink the package made.
        "${sudo_cmd[@]}" systemctl disable prometheus >/dev/null 2>&1 || true
    fi
    if [[ -x /etc/init.d/prometheus ]]; then
        "${sudo_cmd[@]}" /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
fi

/usr/bin/prometheus --version >/dev/null 2>&1 || { log "/usr/bin/prometheus does not run"; exit 1; }
log "installed: $(/usr/bin/prometheus --version 2>&1 | head -n 1)"
