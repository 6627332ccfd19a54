#!/usr/bin/env bash
# Installs what `tandem bench kv` and `tandem bench compare` need beyond
# scripts/install-deps.sh on Debian 12: redis-server (the unreplicated
# reference the replicated kv is compared with), redis-tools
# (redis-benchmark, the load generator, and redis-cli) and, for
# `bench compare`, keepalived (VRRP moving a VIP between two redis-servers),
# redis-sentinel (Redis Sentinel) and python3-venv (a venv holding redis-py
# from PyPI: the client of scripts/compare/, which follows Sentinel).
# Idempotent: runs `apt-get update` (once) and `apt-get install` only when
# something is missing. The benches start their own servers inside lab
# namespaces, so if a package started its system unit (redis-server,
# redis-sentinel, keepalived), it is stopped and disabled again.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-benchmark >/dev/null 2>&1 || need+=(redis-tools)
command -v keepalived >/dev/null 2>&1 || need+=(keepalived)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} — run $0 as root (or with sudo) to install them" >&2
        exit 1
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The packages' service units, if any: the benches run their own servers in
# lab namespaces (a system keepalived would even move the host's addresses).
if command -v systemctl >/dev/null 2>&1; then
    for unit in redis-server redis-sentinel keepalived; do
        if systemctl is-active --quiet "$unit" 2>/dev/null; then
            if [ "$(id -u)" -ne 0 ]; then
                echo "the $unit systemd unit is running — run $0 as root (or with sudo) to stop it" >&2
                exit 1
            fi
            echo "stopping and disabling the $unit systemd unit (the benches run their own)"
            systemctl stop "$unit"
            systemctl disable --quiet "$unit" 2>/dev/null || true
        fi
    done
fi

# The venv of `tandem bench compare`'s client (redis-py, for its Sentinel
# support). The bench creates it itself when it is missing.
venv="${TANDEM_COMPARE_VENV:-/var/tmp/tandem-bench-compare-venv}"
if ! "$venv/bin/python3" -c 'import redis' >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ] && [ ! -w "$(dirname "$venv")" ]; then
        echo "cannot create $venv — run $0 as root (or with sudo)" >&2
        exit 1
    fi
    echo "creating $venv with redis-py from PyPI"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'redis>=5,<9'
fi

redis_py=$("$venv/bin/python3" -c 'import redis; print(redis.__version__)')
echo "bench dependencies present: $(command -v redis-server), $(command -v redis-benchmark)," \
    "$(command -v keepalived), $(command -v redis-sentinel), redis-py $redis_py in $venv"
