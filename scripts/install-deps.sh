#!/usr/bin/env bash
# Installs the system packages tandem's build, lab, demo and tests need on
# Debian 12: gcc and libc6-dev (the linker Rust uses, and the C part of one
# dependency), iproute2 (ip, namespaces), iptables (locks, capture,
# partitions, counters), nftables (the fencing guard and lease), tcpdump and
# socat (for looking at what crosses the lab by hand), redis-tools
# (redis-cli and redis-benchmark, clients of the kv service), redis-server
# (the reference of the kv differential test), python3-venv
# nodejs and npm (node-redis from npm, pinned, into $TANDEM_NODE_CLIENTS,
# default /var/tmp/tandem-node-clients) and, in a venv at $TANDEM_COMPARE_VENV (default
# /var/tmp/tandem-bench-compare-venv, the one scripts/install-bench-deps.sh
# uses too), redis-py 8 from PyPI: the client crates/cli/tests/redis_clients.rs
# drives with its default settings. Idempotent; runs apt-get and pip only
# when something is missing, and needs root only then.
# Rust itself (cargo) is not a Debian package here: scripts/demo.sh and
# scripts/test.sh check for it.
set -euo pipefail

need=()
command -v cc >/dev/null 2>&1 || need+=(gcc)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
# redis-server: the reference services/kv/tests/differential.rs compares
# the kv service against (Debian 12: 7.0.x); the test starts its own on a
# loopback port and fails without it.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
/usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# Node.js and npm: node-redis, the Node client crates/cli/tests/redis_clients.rs
# drives with its default settings (installed below).
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} — run $0 as root (or with sudo) to install them" >&2
        exit 1
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # The package enables a system redis-server on port 6379; the tests
    # start their own, so the system one is stopped and disabled.
    if printf '%s\n' "${need[@]}" | grep -qx redis-server && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now redis-server >/dev/null 2>&1 || true
    fi
fi

# redis-py 8 (its default protocol is RESP3, which the lab test relies on).
venv="${TANDEM_COMPARE_VENV:-/var/tmp/tandem-bench-compare-venv}"
redis_py_ok() {
    "$venv/bin/python3" -c 'import sys, redis; sys.exit(int(redis.__version__.split(".")[0]) < 8)' \
        >/dev/null 2>&1
}
if ! redis_py_ok; then
    if [ "$(id -u)" -ne 0 ] && [ ! -w "$(dirname "$venv")" ]; then
        echo "cannot create $venv — run $0 as root (or with sudo)" >&2
        exit 1
    fi
    echo "installing redis-py 8 from PyPI into $venv"
    [ -x "$venv/bin/python3" ] || /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check 'redis>=8,<9'
    redis_py_ok || { echo "redis-py 8 did not install into $venv" >&2; exit 1; }
fi
# node-redis (the npm package `redis`, pinned) in $TANDEM_NODE_CLIENTS
# (default /var/tmp/tandem-node-clients), for crates/cli/tests/redis_clients.js.
node_dir="${TANDEM_NODE_CLIENTS:-/var/tmp/tandem-node-clients}"
node_redis_version=4.7.1
node_redis_ok() {
    [ "$(node -p "require('$node_dir/node_modules/redis/package.json').version" 2>/dev/null)" = "$node_redis_version" ]
}
if ! node_redis_ok; then
    if [ "$(id -u)" -ne 0 ] && [ ! -w "$(dirname "$node_dir")" ]; then
        echo "cannot create $node_dir — run $0 as root (or with sudo)" >&2
        exit 1
    fi
    echo "installing node-redis $node_redis_version from npm into $node_dir"
    mkdir -p "$node_dir"
    [ -f "$node_dir/package.json" ] || echo '{"private": true}' > "$node_dir/package.json"
    (cd "$node_dir" && npm install --no-audit --no-fund --silent "redis@$node_redis_version")
    node_redis_ok || { echo "node-redis $node_redis_version did not install into $node_dir" >&2; exit 1; }
fi
# The WebAssembly guests (guest/: the tandem-guest SDK and its examples,
# built from source by the wasm tests) compile for wasm32-unknown-unknown:
# a target with no WASI, so a guest cannot import a clock or randomness.
# rustup installs it for the toolchain in use (once; a no-op after).
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        echo "installing the Rust target wasm32-unknown-unknown (for the wasm guests)"
        rustup target add wasm32-unknown-unknown
    fi
fi
