// SPDX-License-Identifier: Apache-2.0
// The TCP and TLS transport (Boost.Asio, OpenSSL). Layer: src/transport/tcp.
#pragma once

#include <memory>

#include "core/communicator_impl.hpp"

namespace ferry::detail::tcp {

/// A server listens (before returning); a client connects and handshakes (before returning,
/// or throws ferry::Error).
std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner);

}  // namespace ferry::detail::tcp
