# SPDX-License-Identifier: Apache-2.0
# Sourced by the script tests (tests/scripts/*_test.sh), which set $name first: how they
# report, and how they wait for a background process to say something.

# fail MESSAGE: one line on stderr naming the test, exit 1.
fail() {
  echo "$name: FAIL: $*" >&2
  exit 1
}
# pass MESSAGE: one TAP-like line.
pass() { echo "ok - $*"; }
# wait_for FILE TEXT: until FILE contains TEXT (10 s at most), else fail.
wait_for() {
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  fail "no '$2' in $1: $(cat "$1" 2>/dev/null)"
}
