// SPDX-License-Identifier: Apache-2.0
// auto://host:port: a server listens on TCP and on shared memory at once; a client probes the
// server over TCP and uses shared memory when the probe shows it runs on the same host (same
// boot id and IPC namespace) and its rendezvous socket answers, TCP otherwise.
// Layer: src/transport/auto.
#pragma once

#include <memory>

#include "core/communicator_impl.hpp"

namespace ferry::detail::automatic {

std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner);

}  // namespace ferry::detail::automatic
