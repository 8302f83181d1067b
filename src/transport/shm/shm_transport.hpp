// SPDX-License-Identifier: Apache-2.0
// The shared-memory transport: shm://name. Layer: src/transport/shm.
#pragma once

#include <filesystem>
#include <memory>
#include <string_view>

#include "core/communicator_impl.hpp"

namespace ferry::detail::shm_link {

/// A server listens on its rendezvous socket (before returning); a client connects, receives
/// its rings and handshakes (before returning, or throws ferry::Error).
std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner);

/// The rendezvous socket of shm://name under these options (see ShmOptions::directory).
/// create: make the default directory (owner-only) when it is missing. Throws ferry::Error
/// when the default directory is unsafe or the path too long for a Unix socket.
std::filesystem::path rendezvous_path(const ShmOptions& options, std::string_view name, bool create);

}  // namespace ferry::detail::shm_link
