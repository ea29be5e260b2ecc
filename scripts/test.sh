#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: unit tests, tests against both lab servers (Prosody, ejabberd)
# and the container test (the image and k8s/ played with podman).
#   bash scripts/test.sh            everything (what CI runs), in parallel processes (below)
#   bash scripts/test.sh --quick    ruff and the unit tests (no server, no container), the layout's import check
#                                   among them: under a minute, for before each commit
#   bash scripts/test.sh ARGS...    pytest with these arguments, in one process (e.g. a file, -k, -x)
#
# The whole suite: first the container test alone (its pods starved of CPU by other tests beside it timed out
# their connections: 139 of 499 in one run), then TEST_PROCESSES + 1 pytest processes at once, each with lab
# servers of its own: most tests wait on servers and timed phases, not on the CPU. One of them runs, one after
# the other, the tests that load the CPU on purpose (marked heavy: a saturated server, thousands of users); the
# others (TEST_PROCESSES, default 3) share out the rest by their durations in tests/durations.json
# (pytest-split). After adding slow tests, refresh that file with
#   bash scripts/test.sh tests/integration tests/unit -m "not heavy" --store-durations --durations-path tests/durations.json
# (pytest-xdist cannot run these tests: its workers talk to pytest through threads, which gevent's monkey
# patching, in force once Locust is imported, turns into greenlets that block forever.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
pytest=(.venv/bin/python -m pytest -q)
if [ "${1:-}" = "--quick" ]; then
    shift
    exec "${pytest[@]}" tests/unit "$@"
fi
if [ $# -gt 0 ]; then
    exec "${pytest[@]}" "$@"
fi

processes=${TEST_PROCESSES:-3}
case $processes in '' | *[!0-9]* | 0) echo "TEST_PROCESSES must be a positive number, not '$processes'" >&2; exit 2 ;; esac
logs=$(mktemp -d /tmp/locust-xmpp-tests.XXXXXX)
start=$SECONDS
failed=()
echo "test: the container test, logs in $logs"
status=0
"${pytest[@]}" tests/containers --basetemp "$logs/containers" --junitxml "$logs/containers.xml" \
    >"$logs/containers.log" 2>&1 || status=$?
echo "test: containers: $(tail -n 1 "$logs/containers.log") (exit $status, $((SECONDS - start)) s)"
[ "$status" -eq 0 ] || failed+=(containers)

names=(heavy)
"${pytest[@]}" tests/integration -m heavy --basetemp "$logs/heavy" --durations 10 \
    --junitxml "$logs/heavy.xml" >"$logs/heavy.log" 2>&1 &
pids=($!)
for group in $(seq 1 "$processes"); do
    names+=("part-$group")
    "${pytest[@]}" tests/integration tests/unit -m "not heavy and not containers" --basetemp "$logs/part-$group" \
        --splits "$processes" --group "$group" --splitting-algorithm least_duration \
        --durations-path tests/durations.json --junitxml "$logs/part-$group.xml" >"$logs/part-$group.log" 2>&1 &
    pids+=($!)
done
# Ctrl-C or a kill reaches every pytest, which then stops its lab servers.
trap 'kill -INT "${pids[@]}" 2>/dev/null || true' INT TERM
echo "test: then ${#pids[@]} pytest processes (the heavy tests, and $processes parts of the rest)"
for i in "${!pids[@]}"; do
    status=0
    wait "${pids[$i]}" || status=$?
    echo "test: ${names[$i]}: $(tail -n 1 "$logs/${names[$i]}.log") (exit $status, $((SECONDS - start)) s)"
    [ "$status" -eq 0 ] || failed+=("${names[$i]}")
done
for name in "${failed[@]}"; do
    echo "==================== ${name} ===================="
    cat "$logs/$name.log"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "test: failed: ${failed[*]} (logs in $logs)"
    exit 1
fi
echo "test: all passed in $((SECONDS - start)) s"
