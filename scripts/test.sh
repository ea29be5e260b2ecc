#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests, tests against both lab servers (Prosody, ejabberd)
# and the container test (the image and k8s/ played with podman).
#   bash scripts/test.sh            everything (what CI runs)
#   bash scripts/test.sh --quick    ruff and the unit tests (no server, no container), the layout's import check
#                                   among them: under a minute, for before each commit
# Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
if [ "${1:-}" = "--quick" ]; then
    shift
    exec .venv/bin/python -m pytest -q tests/unit "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
