#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Exercises ferry-shm ls and gc: a named ring whose producer is alive, then SIGKILLed (stale:
# listed with its dead creator, removed by gc, never by --dry-run); a live one gc keeps; a file
# named like a segment that is not one (listed, never removed); an shm:// server's rendezvous
# socket while it listens (its pid) and after a SIGKILL (stale, removed). Binaries from
# $FERRY_SHM, $FERRY_TEST_PEER and $FERRY.
set -euo pipefail

name=ferry_shm_test
SHM=${FERRY_SHM:-build/bin/ferry-shm}
PEER=${FERRY_TEST_PEER:-build/bin/ferry_test_peer}
FERRY=${FERRY:-build/bin/ferry}
for b in "$SHM" "$PEER" "$FERRY"; do
  [[ -x $b ]] || { echo "$name: no executable at '$b' (set FERRY_SHM, FERRY_TEST_PEER, FERRY)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/ferry_shm_test.XXXXXX)
export FERRY_SHM_DIR=$work/dir # the rendezvous sockets of this test only
mkdir -m 0700 "$FERRY_SHM_DIR"
tag=test-shm-$$  # ferry.test-*: the name the conformance tests leave out of their /dev/shm checks
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do { kill -9 "$p" && wait "$p"; } 2>/dev/null || true; done
  rm -f /dev/shm/ferry.$tag-*
  rm -rf "$work"
}
trap cleanup EXIT
. "$(dirname "$0")/common.sh" # fail, pass, wait_for
seg_of() { "$SHM" ls --json | grep -o "{\"name\":\"$1\",[^]]*\"stale\":[a-z]*}" || true; }

# A ring with a live producer (it fills the ring and waits for a consumer that never comes).
"$PEER" produce "$tag-live" 1000000000 1 --create >"$work/live.out" 2>&1 &
live=$!
pids+=("$live")
"$PEER" produce "$tag-dead" 1000000000 1 --create >"$work/dead.out" 2>&1 &
dead=$!
pids+=("$dead")
wait_for "$work/live.out" ready
wait_for "$work/dead.out" ready
s=$(seg_of "$tag-live")
[[ $s == *"\"creator\":{\"pid\":$live,\"alive\":true}"* ]] || fail "live segment: $s"
[[ $s == *'"kind":"byte"'* && $s == *'"stale":false'* && $s == *'"consumer":null'* ]] || fail "live segment: $s"
human=$("$SHM" ls)
grep -q "$tag-live .*creator $live " <<<"$human" || fail "ls: $human"
pass "ls: a live ring with its creator pid ($live), kind, no consumer"

kill -9 "$dead"
wait "$dead" 2>/dev/null || true
s=$(seg_of "$tag-dead")
[[ $s == *"\"creator\":{\"pid\":$dead,\"alive\":false}"* && $s == *'"stale":true'* ]] || fail "killed segment: $s"
grep -q "$tag-dead .*(dead).*STALE" <<<"$("$SHM" ls)" || fail "ls does not mark it stale"
pass "ls: the SIGKILLed producer's ring is stale, its creator dead"

# A file named like a segment that is not one.
head -c 8192 /dev/urandom >"/dev/shm/ferry.$tag-junk"
s=$("$SHM" ls --json | grep -o "{\"name\":\"$tag-junk\",[^}]*}" || true)
[[ $s == *'"valid":false'* ]] || fail "junk: $s"
pass "ls: a file that is not a Ferry segment is listed as such"

# An shm:// server listening, and one SIGKILLed.
"$FERRY" recv "shm://$tag-up" 2>"$work/up.err" >/dev/null &
up=$!
pids+=("$up")
"$FERRY" recv "shm://$tag-down" 2>"$work/down.err" >/dev/null &
down=$!
pids+=("$down")
wait_for "$work/up.err" listening
wait_for "$work/down.err" listening
kill -9 "$down"
wait "$down" 2>/dev/null || true
j=$("$SHM" ls --json)
[[ $j == *"{\"name\":\"$tag-up\",\"path\":\"$FERRY_SHM_DIR/$tag-up.sock\",\"uid\":$(id -u),\"listening\":true,\"server_pid\":$up}"* ]] ||
  fail "listening socket: $j"
[[ $j == *"{\"name\":\"$tag-down\",\"path\":\"$FERRY_SHM_DIR/$tag-down.sock\",\"uid\":$(id -u),\"listening\":false"* ]] ||
  fail "dead server's socket: $j"
pass "ls: a listening socket with its server's pid ($up), a killed server's socket nobody listens on"

sleep 2.1 # gc leaves sockets younger than 2 s alone
"$SHM" gc --dry-run --prefix "$tag" >"$work/dry"
grep -q "would remove /dev/shm/ferry.$tag-dead" "$work/dry" || fail "dry run: $(cat "$work/dry")"
grep -q "would remove $FERRY_SHM_DIR/$tag-down.sock" "$work/dry" || fail "dry run: $(cat "$work/dry")"
[[ -e /dev/shm/ferry.$tag-dead && -S $FERRY_SHM_DIR/$tag-down.sock ]] || fail "--dry-run removed something"
! grep -q "$tag-live\|$tag-junk\|$tag-up" "$work/dry" || fail "dry run would remove what is alive: $(cat "$work/dry")"
pass "gc --dry-run names the stale ring and socket and removes nothing"

"$SHM" gc --prefix "$tag" >"$work/gc"
[[ ! -e /dev/shm/ferry.$tag-dead ]] || fail "the stale ring is still there"
[[ ! -e $FERRY_SHM_DIR/$tag-down.sock ]] || fail "the stale socket is still there"
[[ -e /dev/shm/ferry.$tag-live && -e /dev/shm/ferry.$tag-junk && -S $FERRY_SHM_DIR/$tag-up.sock ]] ||
  fail "gc removed something alive or not Ferry's: $(cat "$work/gc")"
kill -0 "$live" && kill -0 "$up" || fail "a live process died"
pass "gc removes the stale ring and socket, keeps the live ones and the foreign file"
# (--prefix: other tests' segments, stale on purpose, are not this test's to remove.)
