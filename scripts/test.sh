#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test,
# including the end-to-end tests that build network-namespace labs (they need
# root and fail — never skip — without it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "the test suite builds network namespaces and needs root: run it as root ($0), or with sudo (sudo $0)" >&2
    exit 1
fi
scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found on root's PATH: install Rust for root (rustup)" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        rustup component add "$component"
    fi
done

echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== the wasm guests (guest/, a workspace of its own): fmt and clippy"
(cd guest && cargo fmt --all --check \
    && cargo clippy --workspace --release --target wasm32-unknown-unknown --locked \
        --target-dir ../target/guest -- -D warnings)
echo "== cargo test"
# Lab tests each build their own uniquely named namespaces, so they run in
# parallel; two at a time keeps a 2-core machine responsive.
cargo test --workspace --locked -- --test-threads "${TANDEM_TEST_THREADS:-2}"
