#!/usr/bin/env bash
# The main job: builds tandem and runs `tandem demo` (needs root): a 3-node
# lab of the replicated kv service under a checked load of 32 connections,
# its primary killed (alternately power cut and process crash) every 8 s for
# 45 s (a shorter --duration gets a shorter interval; under 7 s is refused);
# a live status line, then a summary (operations, errors, lost and
# duplicated updates, the pause clients saw at each failover) and a latency
# chart (SVG) with every failover marked. Arguments go to `tandem demo`
# (e.g. --duration 30, --kill-interval 5, --keep, --json, --svg PATH;
# --moves for the connection-move demo; --help for all).
#
# Run it as root. With sudo instead, root's PATH must reach cargo; if it
# does not (rustup installed for your own user), build as yourself and run
# the binary with sudo: `cargo build --release && sudo target/release/tandem demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "the demo builds network namespaces and needs root: run it as root ($0), or with sudo (sudo $0)" >&2
    exit 1
fi
scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found on root's PATH: install Rust for root (rustup), or build as" \
        "yourself and run the binary with sudo: cargo build --release && sudo target/release/tandem demo" >&2
    exit 1
fi
cargo build --release --locked --bin tandem
exec target/release/tandem demo "$@"
