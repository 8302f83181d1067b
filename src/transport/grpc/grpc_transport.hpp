// SPDX-License-Identifier: Apache-2.0
// The gRPC transport: grpc:// and grpcs:// (TLS). Layer: src/transport/grpc.
#pragma once

#include <memory>

#include "core/communicator_impl.hpp"
#include "core/link.hpp"

namespace ferry::detail::grpc_link {

/// The method every Ferry stream calls: one long-lived bidirectional stream per client, whose
/// messages are raw Ferry frame batches (no protobuf).
inline constexpr const char* kMethod = "/ferry.v1.Ferry/Stream";

/// A server listens (before returning); a client connects and handshakes (before returning,
/// or throws ferry::Error).
std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint);

}  // namespace ferry::detail::grpc_link
