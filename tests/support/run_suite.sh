#!/usr/bin/env bash
# `make test`: lint, then every test on SQLite and on PostgreSQL, in two phases.
#
#   1. side by side: the SQLite pass in the foreground; lint, then the PostgreSQL pass, in the background
#      (its output is printed once it is done). Most tests spend their time waiting on real processes, so
#      the two passes share the machine well.
#   2. alone, one pass after the other: the tests marked `serial`, whose assertions bound latencies
#      (wake-up, fire lag, loop stalls, token expiry), so that nothing else competes with them for the CPU.
#
# The exit status is the first failure's (5 if a pass collected no tests), after every pass has run.
# Usage: tests/support/run_suite.sh <venv bin directory> <make>
set -uo pipefail

bin="$1"
make="${2:-make}"
cd "$(dirname "$0")/../.."

status=0
record() { # record <name> <exit code>
    printf '=== %s: exit %s\n' "$1" "$2"
    if [[ "$2" == 5 ]]; then
        status=5 # "no tests collected" must never pass, whatever else happened
    elif [[ "$2" != 0 && "$status" == 0 ]]; then
        status="$2"
    fi
}

side_log="$(mktemp)"
trap 'rm -f "$side_log"' EXIT
(
    "$make" --no-print-directory lint || exit 100
    exec "$bin/pytest" --backend postgres --ignore=tests/reliability --ignore=tests/browser -m "not serial" \
        -p no:cacheprovider # the SQLite pass alongside owns .pytest_cache
) >"$side_log" 2>&1 </dev/null &
side=$!

printf '=== SQLite pass (not serial); lint and the PostgreSQL pass run alongside\n'
"$bin/pytest" --ignore=tests/reliability -m "not serial"
record "SQLite pass (not serial)" $?

side_rc=0
wait "$side" || side_rc=$?
printf '\n=== lint, then the PostgreSQL pass (not serial), which ran alongside:\n'
cat "$side_log"
if [[ "$side_rc" == 100 ]]; then
    record "lint" 1
else
    record "lint" 0
    record "PostgreSQL pass (not serial)" "$side_rc"
fi

printf '\n=== tests marked serial, on SQLite, alone\n'
"$bin/pytest" --ignore=tests/reliability -m serial
record "SQLite pass (serial)" $?

printf '\n=== tests marked serial, on PostgreSQL, alone\n'
"$bin/pytest" --backend postgres --ignore=tests/reliability --ignore=tests/browser -m serial
record "PostgreSQL pass (serial)" $?

exit "$status"
