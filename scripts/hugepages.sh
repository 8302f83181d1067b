#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Reserves/releases Linux hugepages and mounts hugetlbfs so Ferry's shared-memory segments can use
# 2M or 1G pages; `status` reports pools, hugetlbfs mounts and transparent-hugepage modes.
set -euo pipefail

prog=${0##*/}
SYSFS=${FERRY_HUGEPAGES_SYSFS:-/sys/kernel/mm/hugepages}
MOUNTS=${FERRY_PROC_MOUNTS:-/proc/mounts}
THP=${FERRY_THP_SYSFS:-/sys/kernel/mm/transparent_hugepage}

usage() {
  cat <<EOF
Usage: $prog COMMAND [ARGS] [OPTIONS]

Manage hugepage pools and hugetlbfs mounts for Ferry's shared-memory transport.

Commands:
  mount [DIR] [--size 2M|1G]  Mount hugetlbfs at DIR with pagesize=SIZE and mode 1777, so
                              non-root users can create files in it. DIR defaults to
                              /dev/hugepages (2M) or /dev/hugepages1G (1G). No-op if a
                              hugetlbfs of that page size is already mounted there.
  unmount DIR                 Unmount the hugetlbfs at DIR. No-op if nothing is mounted there.
  reserve N [--size 2M|1G]    Grow the pool to at least N pages. Never lowers a pool.
  release N [--size 2M|1G]    Shrink the pool by N pages, never below the pages in use.
  status [--json]             Pool counters per page size, hugetlbfs mounts and transparent
                              hugepage modes; --json prints one JSON object.
  -h, --help                  Show this help.

Options:
  --size SIZE   page size, 2M (default) or 1G
  --json        status only: machine-readable output

mount, unmount, reserve and release need root (run with sudo); status does not.

Exit status: 0 success or nothing to do, 1 error, 2 usage error,
             3 partial: the kernel granted fewer pages than requested, or pages in use
               prevented releasing all requested pages.

Environment (for tests):
  FERRY_HUGEPAGES_SYSFS  pool directory        (default /sys/kernel/mm/hugepages)
  FERRY_PROC_MOUNTS      mount table           (default /proc/mounts)
  FERRY_THP_SYSFS        THP settings directory (default /sys/kernel/mm/transparent_hugepage)
EOF
}

info() { printf '%s: %s\n' "$prog" "$*"; }
warn() { printf '%s: warning: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
usage_error() {
  printf '%s: %s\n\n' "$prog" "$*" >&2
  usage >&2
  exit 2
}

need_root() {
  [[ $EUID -eq 0 ]] || die "'$1' needs root: run with sudo"
}

# --- sizes ----------------------------------------------------------------------------------

# size_to_kb 2M -> 2048; accepts K/M/G with optional B, any case. Fails on bad syntax.
size_to_kb() {
  local s=${1^^}
  s=${s%B}
  [[ $s =~ ^([0-9]{1,7})([KMG])$ ]] || return 1
  local n=$((10#${BASH_REMATCH[1]}))
  case ${BASH_REMATCH[2]} in
    K) echo "$n" ;;
    M) echo "$((n * 1024))" ;;
    G) echo "$((n * 1048576))" ;;
  esac
}

kb_to_label() {
  local kb=$1
  if ((kb >= 1048576 && kb % 1048576 == 0)); then
    echo "$((kb / 1048576))G"
  elif ((kb >= 1024 && kb % 1024 == 0)); then
    echo "$((kb / 1024))M"
  else
    echo "${kb}K"
  fi
}

# Page sizes the kernel offers, in kB, ascending.
available_kbs() {
  local d kbs=()
  for d in "$SYSFS"/hugepages-*kB; do
    [[ -d $d ]] || continue
    d=${d##*/hugepages-}
    kbs+=("${d%kB}")
  done
  ((${#kbs[@]})) || return 0
  printf '%s\n' "${kbs[@]}" | sort -n
}

# pool_dir KB -> sysfs directory of that pool; dies if the kernel has no such page size.
pool_dir() {
  local kb=$1 d="$SYSFS/hugepages-${1}kB" have=() k
  if [[ ! -d $d ]]; then
    while read -r k; do [[ -n $k ]] && have+=("$(kb_to_label "$k")"); done < <(available_kbs)
    die "page size $(kb_to_label "$kb") is not supported by this kernel/CPU (no $d; available: ${have[*]:-none})"
  fi
  echo "$d"
}

default_hugepage_kb() {
  local key val _
  if [[ -r /proc/meminfo ]]; then
    while read -r key val _; do
      if [[ $key == Hugepagesize: ]]; then
        echo "$val"
        return 0
      fi
    done </proc/meminfo
  fi
  echo 2048
}

# --- sysfs counters -------------------------------------------------------------------------

# read_line FILE VAR: first line of FILE into VAR; fails (silently) if unreadable.
read_line() {
  local __rl_line=''  # unusual name: printf -v must not hit a local of this function
  IFS= read -r __rl_line 2>/dev/null <"$1" || [[ -n $__rl_line ]] || return 1
  printf -v "$2" '%s' "$__rl_line"
}

read_count() {
  local v=''
  read_line "$1" v || die "cannot read $1"
  [[ $v =~ ^[0-9]+$ ]] || die "unexpected content in $1: '$v'"
  echo "$((10#$v))"
}

# Like read_count but prints nothing (instead of dying) when the value is unavailable.
read_count_opt() {
  local v=''
  read_line "$1" v || return 0
  [[ $v =~ ^[0-9]+$ ]] && echo "$((10#$v))"
  return 0
}

# write_sysfs FILE VALUE: on failure prints the errno text (e.g. "Invalid argument"), returns 1.
write_sysfs() {
  local err
  if ! err=$({ printf '%s\n' "$2" >"$1"; } 2>&1); then
    err=${err##*: }
    printf '%s' "${err:-unknown error}"
    return 1
  fi
}

# --- mount table ----------------------------------------------------------------------------

# /proc/mounts escapes space, tab, newline and backslash as octal.
unescape_into() {
  local __ue_s=$2  # unusual name: printf -v below must not hit this local
  __ue_s=${__ue_s//\\040/ }
  __ue_s=${__ue_s//\\011/$'\t'}
  __ue_s=${__ue_s//\\012/$'\n'}
  __ue_s=${__ue_s//\\134/\\}
  printf -v "$1" '%s' "$__ue_s"
}

# opt_value OPTS KEY -> value of KEY=value in a comma-separated option list; fails if absent.
opt_value() {
  local o opts
  IFS=, read -ra opts <<<"$1"
  for o in "${opts[@]}"; do
    if [[ $o == "$2="* ]]; then
      echo "${o#*=}"
      return 0
    fi
  done
  return 1
}

# Page size in kB of a hugetlbfs mount, from its options (kernel default size if absent).
mount_pagesize_kb() {
  local ps
  if ps=$(opt_value "$1" pagesize) && size_to_kb "$ps"; then
    return 0
  fi
  default_hugepage_kb
}

# find_mount DIR: sets M_FSTYPE/M_OPTS from the topmost mount at DIR; fails if none.
find_mount() {
  local want=$1 dir fstype opts _ found=1
  M_FSTYPE='' M_OPTS=''
  [[ -r $MOUNTS ]] || die "cannot read $MOUNTS"
  while read -r _ dir fstype opts _; do
    unescape_into dir "$dir"
    if [[ $dir == "$want" ]]; then
      M_FSTYPE=$fstype M_OPTS=$opts found=0
    fi
  done <"$MOUNTS"
  return "$found"
}

# Lists hugetlbfs mounts as lines "DIR<TAB>PAGESIZE_KB<TAB>MODE<TAB>OPTIONS".
hugetlbfs_mounts() {
  local dir fstype opts _ mode
  [[ -r $MOUNTS ]] || return 0
  while read -r _ dir fstype opts _; do
    [[ $fstype == hugetlbfs ]] || continue
    unescape_into dir "$dir"
    mode=$(opt_value "$opts" mode) || mode=0755
    printf '%s\t%s\t%s\t%s\n' "${dir//$'\t'/ }" "$(mount_pagesize_kb "$opts")" "$mode" "$opts"
  done <"$MOUNTS"
}

canonical_dir() {
  realpath -m -- "$1" 2>/dev/null || die "invalid directory: $1"
}

# --- commands -------------------------------------------------------------------------------

cmd_mount() {
  local dir=$1 kb=$2 label pdir have_kb out free
  need_root mount
  pdir=$(pool_dir "$kb")
  label=$(kb_to_label "$kb")
  grep -qw hugetlbfs /proc/filesystems 2>/dev/null ||
    die "this kernel has no hugetlbfs (not listed in /proc/filesystems)"
  if [[ -z $dir ]]; then
    if ((kb == 2048)); then dir=/dev/hugepages; else dir=/dev/hugepages$label; fi
  fi
  dir=$(canonical_dir "$dir")
  if find_mount "$dir"; then
    if [[ $M_FSTYPE != hugetlbfs ]]; then
      die "$dir already has a $M_FSTYPE filesystem mounted; refusing to mount hugetlbfs over it"
    fi
    have_kb=$(mount_pagesize_kb "$M_OPTS")
    if ((have_kb != kb)); then
      die "$dir already has a hugetlbfs with pagesize=$(kb_to_label "$have_kb") mounted (wanted $label); unmount it first"
    fi
    info "hugetlbfs pagesize=$label already mounted at $dir; nothing to do"
    local mode
    mode=$(opt_value "$M_OPTS" mode) || mode=0755
    [[ $mode == 1777 ]] ||
      warn "existing mount has mode=$mode, so non-root users may not be able to create files in it"
    return 0
  fi
  if [[ -e $dir && ! -d $dir ]]; then
    die "$dir exists and is not a directory"
  fi
  mkdir -p -- "$dir" || die "cannot create $dir"
  if ! out=$(mount -t hugetlbfs -o "pagesize=$label,mode=1777" hugetlbfs "$dir" 2>&1); then
    die "mount of hugetlbfs (pagesize=$label) at $dir failed: ${out:-unknown error}"
  fi
  info "mounted hugetlbfs pagesize=$label at $dir (mode 1777: any user can create files; sticky bit keeps them from deleting each other's)"
  free=$(read_count_opt "$pdir/free_hugepages")
  if [[ $free == 0 ]]; then
    info "note: the $label pool has no free pages; run '$prog reserve N --size $label' before using it"
  fi
}

cmd_unmount() {
  local dir out
  need_root unmount
  dir=$(canonical_dir "$1")
  if ! find_mount "$dir"; then
    info "nothing is mounted at $dir; nothing to do"
    return 0
  fi
  if [[ $M_FSTYPE != hugetlbfs ]]; then
    die "$dir has a $M_FSTYPE filesystem mounted, not hugetlbfs; refusing to unmount it"
  fi
  if ! out=$(umount -- "$dir" 2>&1); then
    die "unmount of $dir failed: ${out:-unknown error}"
  fi
  info "unmounted hugetlbfs at $dir"
}

boot_hint() {
  echo "reserve at boot with the kernel parameters 'hugepagesz=$1 hugepages=$2'"
}

cmd_reserve() {
  local n=$1 kb=$2 pdir label cur got err
  need_root reserve
  pdir=$(pool_dir "$kb")
  label=$(kb_to_label "$kb")
  cur=$(read_count "$pdir/nr_hugepages")
  if ((cur >= n)); then
    info "$label pool already has $cur page(s) (>= $n requested); nothing to do (reserve never lowers a pool)"
    return 0
  fi
  if ! err=$(write_sysfs "$pdir/nr_hugepages" "$n"); then
    local hint=""
    ((kb > 4096)) && hint="; this kernel may not support allocating $label pages at runtime: $(boot_hint "$label" "$n")"
    die "the kernel refused to set $pdir/nr_hugepages to $n: $err$hint"
  fi
  got=$(read_count "$pdir/nr_hugepages")
  if ((got < n)); then
    {
      printf '%s: error: the kernel granted only %d of %d requested %s pages (pool was %d, is now %d; left as granted).\n' \
        "$prog" "$got" "$n" "$label" "$cur" "$got"
      printf '  It could not find enough free physically contiguous memory (fragmentation, or too little RAM).\n'
      printf '  Try: reserve early after boot; run "echo 1 > /proc/sys/vm/compact_memory" and retry;\n'
      printf '  or %s.\n' "$(boot_hint "$label" "$n")"
    } >&2
    exit 3
  fi
  info "raised $label pool from $cur to $got page(s) ($((got * kb / 1024)) MiB); free: $(read_count "$pdir/free_hugepages")"
}

cmd_release() {
  local n=$1 kb=$2 pdir label nr free resv busy want target got err
  need_root release
  pdir=$(pool_dir "$kb")
  label=$(kb_to_label "$kb")
  nr=$(read_count "$pdir/nr_hugepages")
  free=$(read_count "$pdir/free_hugepages")
  resv=$(read_count_opt "$pdir/resv_hugepages")
  # Pages backing mappings plus pages promised to mappings but not yet faulted in.
  busy=$((nr - free + ${resv:-0}))
  ((busy < 0)) && busy=0
  ((busy > nr)) && busy=$nr
  if ((nr == 0)); then
    info "$label pool is empty; nothing to release"
    return 0
  fi
  if ((n == 0)); then
    info "release 0: nothing to do ($label pool has $nr pages)"
    return 0
  fi
  want=$((nr - n))
  ((want < 0)) && want=0
  target=$want
  ((target < busy)) && target=$busy
  if ((target >= nr)); then
    printf '%s: error: could not release any %s pages: all %d are in use or reserved by mappings\n' \
      "$prog" "$label" "$nr" >&2
    exit 3
  fi
  if ! err=$(write_sysfs "$pdir/nr_hugepages" "$target"); then
    die "the kernel refused to set $pdir/nr_hugepages to $target: $err"
  fi
  got=$(read_count "$pdir/nr_hugepages")
  if ((got > target)); then
    printf '%s: error: released only %d of %d requested %s pages: the kernel kept %d (asked for %d)\n' \
      "$prog" "$((nr - got))" "$n" "$label" "$got" "$target" >&2
    exit 3
  fi
  if ((target > want)); then
    printf '%s: error: released only %d of %d requested %s pages: pages in use or reserved by mappings: %d; pool is now %d\n' \
      "$prog" "$((nr - got))" "$n" "$label" "$busy" "$got" >&2
    exit 3
  fi
  if ((n > nr)); then
    info "$label pool had only $nr page(s), fewer than $n; released all of them (pool is now $got)"
  else
    info "released $((nr - got)) $label page(s); pool is now $got"
  fi
}

json_str() {
  local s=$1 out='' c i
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\t'/\\t}
  s=${s//$'\r'/\\r}
  if [[ $s == *[[:cntrl:]]* ]]; then
    for ((i = 0; i < ${#s}; i++)); do
      c=${s:i:1}
      if [[ $c == [[:cntrl:]] ]]; then
        printf -v c '\\u%04x' "'$c"
      fi
      out+=$c
    done
    s=$out
  fi
  printf '"%s"' "$s"
}

json_num() {
  if [[ -n $1 ]]; then printf '%s' "$1"; else printf 'null'; fi
}

# thp_mode FILE -> the [selected] word, or nothing if unavailable.
thp_mode() {
  local line='' re='\[([^]]*)\]'
  read_line "$1" line || return 0
  [[ $line =~ $re ]] && echo "${BASH_REMATCH[1]}"
  return 0
}

cmd_status() {
  local json=$1 kb d label total free resv surp used kbs=() mounts=() m dir pkb mode opts
  local thp_enabled thp_shmem thp_enabled_raw='' thp_shmem_raw=''
  mapfile -t kbs < <(available_kbs)
  mapfile -t mounts < <(hugetlbfs_mounts)
  thp_enabled=$(thp_mode "$THP/enabled")
  thp_shmem=$(thp_mode "$THP/shmem_enabled")
  read_line "$THP/enabled" thp_enabled_raw || true
  read_line "$THP/shmem_enabled" thp_shmem_raw || true

  if ((json)); then
    local o='{"pools":[' sep=''
    for kb in "${kbs[@]}"; do
      d="$SYSFS/hugepages-${kb}kB"
      total=$(read_count_opt "$d/nr_hugepages")
      free=$(read_count_opt "$d/free_hugepages")
      used=''
      [[ -n $total && -n $free ]] && used=$((total - free))
      o+=$(printf '%s{"size":%s,"size_kb":%s,"total":%s,"free":%s,"reserved":%s,"surplus":%s,"in_use":%s}' \
        "$sep" "$(json_str "$(kb_to_label "$kb")")" "$kb" "$(json_num "$total")" "$(json_num "$free")" \
        "$(json_num "$(read_count_opt "$d/resv_hugepages")")" \
        "$(json_num "$(read_count_opt "$d/surplus_hugepages")")" "$(json_num "$used")")
      sep=','
    done
    o+='],"mounts":['
    sep=''
    for m in "${mounts[@]}"; do
      IFS=$'\t' read -r dir pkb mode opts <<<"$m"
      o+=$(printf '%s{"dir":%s,"pagesize":%s,"pagesize_kb":%s,"mode":%s,"options":%s}' \
        "$sep" "$(json_str "$dir")" "$(json_str "$(kb_to_label "$pkb")")" "$pkb" \
        "$(json_str "$mode")" "$(json_str "$opts")")
      sep=','
    done
    o+='],"transparent_hugepage":{'
    if [[ -n $thp_enabled ]]; then o+="\"enabled\":$(json_str "$thp_enabled")"; else o+='"enabled":null'; fi
    if [[ -n $thp_shmem ]]; then o+=",\"shmem_enabled\":$(json_str "$thp_shmem")"; else o+=',"shmem_enabled":null'; fi
    o+='}}'
    printf '%s\n' "$o"
    return 0
  fi

  printf 'Hugepage pools (%s):\n' "$SYSFS"
  if ((${#kbs[@]} == 0)); then
    printf '  none (kernel without hugetlb support?)\n'
  else
    printf '  %-6s %8s %8s %9s %8s %8s\n' size total free reserved surplus in_use
    for kb in "${kbs[@]}"; do
      d="$SYSFS/hugepages-${kb}kB"
      total=$(read_count_opt "$d/nr_hugepages")
      free=$(read_count_opt "$d/free_hugepages")
      resv=$(read_count_opt "$d/resv_hugepages")
      surp=$(read_count_opt "$d/surplus_hugepages")
      used='?'
      [[ -n $total && -n $free ]] && used=$((total - free))
      label=$(kb_to_label "$kb")
      printf '  %-6s %8s %8s %9s %8s %8s\n' "$label" "${total:-?}" "${free:-?}" "${resv:-?}" "${surp:-?}" "$used"
    done
  fi
  printf '\nhugetlbfs mounts (%s):\n' "$MOUNTS"
  if ((${#mounts[@]} == 0)); then
    printf '  none\n'
  else
    printf '  %-30s %-9s %s\n' directory pagesize mode
    for m in "${mounts[@]}"; do
      IFS=$'\t' read -r dir pkb mode opts <<<"$m"
      printf '  %-30s %-9s %s\n' "$dir" "$(kb_to_label "$pkb")" "$mode"
    done
  fi
  printf '\nTransparent hugepages (%s):\n' "$THP"
  printf '  %-14s %-10s %s\n' enabled "${thp_enabled:-n/a}" "$thp_enabled_raw"
  printf '  %-14s %-10s %s\n' shmem_enabled "${thp_shmem:-n/a}" "$thp_shmem_raw"
}

# --- argument parsing -----------------------------------------------------------------------

main() {
  local cmd='' size='' json=0 pos=() a kb n
  if (($# == 0)); then usage_error "missing command"; fi
  while (($#)); do
    a=$1
    shift
    case $a in
      -h | --help | help)
        usage
        exit 0
        ;;
      --json) json=1 ;;
      --size | -s)
        (($#)) || usage_error "--size needs a value (2M or 1G)"
        size=$1
        shift
        ;;
      --size=*) size=${a#--size=} ;;
      --)
        pos+=("$@")
        break
        ;;
      -*) usage_error "unknown option: $a" ;;
      *)
        if [[ -z $cmd ]]; then cmd=$a; else pos+=("$a"); fi
        ;;
    esac
  done
  [[ -n $cmd ]] || usage_error "missing command"

  case $cmd in
    mount | reserve | release)
      kb=$(size_to_kb "${size:-2M}") || usage_error "invalid --size '$size' (expected 2M or 1G)"
      ((json == 0)) || usage_error "--json is only valid for status"
      ;;
    status | unmount | umount)
      [[ -z $size ]] || usage_error "--size is not valid for $cmd"
      [[ $cmd == status ]] || ((json == 0)) || usage_error "--json is only valid for status"
      ;;
    *) usage_error "unknown command: $cmd" ;;
  esac

  case $cmd in
    mount)
      ((${#pos[@]} <= 1)) || usage_error "mount takes at most one directory"
      cmd_mount "${pos[0]:-}" "$kb"
      ;;
    unmount | umount)
      ((${#pos[@]} == 1)) || usage_error "$cmd needs exactly one directory"
      cmd_unmount "${pos[0]}"
      ;;
    reserve | release)
      ((${#pos[@]} == 1)) || usage_error "$cmd needs exactly one page count N"
      [[ ${pos[0]} =~ ^[0-9]{1,9}$ ]] || usage_error "invalid page count '${pos[0]}' (expected a non-negative integer)"
      n=$((10#${pos[0]}))
      "cmd_$cmd" "$n" "$kb"
      ;;
    status)
      ((${#pos[@]} == 0)) || usage_error "status takes no arguments"
      cmd_status "$json"
      ;;
  esac
}

main "$@"
