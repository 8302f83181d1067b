#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Exercises scripts/hugepages.sh against the real kernel (needs root; exit 77 = skipped).
# Restores the hugepage pools and removes every mount it made, even on failure.
set -uo pipefail # no -e: every step checks exit statuses itself

name=hugepages_test
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=${HUGEPAGES_SCRIPT:-$here/../../scripts/hugepages.sh}
SYS=/sys/kernel/mm/hugepages
SYS2M=$SYS/hugepages-2048kB
SYS1G=$SYS/hugepages-1048576kB
T=20 # seconds allowed per step

if [[ $EUID -ne 0 ]]; then
  echo "SKIP: needs root"
  exit 77
fi
if [[ ! -d $SYS2M ]] || ! grep -qw hugetlbfs /proc/filesystems; then
  echo "SKIP: kernel has no 2M hugepages/hugetlbfs"
  exit 77
fi
[[ -r $SCRIPT ]] || {
  echo "$name: cannot find $SCRIPT" >&2
  exit 1
}

orig_2m=$(<"$SYS2M/nr_hugepages")
orig_1g=''
[[ -d $SYS1G ]] && orig_1g=$(<"$SYS1G/nr_hugepages")
work=$(mktemp -d /tmp/hugepages_test.XXXXXX)
chmod 755 "$work"
mnt=$work/mnt     # hugetlbfs mount point under test
other=$work/other # gets a tmpfs, to test refusing foreign filesystems
mkdir -p "$mnt" "$other"
cp "$SCRIPT" "$work/hugepages.sh" # readable copy for the unprivileged user
chmod 755 "$work/hugepages.sh"

is_mounted() { # is_mounted DIR: any mount at DIR (paths under $work need no unescaping)
  local _ dir
  while read -r _ dir _; do [[ $dir == "$1" ]] && return 0; done </proc/mounts
  return 1
}

mount_line() { # mount_line DIR: last /proc/mounts line for DIR
  local line dir found=''
  while read -r line; do
    read -r _ dir _ <<<"$line"
    [[ $dir == "$1" ]] && found=$line
  done </proc/mounts
  printf '%s' "$found"
}

restore() {
  local d ok=0
  for d in "$mnt" "$other"; do
    rm -f "$mnt/page" "$mnt/by_nobody" 2>/dev/null
    while is_mounted "$d"; do
      umount "$d" || { echo "$name: could not unmount $d" >&2; ok=1; break; }
    done
  done
  # Pages another process still maps only leave the pool when it lets go: retry for 10 s.
  local tries
  for tries in $(seq 100); do
    echo "$orig_2m" >"$SYS2M/nr_hugepages" 2>/dev/null || true
    [[ $(<"$SYS2M/nr_hugepages") == "$orig_2m" ]] && break
    sleep 0.1
  done
  [[ $(<"$SYS2M/nr_hugepages") == "$orig_2m" ]] || {
    echo "$name: could not restore 2M nr_hugepages to $orig_2m" >&2
    ok=1
  }
  if [[ -n $orig_1g ]]; then
    echo "$orig_1g" >"$SYS1G/nr_hugepages" 2>/dev/null || true
    [[ $(<"$SYS1G/nr_hugepages") == "$orig_1g" ]] || {
      echo "$name: could not restore 1G nr_hugepages to $orig_1g" >&2
      ok=1
    }
  fi
  return "$ok"
}

on_exit() {
  local rc=$?
  restore || rc=1
  if ! is_mounted "$mnt" && ! is_mounted "$other"; then
    rm -rf --one-file-system "$work"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

nobody_cmd=()
if command -v setpriv >/dev/null; then
  nobody_cmd=(setpriv --reuid=65534 --regid=65534 --clear-groups)
elif command -v runuser >/dev/null; then
  nobody_cmd=(runuser -u nobody --)
fi

# run ARGS...: runs the script under a timeout; sets OUT, ERR, RC.
run() {
  OUT=$(timeout "$T" bash "$SCRIPT" "$@" 2>"$work/err")
  RC=$?
  ERR=$(<"$work/err")
}
run_as_nobody() {
  OUT=$(timeout "$T" "${nobody_cmd[@]}" bash "$work/hugepages.sh" "$@" 2>"$work/err")
  RC=$?
  ERR=$(<"$work/err")
}
nr2m() { cat "$SYS2M/nr_hugepages"; }
free2m() { cat "$SYS2M/free_hugepages"; }

why() { WHY+="    $*"$'\n'; } # reasons, printed after the FAIL line
want_rc() {
  [[ $RC == "$1" ]] && return 0
  why "exit status $RC, expected $1"
  return 1
}
want_out() { # want_out PATTERN: glob on stdout
  [[ $OUT == *$1* ]] && return 0
  why "stdout lacks '$1'"
  return 1
}
want_err() {
  [[ $ERR == *$1* ]] && return 0
  why "stderr lacks '$1'"
  return 1
}

passed=0 failed=0
step() { # step DESCRIPTION FUNCTION
  OUT='' ERR='' RC='' WHY=''
  if "$2"; then
    passed=$((passed + 1))
    echo "PASS: $1"
  else
    failed=$((failed + 1))
    echo "FAIL: $1"
    [[ -n $RC ]] && why "last run: exit $RC"
    [[ -n $OUT ]] && why "stdout: ${OUT//$'\n'/$'\n      '}"
    [[ -n $ERR ]] && why "stderr: ${ERR//$'\n'/$'\n      '}"
    printf '%s' "$WHY"
  fi
}

# --- steps ---------------------------------------------------------------------------------

t_help() {
  run --help
  want_rc 0 && want_out "Usage:" && want_out "reserve N"
}

t_status() {
  run status
  want_rc 0 && want_out "Hugepage pools" && want_out "2M" && want_out "hugetlbfs mounts" &&
    want_out "Transparent hugepages"
}

t_status_json() {
  run status --json
  want_rc 0 || return 1
  [[ $OUT == "{"*"}" && $OUT != *$'\n'* ]] || {
    why "not a one-line JSON object"
    return 1
  }
  if command -v python3 >/dev/null; then
    python3 -c 'import json,sys; json.load(sys.stdin)' <<<"$OUT" || {
      why "python3 rejected the JSON"
      return 1
    }
    python3 -c '
import json, sys
d = json.loads(sys.argv[1])
p = {x["size"]: x for x in d["pools"]}
assert p["2M"]["size_kb"] == 2048, p
assert p["2M"]["total"] == int(sys.argv[2]), (p["2M"], sys.argv[2])
assert isinstance(d["mounts"], list)
assert "enabled" in d["transparent_hugepage"]
' "$OUT" "$(nr2m)" || {
      why "JSON content does not match sysfs"
      return 1
    }
  fi
}

t_usage_errors() {
  local args
  for args in "frobnicate" "status --bogus" "reserve abc" "reserve" "reserve 1 --size 3Q" "status --size 2M"; do
    # shellcheck disable=SC2086 # word splitting intended
    run $args
    [[ $RC == 2 && -z $OUT && $ERR == *Usage:* ]] || {
      why "'$args': exit $RC (want 2), usage on stderr expected"
      return 1
    }
  done
}

pool_before=''
t_reserve() {
  run reserve 4 --size 2M
  want_rc 0 || return 1
  pool_before=$(nr2m)
  ((pool_before >= 4)) || {
    why "pool is $pool_before after reserve 4"
    return 1
  }
}

t_reserve_raise_only() {
  run reserve 2
  want_rc 0 && want_out "nothing to do" || return 1
  [[ $(nr2m) == "$pool_before" ]] || {
    why "pool changed from $pool_before to $(nr2m)"
    return 1
  }
}

t_release() {
  run release 1 --size 2M
  want_rc 0 || return 1
  [[ $(nr2m) == $((pool_before - 1)) ]] || {
    why "pool is $(nr2m), expected $((pool_before - 1))"
    return 1
  }
  run reserve 4 # back up, so a page is free for the fallocate step
  want_rc 0
}

t_mount() {
  run mount "$mnt" --size 2M
  want_rc 0 || return 1
  local line
  line=$(mount_line "$mnt")
  [[ $line == *" hugetlbfs "* && $line == *pagesize=2M* && $line == *mode=1777* ]] || {
    why "/proc/mounts: '${line:-no entry for $mnt}'"
    return 1
  }
}

t_mount_again() {
  run mount "$mnt"
  want_rc 0 && want_out "already mounted" || return 1
  local n
  n=$(grep -c " $mnt hugetlbfs " /proc/mounts)
  [[ $n == 1 ]] || {
    why "$n hugetlbfs entries at $mnt, expected 1"
    return 1
  }
}

t_refuse_foreign() {
  timeout "$T" mount -t tmpfs -o size=1M ferry-test "$other" || {
    why "could not mount a tmpfs for the test"
    return 1
  }
  run mount "$other"
  want_rc 1 && want_err "tmpfs" && want_err "refusing" || return 1
  run unmount "$other"
  want_rc 1 && want_err "not hugetlbfs" || return 1
  [[ $(mount_line "$other") == *" tmpfs "* ]] || {
    why "tmpfs at $other disappeared"
    return 1
  }
  timeout "$T" umount "$other"
}

t_write_page() {
  local before after
  before=$(free2m)
  timeout "$T" fallocate -l 2M "$mnt/page" || {
    why "fallocate failed (free pages: $before)"
    return 1
  }
  after=$(free2m)
  [[ $(stat -c %s "$mnt/page") == 2097152 && $after == $((before - 1)) ]] || {
    why "size $(stat -c %s "$mnt/page"), free $before -> $after"
    return 1
  }
}

t_nobody_creates() {
  ((${#nobody_cmd[@]})) || {
    why "neither setpriv nor runuser available"
    return 1
  }
  timeout "$T" "${nobody_cmd[@]}" touch "$mnt/by_nobody" || {
    why "nobody cannot create a file in the mode-1777 mount"
    return 1
  }
  rm -f "$mnt/by_nobody"
}

t_release_in_use() {
  local nr free resv busy
  nr=$(nr2m) free=$(free2m) resv=$(<"$SYS2M/resv_hugepages")
  busy=$((nr - free + resv))
  run release "$nr"
  want_rc 3 && want_err "in use" || return 1
  [[ $(nr2m) == "$busy" ]] || {
    why "pool is $(nr2m), expected $busy (pages in use)"
    return 1
  }
  [[ -s $mnt/page ]] || {
    why "the in-use page file vanished"
    return 1
  }
  rm -f "$mnt/page"
}

t_unmount() {
  run unmount "$mnt"
  want_rc 0 || return 1
  ! is_mounted "$mnt" || {
    why "$mnt still mounted"
    return 1
  }
}

t_unmount_again() {
  run unmount "$mnt"
  want_rc 0 && want_out "nothing is mounted"
}

t_non_root() {
  ((${#nobody_cmd[@]})) || {
    why "neither setpriv nor runuser available"
    return 1
  }
  local before
  before=$(nr2m)
  run_as_nobody reserve $((before + 1))
  want_rc 1 && want_err "needs root: run with sudo" || return 1
  [[ $(nr2m) == "$before" ]] || {
    why "pool changed as nobody"
    return 1
  }
  run_as_nobody status
  want_rc 0 && want_out "Hugepage pools"
}

# Parsing and release arithmetic against a fake sysfs and mount table.
t_fake_sysfs() {
  local fs=$work/fake mounts=$work/fake/mounts
  mkdir -p "$fs/hugepages-2048kB" "$fs/thp"
  local f
  for f in nr_hugepages:10 free_hugepages:4 resv_hugepages:1 surplus_hugepages:0; do
    echo "${f#*:}" >"$fs/hugepages-2048kB/${f%%:*}"
  done
  echo 'always [madvise] never' >"$fs/thp/enabled"
  cat >"$mounts" <<'EOF'
/dev/vda / ext4 rw,relatime 0 0
hugetlbfs /mnt/huge\040pages hugetlbfs rw,relatime,mode=1777,pagesize=1024M 0 0
none /dev/hugepages hugetlbfs rw,relatime 0 0
tmpfs /dev/shm tmpfs rw 0 0
EOF
  export FERRY_HUGEPAGES_SYSFS=$fs FERRY_PROC_MOUNTS=$mounts FERRY_THP_SYSFS=$fs/thp
  run status --json
  local json=$OUT rc=$RC
  run release 5 # 10 total, 6 in use + 1 reserved for a mapping -> may only go down to 7
  local rel_rc=$RC rel_err=$ERR left
  left=$(<"$fs/hugepages-2048kB/nr_hugepages")
  run reserve 1 --size 1G # no 1G pool in the fake sysfs
  unset FERRY_HUGEPAGES_SYSFS FERRY_PROC_MOUNTS FERRY_THP_SYSFS
  [[ $rc == 0 ]] || {
    why "status --json exit $rc"
    return 1
  }
  [[ $json == *'"dir":"/mnt/huge pages","pagesize":"1G","pagesize_kb":1048576,"mode":"1777"'* &&
    $json == *'"dir":"/dev/hugepages","pagesize":"2M"'* && $json != *'"dir":"/dev/shm"'* &&
    $json == *'"total":10,"free":4,"reserved":1,"surplus":0,"in_use":6'* &&
    $json == *'"enabled":"madvise","shmem_enabled":null'* ]] || {
    why "unexpected JSON: $json"
    return 1
  }
  [[ $rel_rc == 3 && $left == 7 && $rel_err == *"released only 3 of 5"* ]] || {
    why "release 5 on fake pool: exit $rel_rc, pool $left (want 3, 7): $rel_err"
    return 1
  }
  want_rc 1 && want_err "not supported"
}

# Opt-in (takes 1 GiB of RAM for a moment): FERRY_TEST_1G=1.
t_1g() {
  run reserve 1 --size 1G
  if [[ $RC == 0 ]]; then
    [[ $(<"$SYS1G/nr_hugepages") -ge 1 ]] || {
      why "1G pool not raised"
      return 1
    }
    run release 1 --size 1G
    want_rc 0 || return 1
  else
    want_rc 3 && want_err "hugepagesz=1G" || return 1
  fi
  [[ $(<"$SYS1G/nr_hugepages") == "$orig_1g" ]] || {
    why "1G pool is $(<"$SYS1G/nr_hugepages"), started at $orig_1g"
    return 1
  }
}

t_restored() {
  restore || return 1
  [[ $(nr2m) == "$orig_2m" ]] || {
    why "2M pool is $(nr2m), started at $orig_2m"
    return 1
  }
  ! grep -q " $work" /proc/mounts || {
    why "mounts left under $work"
    return 1
  }
}

step "--help prints usage" t_help
step "status (human-readable)" t_status
step "status --json is valid JSON matching sysfs" t_status_json
step "bad command/option/argument -> usage on stderr, exit 2" t_usage_errors
step "reserve 4 --size 2M -> pool >= 4" t_reserve
step "reserve 2 is raise-only (pool unchanged)" t_reserve_raise_only
step "release 1 lowers the pool by one" t_release
step "mount $mnt -> hugetlbfs pagesize=2M mode=1777" t_mount
step "mount again is idempotent (exit 0, one mount)" t_mount_again
step "mount/unmount refuse a dir holding another filesystem" t_refuse_foreign
step "fallocate a 2M file in the mount takes one pool page" t_write_page
step "non-root user can create files in the mount" t_nobody_creates
step "release never goes below pages in use (exit 3)" t_release_in_use
step "unmount" t_unmount
step "unmount again is idempotent (exit 0)" t_unmount_again
step "non-root reserve fails with 'needs root'; status works" t_non_root
step "parsing and release floor with fake sysfs/mounts" t_fake_sysfs
if [[ ${FERRY_TEST_1G:-0} == 1 && -n $orig_1g ]]; then
  step "reserve/release 1 --size 1G (granted, or exit 3 with boot hint)" t_1g
fi
step "pools restored and no mounts left" t_restored

echo "$name: $passed passed, $failed failed"
((failed == 0))
