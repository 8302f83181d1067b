// SPDX-License-Identifier: Apache-2.0
// The MQTT transport: mqtt:// and mqtts:// (TLS to the broker). Layer: src/transport/mqtt.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/communicator_impl.hpp"
#include "core/link.hpp"

namespace ferry::detail::mqtt_link {

// Topics, under the endpoint's prefix P ("ferry" when the endpoint has none):
//   P/server        the server's presence, retained: "ferry-server <instance>"; its last will
//                   (and its clean close) replace it with "ferry-gone <instance>".
//   P/s/<tag>/<n>   client -> server publishes of the client's connection n (1, 2, ...); <tag>
//                   names the client's broker connection (16 hex digits, new on every one).
//   P/s/<tag>/will  that broker connection's last will (a `gone` publish): the server drops
//                   the connections it carried at once.
//   P/c/<tag>/<n>   server -> client publishes of connection n.
//
// Every publish starts with this header (kPubHeaderSize bytes, little-endian):
//
//   0      1      2        4               8            16           24             32
//   +------+------+--------+---------------+------------+------------+--------------+
//   | kind | zero | zero   | window_pubs   | seq        | ack        | window_bytes |
//   | u8   | u8   | u16    | u32           | u64        | u64        | u64          |
//   +------+------+--------+---------------+------------+------------+--------------+
//   data:  seq = 1, 2, ... per connection and direction, the byte stream follows (the first
//          data publish carries exactly the Ferry hello, then frame batches as over TCP). A
//          seq below the next expected is a duplicate (dropped); above it, a publish was lost:
//          the connection fails and the session resumes on a new one, resending what the
//          peer has not acknowledged.
//   ack:   seq = 0, nothing follows.
//   reset: seq = 0, a u32 Errc follows: the sender dropped the connection.
//   gone:  seq = 0, windows 0, nothing follows (a client's last will).
//   ack (every kind but gone): the highest seq received and consumed from the peer.
//   window_pubs / window_bytes: the publishes and bytes the sender accepts unacknowledged
//   (MqttOptions); a peer sends no more than the smaller of its own and this.
inline constexpr std::size_t kPubHeaderSize = 32;

enum class Kind : std::uint8_t { data = 1, ack = 2, reset = 3, gone = 4 };

struct PubHeader {
  Kind kind = Kind::data;
  std::uint32_t window_pubs = 0;
  std::uint64_t seq = 0;
  std::uint64_t ack = 0;
  std::uint64_t window_bytes = 0;
};

void encode_pub_header(const PubHeader& h, std::span<std::byte, kPubHeaderSize> out) noexcept;
/// Decodes and validates a publish's header (known kind, zero fields, seq and windows as the
/// kind requires, the payload length the kind allows). Errc::protocol_error otherwise.
[[nodiscard]] Errc decode_pub_header(std::span<const std::byte> publish, PubHeader& out, std::string& why);

/// A server subscribes and publishes its presence (before returning); a client reaches the
/// broker, finds the server's presence and handshakes (before returning, or throws).
std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint);

}  // namespace ferry::detail::mqtt_link
