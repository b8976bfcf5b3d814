#!/usr/bin/env bash
# Run the whole test suite: set-up first (fast when already done), then pytest.
#
#   scripts/test.sh                 # all tests, as configured in pyproject.toml
#   scripts/test.sh -k gossip -x    # extra arguments go to pytest
#
# Exits with pytest's exit code; "no tests collected" (5) counts as a failure.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

start_ns="$(date +%s%N)"
elapsed() {
    local ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
    printf '%d.%01ds' $((ms / 1000)) $(((ms % 1000) / 100))
}

echo "==> Set-up (scripts/setup.sh)"
setup_rc=0
bash "$REPO_ROOT/scripts/setup.sh" || setup_rc=$?
if [ "$setup_rc" -ne 0 ]; then
    echo "ERROR: set-up failed (exit $setup_rc, see above); tests were not run. Fix the set-up problem and re-run scripts/test.sh." >&2
    echo "==> Total time: $(elapsed)"
    exit "$setup_rc"
fi

echo "==> Running tests: .venv/bin/python -m pytest${*:+ $*}"
rc=0
"$REPO_ROOT/.venv/bin/python" -m pytest "$@" || rc=$?

case "$rc" in
    0) echo "==> Tests passed" ;;
    5) echo "ERROR: pytest collected no tests (exit 5). Check that tests/ holds test_*.py files and that any -k/-m/path arguments match something." >&2 ;;
    *) echo "ERROR: tests failed (pytest exit code $rc, see the report above)." >&2 ;;
esac
echo "==> Total time: $(elapsed)"
exit "$rc"
