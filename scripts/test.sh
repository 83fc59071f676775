#!/usr/bin/env bash
# Every test of Colony, as the README promises: installs what the tests need, then checks
# formatting and lints and runs the whole test suite. Safe to run again and again.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Every process the tests start carries this marker (tests/common sets it on each child,
# whose own children inherit it), so the end of the run can tell ours from anyone else's.
COLONY_TEST_RUN="test-sh-$$-$(date +%s)"
export COLONY_TEST_RUN

# The `colony` processes of this run still alive, one "pid: command line" per line.
leftovers() {
  local environ pid exe
  for environ in /proc/[0-9]*/environ; do
    pid=${environ#/proc/}
    pid=${pid%/environ}
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || continue
    case "${exe% (deleted)}" in */colony) ;; *) continue ;; esac
    if grep -qxzF "COLONY_TEST_RUN=$COLONY_TEST_RUN" "$environ" 2>/dev/null; then
      printf '%s: %s\n' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"
    fi
  done
  return 0
}

# Fails, naming them, if any `colony` process of this run outlives it. Processes told to stop
# when the tests ended (SIGTERM from their parent's death) get a grace period to finish.
check_leftovers() {
  local deadline=$((SECONDS + 15)) left
  while left=$(leftovers) && [ -n "$left" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      printf 'colony processes started by this test run are still running:\n%s\n' "$left" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "no colony process of this run is left"
}

step "checking tools"
./scripts/setup.sh

step "cargo fmt --all --check"
cargo fmt --all --check

step "no use cycle between the modules of any crate"
./scripts/module-cycles.sh >/dev/null || ./scripts/module-cycles.sh

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test --workspace"
tests=0
# Every test binary runs even after a failure, so one run shows every failing test.
cargo test --workspace --locked --no-fail-fast -- --color never || tests=$?

# Even after failed tests: a leftover is a bug of its own, and it would disturb the next run.
step "no colony process left running"
check_leftovers
[ "$tests" -eq 0 ] || exit "$tests"

step "cargo doc --no-deps"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
echo "all checks passed"
