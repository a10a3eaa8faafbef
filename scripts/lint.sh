#!/usr/bin/env bash
# The lint step of CI: formatting (`cargo fmt --all -- --check`) and clippy with the
# workspace's lints as errors (`cargo clippy --workspace --all-targets -- -D warnings`;
# the lints are `[workspace.lints]` in Cargo.toml). Runs both, prints
# "lint: N passed, N failed, 0 skipped" (one per check) and exits non-zero when either failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

passed=0
failed=0
check() {
    local name="$1"
    shift
    echo "lint: $name: $*"
    if "$@"; then
        passed=$((passed + 1))
    else
        echo "lint: $name failed"
        failed=$((failed + 1))
    fi
}

check fmt cargo fmt --all -- --check
check clippy cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "lint: $passed passed, $failed failed, 0 skipped"
[ "$failed" -eq 0 ]
