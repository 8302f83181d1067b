#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# ferry-bench compare end to end, briefly: every system (the peers installed by
# scripts/setup.sh) runs one streaming size and the ping-pong and prints one JSON object each
# with its figures; --plot writes a PNG; iceoryx's RouDi is stopped afterwards. Then the skips:
# without iox-roudi on PATH iceoryx is skipped with the reason and the rest still run; a
# ferry-bench with no baselines beside it skips them, naming the package. Binary: $FERRY_BENCH.
set -euo pipefail

name=ferry_compare_test
BENCH=${FERRY_BENCH:-build/bin/ferry-bench}
[[ -x $BENCH ]] || { echo "$name: no executable at '$BENCH' (set FERRY_BENCH)" >&2; exit 1; }
work=$(mktemp -d /tmp/ferry_compare_test.XXXXXX)
trap 'rm -rf "$work"' EXIT
. "$(dirname "$0")/common.sh" # fail, pass
quick=(--size 64 --seconds 0.2 --reps 1 --count 500 --pin none --timeout 20)

"$BENCH" compare "${quick[@]}" --json --plot "$work/plot.png" > "$work/all.json" 2> "$work/all.err" ||
  fail "compare exited $?: $(cat "$work/all.err")"
for s in ferry-shm ferry-ring ferry-tcp iceoryx zmq-ipc zmq-tcp bmq uds; do
  grep -q "\"skipped\".*\"system\":\"$s\"\|\"system\":\"$s\".*\"skipped\"" "$work/all.json" &&
    fail "$s was skipped (scripts/setup.sh installs every peer): $(grep "\"$s\"" "$work/all.json")"
  grep "\"system\":\"$s\"" "$work/all.json" | grep '"mode":"stream"' | grep -q '"msgs_per_s":[1-9]' ||
    fail "no streaming msgs/s for $s: $(cat "$work/all.json")"
  grep "\"system\":\"$s\"" "$work/all.json" | grep '"mode":"pingpong"' | grep -q '"p50_ns":[1-9]' ||
    fail "no ping-pong p50 for $s"
done
[[ $(wc -l < "$work/all.json") -eq 16 ]] || fail "expected 16 objects (8 systems x 2 workloads): $(cat "$work/all.json")"
grep '"system":"zmq-ipc"' "$work/all.json" | grep '"mode":"stream"' | grep '"ferry_system":"ferry-shm"' |
  grep -q '"ferry_ratio":[0-9]' || fail "no ratio of Ferry to zmq-ipc"
grep '"system":"zmq-tcp"' "$work/all.json" | grep -q '"ferry_system":"ferry-tcp"' || fail "zmq-tcp is not set against ferry-tcp"
[[ $(head -c 4 "$work/plot.png" | od -An -c | tr -d ' ') == 211PNG ]] || fail "--plot wrote no PNG"
pgrep -x iox-roudi > /dev/null && fail "iox-roudi still runs after compare"
grep -q "runs in" "$work/all.err" || fail "no progress on stderr: $(cat "$work/all.err")"
pass "all 8 systems measured, ratios and plot"

# No iox-roudi on PATH: iceoryx is skipped, saying why; the others run.
mkdir "$work/bin"
for tool in gnuplot; do ln -s "$(command -v $tool)" "$work/bin/$tool"; done
PATH=$work/bin "$BENCH" compare "${quick[@]}" --systems ferry-shm,iceoryx --pingpong-size 0 > "$work/noiox.txt" 2>&1 ||
  fail "compare without iox-roudi exited $?: $(cat "$work/noiox.txt")"
grep -q "iceoryx *skipped: iox-roudi is not on PATH" "$work/noiox.txt" || fail "no skip message: $(cat "$work/noiox.txt")"
grep -q "^  ferry-shm  *[0-9]" "$work/noiox.txt" || fail "ferry-shm did not run: $(cat "$work/noiox.txt")"
pass "iceoryx skipped without iox-roudi"

# A ferry-bench with no baseline programs beside it (built without their libraries).
cp "$BENCH" "$work/bin/ferry-bench"
"$work/bin/ferry-bench" compare "${quick[@]}" --systems ferry-shm,zmq-ipc,bmq --pingpong-size 0 --json > "$work/alone.json" 2> "$work/alone.err" ||
  fail "compare with no baselines exited $?: $(cat "$work/alone.err")"
grep '"system":"zmq-ipc"' "$work/alone.json" | grep -q 'libzmq3-dev' || fail "no skip naming libzmq3-dev: $(cat "$work/alone.json")"
grep '"system":"bmq"' "$work/alone.json" | grep -q '"skipped"' || fail "bmq not skipped"
grep -q "skipping zmq-ipc" "$work/alone.err" || fail "no skip message on stderr"
grep '"system":"ferry-shm"' "$work/alone.json" | grep -q '"msgs_per_s":[1-9]' || fail "ferry-shm did not run alone"
pass "missing baselines skipped, naming their packages"
