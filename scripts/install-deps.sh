#!/usr/bin/env bash
# Installs the system packages tandem's lab, demo and tests need on Debian 12:
# iproute2 (ip, namespaces), iptables (locks, capture, partitions, counters),
# nftables (the fencing guard and lease), tcpdump and socat (for looking at
# what crosses the lab by hand), redis-tools (redis-cli and redis-benchmark,
# clients of the kv service). Idempotent; runs
# apt-get only when something is missing.
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables-restore >/dev/null 2>&1 || need+=(iptables)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v tcpdump >/dev/null 2>&1 || need+=(tcpdump)
command -v socat >/dev/null 2>&1 || need+=(socat)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)

if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${need[*]} — run as root (sudo) to install them" >&2
        exit 1
    fi
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust first (https://rustup.rs)" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done
