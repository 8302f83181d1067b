// SPDX-License-Identifier: Apache-2.0
// ferry::Endpoint: the URLs that name where a communicator listens or connects. Public API.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ferry {

/// The transport an endpoint names.
enum class Scheme { tcp, tls, shm, mqtt, mqtts, grpc, grpcs, automatic };

/// A parsed endpoint URL, in the ZeroMQ habit:
///   tcp://host:port   tls://host:port   grpc://host:port   grpcs://host:port
///   auto://host:port  shm://name        mqtt://broker[:port]/prefix   mqtts://...
/// host is a name, an IPv4 address or a bracketed IPv6 address ("[::1]"); port 0 asks a
/// server to bind a free port. The port may be omitted for mqtt (1883) and mqtts (8883) only.
struct Endpoint {
  Scheme scheme = Scheme::tcp;
  std::string host;      ///< without brackets for IPv6; empty for shm
  std::uint16_t port = 0;
  std::string path;      ///< shm: the name; mqtt: the topic prefix (may be empty)

  /// Throws ferry::Error(Errc::invalid_argument) whose message quotes the URL and names the
  /// bad part (scheme, host, port or name).
  [[nodiscard]] static Endpoint parse(std::string_view url);
  /// The URL form; parse(to_string()) == *this.
  [[nodiscard]] std::string to_string() const;
  /// "tcp", "tls", "shm", ...
  [[nodiscard]] static std::string_view scheme_name(Scheme scheme) noexcept;

  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

}  // namespace ferry
