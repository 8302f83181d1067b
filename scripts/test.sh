#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The test command: installs what is missing, configures, builds, runs every ctest label.
#   scripts/test.sh            RelWithDebInfo build in build/, all tests
#   scripts/test.sh asan       ASan+UBSan build in build-asan/, all tests
#   scripts/test.sh tsan       TSan build (clang) in build-tsan/, unit, stress and transport tests but gRPC's and MQTT's
#   scripts/test.sh fuzz       libFuzzer+ASan+UBSan build (clang) in build-fuzz/: each fuzz target
#                              (tests/fuzz) for FERRY_FUZZ_SECONDS (60) from its seed corpus
#   scripts/test.sh soak       the default build's soak run: 100 TCP clients streaming into one
#                              server for FERRY_SOAK_SECONDS (600), its memory sampled (not in CI)
# Extra arguments after the mode go to ctest (e.g. scripts/test.sh default -L unit).
# FERRY_STRESS_ITERS scales the stress tests; FERRY_MP_MESSAGES the multi-process transfers.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-default}
[ $# -gt 0 ] && shift
bash scripts/setup.sh

jobs=$(nproc)
common=(-G Ninja -DFERRY_WARNINGS_AS_ERRORS=ON)
ctest_args=(--output-on-failure -j"$jobs")
case "$mode" in
  default)
    dir=build
    cmake -S . -B "$dir" "${common[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo ;;
  asan)
    dir=build-asan
    cmake -S . -B "$dir" "${common[@]}" -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZER=address
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ;;
  tsan)
    dir=build-tsan
    cmake -S . -B "$dir" "${common[@]}" -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZER=thread \
      -DCMAKE_CXX_COMPILER=clang++-14 -DFERRY_BUILD_BENCHMARKS=OFF -DFERRY_BUILD_TOOLS=OFF
    # TSan sees one address space: multi-process tests cannot be checked by it. Debian's gRPC
    # and Abseil are not built with TSan, so it cannot see their synchronisation and reports
    # races inside them (their event engine's epoll, Abseil's deadlock graph): the gRPC tests
    # run in the default and ASan+UBSan builds instead. Debian's paho (C) is not instrumented
    # either, and the MQTT transport hands every publish across paho's threads: the MQTT tests
    # (and the Mosquitto fixture's) likewise.
    ctest_args+=(-L "unit|stress|transport" -LE script -E "[Gg]rpc|[Mm]qtt|Mosquitto")
    export TSAN_OPTIONS=halt_on_error=1 ;;
  soak)
    dir=build
    cmake -S . -B "$dir" "${common[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    export FERRY_SOAK_SECONDS=${FERRY_SOAK_SECONDS:-600}
    ctest_args=(--output-on-failure --verbose -R "^Load.SoakMemoryStaysFlat$" --timeout $((FERRY_SOAK_SECONDS + 300))) ;;
  fuzz)
    dir=build-fuzz
    cmake -S . -B "$dir" "${common[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
      -DFERRY_SANITIZER=fuzzer -DCMAKE_CXX_COMPILER=clang++-14 -DFERRY_BUILD_BENCHMARKS=OFF -DFERRY_BUILD_TOOLS=OFF
    exec bash scripts/fuzz.sh "$dir" "$@" ;;
  *)
    echo "usage: scripts/test.sh [default|asan|tsan|fuzz|soak] [ctest args...]" >&2
    exit 2 ;;
esac
cmake --build "$dir" -j"$jobs"
ctest --test-dir "$dir" "${ctest_args[@]}" "$@"
