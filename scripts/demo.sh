#!/usr/bin/env bash
# Set up (fast when already done), then run the meca-node demo.
# Extra arguments go to `meca-node demo`.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# Set-up messages go to stderr so the demo's own stdout stays clean.
echo "==> Set-up (scripts/setup.sh)" >&2
bash "$REPO_ROOT/scripts/setup.sh" >&2 \
    || { echo "ERROR: set-up failed (see above); the demo was not started. Fix the set-up problem and re-run scripts/demo.sh." >&2; exit 1; }

echo "==> Running: meca-node demo $*" >&2
exec "$REPO_ROOT/.venv/bin/meca-node" demo "$@"
