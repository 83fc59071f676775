#!/usr/bin/env bash
# Every test of Colony, as the README promises: installs what the tests need, then checks
# formatting and lints and runs the whole test suite. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "checking tools"
./scripts/setup.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "no use cycle between the modules of any crate"
./scripts/module-cycles.sh >/dev/null || ./scripts/module-cycles.sh

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
cargo test --workspace --locked -- --color never

step "cargo doc --no-deps"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "all checks passed"
