// SPDX-License-Identifier: Apache-2.0
// The implementation behind a Communicator, for the library's own tests (fault injection).
// Not installed; not part of the API. Layer: src/core.
#pragma once

#include <ferry/communicator.hpp>

#include "core/communicator_impl.hpp"

namespace ferry::detail {

struct Access {
  static CommunicatorImpl& impl(Communicator& c) noexcept { return *c.m_impl; }
};

/// Fault injection: every live connection of c breaks as a dropped connection would (both
/// sides see it; sessions detach, clients reconnect and resume).
inline void cut_links_for_testing(Communicator& c) { Access::impl(c).cut_links_for_testing(); }

}  // namespace ferry::detail
