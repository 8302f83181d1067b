#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Exercises ferry-kv, the example rpc service, end to end: serve on auto:// (shared memory for
# this host's clients) and reach the same server over tcp://; put, get, del, a missing key
# (exit 4), bench, and a graceful stop on SIGTERM. The binary comes from $FERRY_KV.
set -euo pipefail

name=ferry_kv_test
KV=${FERRY_KV:-build/bin/ferry-kv}
T=20 # seconds allowed for any one step

[[ -x $KV ]] || {
  echo "$name: no executable ferry-kv at '$KV' (set FERRY_KV=path/to/ferry-kv)" >&2
  exit 1
}
work=$(mktemp -d /tmp/ferry_kv_test.XXXXXX)
server=
cleanup() {
  [[ -n $server ]] && kill -9 "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. "$(dirname "$0")/common.sh" # fail, pass, wait_for

timeout $T "$KV" serve auto://127.0.0.1:0 >"$work/out" 2>"$work/err" &
server=$!
for _ in $(seq 200); do grep -q listening "$work/out" && break; sleep 0.05; done
url=$(awk '/listening/{print $2}' "$work/out")
[[ $url == auto://127.0.0.1:* ]] || fail "no 'listening auto://...' line: $(cat "$work/out" "$work/err")"
tcp="tcp://127.0.0.1:${url##*:}"
pass "serve listens on $url"

timeout $T "$KV" put "$url" colour "blue green" || fail "put"
[[ $(timeout $T "$KV" get "$url" colour) == "blue green" ]] || fail "get after put"
[[ $(timeout $T "$KV" get "$tcp" colour) == "blue green" ]] || fail "get over tcp://"
pass "put, then get locally and over TCP"

rc=0
timeout $T "$KV" get "$url" missing 2>"$work/miss" || rc=$?
[[ $rc -eq 4 ]] || fail "a missing key exits $rc, not 4"
grep -q "no key 'missing'" "$work/miss" || fail "the missing key's message: $(cat "$work/miss")"
pass "a missing key: exit 4, '$(cat "$work/miss")'"

timeout $T "$KV" del "$tcp" colour || fail "del over tcp"
rc=0
timeout $T "$KV" get "$url" colour 2>/dev/null || rc=$?
[[ $rc -eq 4 ]] || fail "get after del exits $rc, not 4"
pass "del"

timeout $T "$KV" bench "$url" --count 2000 | grep -Eq "^2000 get calls of a 64 B value: p50 [0-9.]+ us" ||
  fail "bench printed no figures"
pass "bench"

kill -TERM "$server"
rc=0
wait "$server" || rc=$?
server=
[[ $rc -eq 0 ]] || fail "serve exits $rc on SIGTERM"
grep -q "stopped after" "$work/err" || fail "serve said nothing on stopping: $(cat "$work/err")"
pass "a graceful stop on SIGTERM: $(cat "$work/err")"
