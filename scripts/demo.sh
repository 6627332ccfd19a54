#!/usr/bin/env bash
# The main job: builds tandem and runs `tandem demo` (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "the demo builds network namespaces and needs root: run it with sudo" >&2
    exit 1
fi
scripts/install-deps.sh
cargo build --release --locked --bin tandem
exec target/release/tandem demo "$@"
