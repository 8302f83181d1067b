// SPDX-License-Identifier: Apache-2.0
// Process identities (pid + start time) and liveness checks that survive pid reuse.
// Layer: shm/.
#pragma once

#include <cstdint>

#include "ferry/shm/layout.hpp"

namespace ferry::shm {

/// Identity of the calling process (computed once, then cached).
layout::Identity self_identity();

/// Start time of `pid` in clock ticks since boot, or 0 if there is no such process.
std::uint64_t process_start_time(std::uint64_t pid);

/// True while the process named by `id` runs (a zombie, or a process in exit, counts as dead). A reused pid with
/// another start time is dead. `id == 0` (nobody) is not alive.
bool is_alive(layout::Identity id);

}  // namespace ferry::shm
