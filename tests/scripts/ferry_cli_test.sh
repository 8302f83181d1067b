#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Exercises the ferry command-line tool (recv, send, echo) over loopback TCP (and TLS when the
# openssl command is present). The binary comes from $FERRY (default build/bin/ferry).
set -euo pipefail

name=ferry_cli_test
FERRY=${FERRY:-build/bin/ferry}
T=20 # seconds allowed for any one step

[[ -x $FERRY ]] || {
  echo "$name: no executable ferry at '$FERRY' (set FERRY=path/to/ferry)" >&2
  exit 1
}

work=$(mktemp -d /tmp/ferry_cli_test.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

. "$(dirname "$0")/common.sh" # fail, pass, wait_for

ferry() { timeout "$T" "$FERRY" "$@"; }

# start_server NAME ARGS...: runs "ferry ARGS..." in the background, stdout to $work/NAME.out and
# stderr to $work/NAME.err; sets server_pid and server_url once it prints "listening <url>".
start_server() {
  local tag=$1 line='' i
  shift
  "$FERRY" "$@" >"$work/$tag.out" 2>"$work/$tag.err" &
  server_pid=$!
  pids+=("$server_pid")
  for ((i = 0; i < T * 10; i++)); do
    line=$(grep -m1 '^listening ' "$work/$tag.err" 2>/dev/null || true)
    [[ -n $line ]] && break
    kill -0 "$server_pid" 2>/dev/null || fail "$tag exited before listening: $(cat "$work/$tag.err")"
    sleep 0.1
  done
  [[ -n $line ]] || fail "$tag did not print 'listening' within ${T}s"
  server_url=${line#listening }
  [[ $server_url =~ ^(tcp|tls)://127\.0\.0\.1:[1-9][0-9]*$ ]] || fail "$tag: bad listening line '$line'"
}

# wait_exit PID: waits (at most T seconds) for PID to exit; sets status to its exit code.
wait_exit() {
  local pid=$1 i
  for ((i = 0; i < T * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$pid" 2>/dev/null && fail "process $pid still running after ${T}s"
  status=0
  wait "$pid" || status=$?
}

# expect_fail CODE PATTERN ARGS...: "ferry ARGS..." exits with CODE and stderr matches PATTERN.
expect_fail() {
  local code=$1 pattern=$2 rc=0
  shift 2
  ferry "$@" >"$work/fail.out" 2>"$work/fail.err" || rc=$?
  [[ $rc -eq $code ]] || fail "'ferry $*' exited $rc, expected $code; stderr: $(cat "$work/fail.err")"
  grep -Eq -- "$pattern" "$work/fail.err" ||
    fail "'ferry $*': stderr does not match '$pattern': $(cat "$work/fail.err")"
}

uuid='[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}'

# --- recv --json: text, a stdin line and binary (base64); --id is the peer the server sees ---
start_server json recv tcp://127.0.0.1:0 --count 3 --json
ferry send "$server_url" hello --id 01234567-89ab-4def-8123-456789abcdef
printf 'w\xc3\xb6rld\n' | ferry send "$server_url" -
printf '\x00\x01\xfe\xff' | ferry send "$server_url" --whole
wait_exit "$server_pid"
[[ $status -eq 0 ]] || fail "recv --count 3 exited $status: $(cat "$work/json.err")"
mapfile -t lines <"$work/json.out"
[[ ${#lines[@]} -eq 3 ]] || fail "recv --json printed ${#lines[@]} lines, expected 3: $(cat "$work/json.out")"
[[ ${lines[0]} == '{"peer":"01234567-89ab-4def-8123-456789abcdef","size":5,"text":"hello"}' ]] ||
  fail "line 1: ${lines[0]}"
[[ ${lines[1]} =~ ^\{\"peer\":\"$uuid\",\"size\":6,\"text\":\"wörld\"\}$ ]] || fail "line 2: ${lines[1]}"
[[ ${lines[2]} =~ ^\{\"peer\":\"$uuid\",\"size\":4,\"base64\":\"AAH\+/w==\"\}$ ]] || fail "line 3: ${lines[2]}"
pass "recv --json: text, stdin line, binary as base64, --id"

# --- default output, line mode with --count, and the send --json summary ---
start_server text recv tcp://127.0.0.1:0 --count 8
summary=$(printf 'a\nb\n' | ferry send "$server_url" - --count 3 --json)
[[ $summary =~ ^\{\"sent\":6,\"bytes\":6,\"seconds\":[0-9.e+-]+\}$ ]] || fail "send --json summary: $summary"
printf 'a\x01b' | ferry send "$server_url" --whole
head -c 100 /dev/zero | ferry send "$server_url" --whole
wait_exit "$server_pid"
[[ $status -eq 0 ]] || fail "recv --count 8 exited $status"
expected=$'a\na\na\nb\nb\nb\n[binary 3 bytes] 610162\n[binary 100 bytes] '
expected+="$(printf '0%.0s' {1..32}) $(printf '0%.0s' {1..32}) $(printf '0%.0s' {1..32}) $(printf '0%.0s' {1..32}) ..."
[[ $(cat "$work/text.out") == "$expected" ]] || fail "default output:"$'\n'"$(cat "$work/text.out")"
pass "recv default output (text lines, hex for binary), send - --count, send --json"

# --- --raw round-trips binary bytes exactly (3 MiB: several wire chunks) ---
head -c $((3 << 20)) /dev/urandom >"$work/blob"
start_server raw recv tcp://127.0.0.1:0 --count 1 --raw
ferry send "$server_url" --whole <"$work/blob"
wait_exit "$server_pid"
[[ $status -eq 0 ]] || fail "recv --raw exited $status"
cmp "$work/blob" "$work/raw.out" || fail "recv --raw output differs from what was sent"
pass "recv --raw round-trips 3 MiB of random bytes"

# --- echo: stays up, accepts sends, exits after --count with its summary ---
start_server echo echo tcp://127.0.0.1:0 --count 4 --json
ferry send "$server_url" ping --count 3
ferry send "$server_url" pong
wait_exit "$server_pid"
[[ $status -eq 0 ]] || fail "echo --count 4 exited $status: $(cat "$work/echo.err")"
[[ $(cat "$work/echo.out") =~ ^\{\"echoed\":4,\"undelivered\":[0-4],\"bytes\":16,\"seconds\":[0-9.e+-]+\}$ ]] ||
  fail "echo summary: $(cat "$work/echo.out")"
pass "echo answers four messages and exits"

# --- SIGTERM and SIGINT: close cleanly, exit 0 ---
start_server term recv tcp://127.0.0.1:0
closed_url=$server_url
kill -TERM "$server_pid"
wait_exit "$server_pid"
[[ $status -eq 0 ]] || fail "recv after SIGTERM exited $status"
start_server int echo tcp://127.0.0.1:0
ferry send "$server_url" still-up
kill -INT "$server_pid"
wait_exit "$server_pid"
[[ $status -eq 0 ]] || fail "echo after SIGINT exited $status"
pass "SIGTERM and SIGINT end the servers with status 0"

# --- failures: closed port within --timeout, bad URL, bad id, bad usage ---
start=$SECONDS
expect_fail 1 "^ferry: .*${closed_url#tcp://}" send "$closed_url" hi --timeout 1000
((SECONDS - start <= 5)) || fail "send to a closed port took $((SECONDS - start))s with --timeout 1000"
expect_fail 1 "^ferry: endpoint 'tcp://127.0.0.1:notaport': .*port" send tcp://127.0.0.1:notaport hi
expect_fail 1 "^ferry: endpoint 'bogus://x': .*scheme 'bogus'" recv bogus://x
expect_fail 1 "^ferry: .*not-a-uuid" send tcp://127.0.0.1:1 hi --id not-a-uuid
expect_fail 2 "URL is required" send
expect_fail 2 "excludes" recv tcp://127.0.0.1:0 --raw --json
expect_fail 2 "--whole" send tcp://127.0.0.1:1 text --whole
expect_fail 2 "tls-cert" recv tls://127.0.0.1:0
expect_fail 2 "unknown unit" recv tcp://127.0.0.1:0 --message-size 5X
pass "errors: closed port, bad URL, bad id (exit 1); bad usage (exit 2)"

# --- TLS: a self-signed server certificate, verified by the client ---
if command -v openssl >/dev/null; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$work/key.pem" -out "$work/cert.pem" >/dev/null 2>&1 || fail "openssl could not make a certificate"
  start_server tls recv tls://127.0.0.1:0 --count 1 --json --tls-cert "$work/cert.pem" --tls-key "$work/key.pem"
  ferry send "$server_url" secret --tls-ca "$work/cert.pem" --tls-server-name localhost
  wait_exit "$server_pid"
  [[ $status -eq 0 ]] || fail "recv over tls exited $status: $(cat "$work/tls.err")"
  [[ $(cat "$work/tls.out") =~ \"text\":\"secret\" ]] || fail "tls output: $(cat "$work/tls.out")"
  pass "tls:// with --tls-cert/--tls-key and --tls-ca"
else
  echo "ok - tls:// skipped (no openssl command)"
fi

echo "$name: all passed"
