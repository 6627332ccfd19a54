#!/usr/bin/env bash
# Installs what `tandem bench kv` needs beyond scripts/install-deps.sh on
# Debian 12: redis-server (the unreplicated reference the replicated kv is
# compared with) and redis-tools (redis-benchmark, the load generator).
# Idempotent: runs `apt-get update` (once) and `apt-get install` only when
# something is missing. The bench starts its own redis-server inside a lab
# namespace, so if the package started the system's redis-server unit, it is
# stopped and disabled again (it would only take memory and port 6379).
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} — run as root: sudo $0" >&2
        exit 1
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The package's service unit (Debian names it redis-server.service), if any.
if command -v systemctl >/dev/null 2>&1; then
    if systemctl is-active --quiet redis-server 2>/dev/null; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "the redis-server systemd unit is running — run as root to stop it: sudo $0" >&2
            exit 1
        fi
        echo "stopping and disabling the redis-server systemd unit (the bench runs its own)"
        systemctl stop redis-server
        systemctl disable --quiet redis-server 2>/dev/null || true
    fi
fi

echo "bench dependencies present: $(command -v redis-server), $(command -v redis-benchmark)"
