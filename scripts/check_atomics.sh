#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Every explicit memory order in library code names its synchronisation: a non-relaxed order
# needs a `sync(` tag, a relaxed one a `relaxed:` reason, on its line or within the 4 lines
# above (one comment may cover a statement split over several lines). Exit 1 on a miss.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
while IFS= read -r file; do
  awk -v file="$file" '
    { line[NR] = $0 }
    /memory_order_/ {
      ctx = ""
      for (i = NR - 4; i <= NR; i++) if (i > 0) ctx = ctx "\n" line[i]
      relaxed_only = ($0 ~ /memory_order_relaxed/) && ($0 !~ /memory_order_(acquire|release|acq_rel|seq_cst)/)
      if (relaxed_only && ctx !~ /relaxed:/) { printf "%s:%d: relaxed order without a \"relaxed:\" reason\n", file, NR; bad = 1 }
      if (!relaxed_only && ctx !~ /sync\(/) { printf "%s:%d: ordered atomic without a \"sync(...)\" tag\n", file, NR; bad = 1 }
    }
    END { exit bad }' "$file" || status=1
done < <(git ls-files 'shm/*.hpp' 'shm/*.cpp' 'include/*.hpp' 'src/*.hpp' 'src/*.cpp')
[ $status -eq 0 ] && echo "check_atomics: every memory order is annotated"
exit $status
