#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs every libFuzzer target of a configured fuzzer build (scripts/test.sh fuzz sets it up):
#   scripts/fuzz.sh BUILD_DIR [TARGET...]     (targets: frames hello endpoint ring; default all)
# Each target starts from its seed corpus (tests/fuzz/corpus/<t>) and the crashes found before
# (tests/fuzz/regressions/<t>), in a copy (the repository's corpus is not changed), and runs
# FERRY_FUZZ_SECONDS (60) seconds; two at a time (FERRY_FUZZ_PARALLEL). A crash, leak,
# sanitizer report or a slow input (over 10 s) fails the run and leaves the input in
# BUILD_DIR/fuzz-artifacts: add it to tests/fuzz/regressions/<t>/ with the fix (the normal
# builds replay that directory as a test). Prints each target's executions and coverage.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$1
shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(frames hello endpoint ring)
seconds=${FERRY_FUZZ_SECONDS:-60}
parallel=${FERRY_FUZZ_PARALLEL:-2}

cmake --build "$dir" -j"$(nproc)" --target "${targets[@]/#/ferry_fuzz_}"
mkdir -p "$dir/fuzz-artifacts"
run() {
  local t=$1 corpus=$dir/fuzz-corpus/$1
  rm -rf "$corpus"
  mkdir -p "$corpus"
  cp tests/fuzz/corpus/"$t"/* "$corpus"/
  if [ -d tests/fuzz/regressions/"$t" ]; then cp tests/fuzz/regressions/"$t"/* "$corpus"/ 2>/dev/null || true; fi
  "$dir/bin/ferry_fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$dir/fuzz-artifacts/$t-" "$corpus" > "$dir/fuzz-$t.log" 2>&1
}
pids=()
names=()
status=0
for t in "${targets[@]}"; do
  run "$t" &
  pids+=($!)
  names+=("$t")
  if [ ${#pids[@]} -ge "$parallel" ]; then
    wait "${pids[0]}" || status=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done

for t in "${targets[@]}"; do
  log=$dir/fuzz-$t.log
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  units=$(find "$dir/fuzz-corpus/$t" -type f | wc -l)
  if grep -q -E "ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)|runtime error:|==ERROR|deadly signal|Test unit written" "$log"; then
    echo "fuzz $t: FAILED after $execs executions:"
    grep -E "ERROR|runtime error|SUMMARY|Test unit written|deadly" "$log" | head -20
    status=1
  else
    echo "fuzz $t: $execs executions in ${seconds} s, coverage $cov edges, corpus $units inputs, no failure"
  fi
done
exit $status
