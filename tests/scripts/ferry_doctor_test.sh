#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Exercises `ferry doctor`: each check's verdict and fix, on this machine and on fakes of what it
# reads (a hugepage sysfs without free pages, a mount table without hugetlbfs, transparent
# hugepages off, an unsafe rendezvous directory, a low descriptor limit, and as root a 64 MiB
# /dev/shm like a container's). The binary comes from $FERRY (default build/bin/ferry).
set -euo pipefail

name=ferry_doctor_test
FERRY=${FERRY:-build/bin/ferry}
[[ -x $FERRY ]] || {
  echo "$name: no executable ferry at '$FERRY' (set FERRY=path/to/ferry)" >&2
  exit 1
}
work=$(mktemp -d /tmp/ferry_doctor_test.XXXXXX)
mounted=
cleanup() {
  [[ -n $mounted ]] && umount "$mounted" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. "$(dirname "$0")/common.sh" # fail, pass, wait_for

# Runs the doctor with the given environment; sets $out (JSON) and $rc.
doctor() {
  rc=0
  out=$(env "$@" "$FERRY" doctor --json) || rc=$?
}
# The JSON object of one check, as printed ("name" first, then "status", "detail", "fix").
check_of() { grep -o "{\"name\":\"$1\",[^}]*}" <<<"$out" || true; }
expect() { # NAME STATUS [TEXT-IN-FIX]
  local c
  c=$(check_of "$1")
  [[ -n $c ]] || fail "no check $1 in: $out"
  [[ $c == *"\"status\":\"$2\""* ]] || fail "$1 is not $2: $c"
  if [[ $# -ge 3 ]]; then [[ $c == *"$3"* ]] || fail "$1's fix does not say '$3': $c"; fi
}

# This machine: every check is reported, and the human form names them with their fixes.
doctor
[[ $rc -eq 0 || $rc -eq 1 ]] || fail "exit $rc"
for c in dev-shm memfd hugepages hugetlbfs transparent-hugepages limits ipc-namespace net-namespace shm-directory; do
  [[ -n $(check_of "$c") ]] || fail "no check $c in: $out"
done
expect memfd ok
human=$("$FERRY" doctor || true)
grep -q "^ferry doctor: 9 checks" <<<"$human" || fail "human output: $human"
pass "all nine checks reported (exit $rc)"

# A hugepage pool with nothing free, no hugetlbfs, transparent hugepages off.
mkdir -p "$work/sysfs/hugepages-2048kB" "$work/thp"
echo 0 >"$work/sysfs/hugepages-2048kB/nr_hugepages"
echo 0 >"$work/sysfs/hugepages-2048kB/free_hugepages"
printf 'proc /proc proc rw 0 0\ntmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0\n' >"$work/mounts"
echo "always madvise [never]" >"$work/thp/enabled"
doctor FERRY_HUGEPAGES_SYSFS="$work/sysfs" FERRY_PROC_MOUNTS="$work/mounts" FERRY_THP_SYSFS="$work/thp"
expect hugepages warn "scripts/hugepages.sh reserve"
expect hugetlbfs warn "scripts/hugepages.sh mount"
expect transparent-hugepages warn "echo madvise"
[[ $rc -eq 0 || $(grep -c '"status":"fail"' <<<"$out") -gt 0 ]] || fail "warnings alone exit $rc"
pass "no free hugepages, no hugetlbfs, THP off: warnings with their fixes"

# And a pool with pages, a mount: both fine.
echo 32 >"$work/sysfs/hugepages-2048kB/nr_hugepages"
echo 30 >"$work/sysfs/hugepages-2048kB/free_hugepages"
echo "nodev /dev/hugepages hugetlbfs rw,pagesize=2M 0 0" >>"$work/mounts"
doctor FERRY_HUGEPAGES_SYSFS="$work/sysfs" FERRY_PROC_MOUNTS="$work/mounts"
expect hugepages ok
expect hugetlbfs ok
pass "a pool with free pages and a hugetlbfs mount: ok"

# A default rendezvous directory others can write into: servers refuse it, so a problem (exit
# 1) with the chmod to fix it; the same directory named by FERRY_SHM_DIR is used, so a warning.
mkdir -p "$work/xdg/ferry"
chmod 0777 "$work/xdg/ferry"
doctor -u FERRY_SHM_DIR XDG_RUNTIME_DIR="$work/xdg"
expect shm-directory fail "chmod 700 $work/xdg/ferry"
[[ $rc -eq 1 ]] || fail "a problem exits $rc, not 1"
doctor FERRY_SHM_DIR="$work/xdg/ferry"
expect shm-directory warn "chmod 700"
mkdir -m 0700 "$work/closed"
doctor FERRY_SHM_DIR="$work/closed"
expect shm-directory ok
pass "an unsafe default rendezvous directory fails (exit 1) with its fix, a named one warns, a closed one is ok"

# A low descriptor limit.
rc=0
out=$(ulimit -n 256 && "$FERRY" doctor --json) || rc=$?
expect limits warn "ulimit -n"
pass "open files 256: a warning with the ulimit to raise it"

# A container-sized /dev/shm (needs root to mount a tmpfs).
if [[ $(id -u) -eq 0 ]] && mkdir -p "$work/shm" && mount -t tmpfs -o size=64m,mode=1777 tmpfs "$work/shm" 2>/dev/null; then
  mounted="$work/shm"
  doctor FERRY_DOCTOR_DEV_SHM="$work/shm"
  expect dev-shm warn "--shm-size"
  [[ $(check_of dev-shm) == *"64.0 MiB"* ]] || fail "the size is not reported: $(check_of dev-shm)"
  umount "$work/shm"
  mounted=
  chmod 0755 "$work/shm"
  doctor FERRY_DOCTOR_DEV_SHM="$work/shm"
  expect dev-shm fail "chmod 1777"
  pass "a 64 MiB /dev/shm: a warning with --shm-size; one not open to all: a problem"
else
  echo "ok - (skipped: mounting a 64 MiB tmpfs needs root) a container-sized /dev/shm"
fi
