#!/usr/bin/env bash
# Run the test suite the way a loaded CI machine runs it: two busy-loop processes compete for
# the CPU beside `python -m pytest` (the README's test command). Timing races in tests show up
# here; tests that wait for events pass.
#
#   scripts/ci_load.sh                     # one round of the whole suite
#   scripts/ci_load.sh --rounds 3          # three rounds in a row; stops at the first failure
#   scripts/ci_load.sh --rounds 2 -x tests/test_interrupts.py   # anything else goes to pytest
#
# The busy loops are killed when the script ends, whatever happens (success, failure, Ctrl-C).
# PYTHON picks the interpreter (default: python). Exit status: pytest's, of the failing round.
set -u

rounds=1
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) rounds="${2:?--rounds needs a number}"; shift 2 ;;
        --rounds=*) rounds="${1#*=}"; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) args+=("$1"); shift ;;
    esac
done
case "$rounds" in
    ''|*[!0-9]*|0) echo "error: --rounds takes a number >= 1, not '$rounds'" >&2; exit 2 ;;
esac
python="${PYTHON:-python}"

loads=()
stop_loads() {
    for pid in "${loads[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${loads[@]}"; do
        wait "$pid" 2>/dev/null
    done
    loads=()
}
trap stop_loads EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in 1 2; do
    ( while :; do :; done ) &
    loads+=("$!")
done
echo "ci_load: busy loops ${loads[*]} running beside the tests" >&2

status=0
for round in $(seq 1 "$rounds"); do
    echo "ci_load: round $round of $rounds: $python -m pytest ${args[*]:-}" >&2
    "$python" -m pytest ${args[@]+"${args[@]}"}
    status=$?
    if [ "$status" -ne 0 ]; then
        echo "ci_load: round $round of $rounds failed (exit $status)" >&2
        exit "$status"
    fi
done
echo "ci_load: $rounds round(s) passed under load" >&2
exit 0
