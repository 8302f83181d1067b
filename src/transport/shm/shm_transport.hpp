// SPDX-License-Identifier: Apache-2.0
// The shared-memory transport: shm://name. Layer: src/transport/shm.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>

#include "core/communicator_impl.hpp"
#include "transport/asio_transport.hpp"

namespace ferry::detail::shm_link {

/// A server listens on its rendezvous socket (before returning); a client connects, receives
/// its rings and handshakes (before returning, or throws ferry::Error).
/// endpoint: shm://name (auto:// servers use a derived name); path: the rendezvous socket,
/// empty to derive it from the name (rendezvous_path()); route: as for tcp::make_transport;
/// retry_connect false: a client tries once (auto:// falls back to TCP instead of waiting);
/// expected_server: the id the server must have (auto:// checks it is the server it probed).
std::unique_ptr<AsioTransport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint,
                                              std::filesystem::path path = {}, std::string route = {},
                                              bool retry_connect = true,
                                              std::optional<PeerId> expected_server = std::nullopt);
/// The rendezvous socket a transport made by make_transport() uses.
std::filesystem::path listening_path(const Transport& transport);

/// The rendezvous socket of shm://name under these options (see ShmOptions::directory).
/// create: make the default directory (owner-only) when it is missing. Throws ferry::Error
/// when the default directory is unsafe or the path too long for a Unix socket.
std::filesystem::path rendezvous_path(const ShmOptions& options, std::string_view name, bool create);

}  // namespace ferry::detail::shm_link
