// SPDX-License-Identifier: Apache-2.0
// The TCP and TLS transport (Boost.Asio, OpenSSL). Layer: src/transport/tcp.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "core/communicator_impl.hpp"
#include "transport/asio_transport.hpp"

namespace ferry::detail::tcp {

/// A server listens (before returning); a client connects and handshakes (before returning,
/// or throws ferry::Error).
/// endpoint: tcp:// or tls:// (auto:// uses tcp://); route: why this transport carries the
/// sessions (auto://), prefixed to each link's detail() in stats().
std::unique_ptr<AsioTransport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint, std::string route = {});

/// auto:// client: asks the server at endpoint where it runs (a probe hello; the server makes
/// no session and closes). nullopt with why when it cannot tell (unreachable, not a Ferry
/// server, a server that answers no probes).
/// server_id: the id in the server's reply.
std::optional<framing::Locality> probe(const CommunicatorImpl& owner, const Endpoint& endpoint, PeerId& server_id,
                                       std::string& why);

}  // namespace ferry::detail::tcp
