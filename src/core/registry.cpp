// SPDX-License-Identifier: Apache-2.0
// Maps an endpoint's scheme to the transport that serves it. Layer: src/core.
#include "core/communicator_impl.hpp"
#include "transport/auto/auto_transport.hpp"
#include "transport/grpc/grpc_transport.hpp"
#include "transport/mqtt/mqtt_transport.hpp"
#include "transport/shm/shm_transport.hpp"
#include "transport/tcp/tcp_transport.hpp"

namespace ferry::detail {

std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner) {
  switch (owner.endpoint().scheme) {
    case Scheme::tcp:
    case Scheme::tls:
      return tcp::make_transport(owner, owner.endpoint());
    case Scheme::shm:
      return shm_link::make_transport(owner, owner.endpoint());
    case Scheme::automatic:
      return automatic::make_transport(owner);
    case Scheme::grpc:
    case Scheme::grpcs:
      return grpc_link::make_transport(owner, owner.endpoint());
    case Scheme::mqtt:
    case Scheme::mqtts:
      return mqtt_link::make_transport(owner, owner.endpoint());
    default:
      throw Error(Errc::unavailable, "endpoint '" + owner.endpoint().to_string() +
                                         "': the " + std::string(Endpoint::scheme_name(owner.endpoint().scheme)) +
                                         " transport is not available in this build");
  }
}

}  // namespace ferry::detail
