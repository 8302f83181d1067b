// SPDX-License-Identifier: Apache-2.0
// ferry::PeerId: the UUID that names a communicator and each of its peers. Public API.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

namespace ferry {

/// A 128-bit identifier (RFC 4122 UUID). Clients choose theirs (random by default) and keep
/// it to resume a session after a dropped connection.
struct PeerId {
  std::array<std::uint8_t, 16> bytes{};

  /// A random version-4 UUID from the system's entropy source. Thread-safe.
  [[nodiscard]] static PeerId random();
  /// Parses "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (hex digits, either case).
  /// Throws ferry::Error(Errc::invalid_argument) naming the bad text.
  [[nodiscard]] static PeerId parse(std::string_view text);
  /// The canonical lowercase 36-character form.
  [[nodiscard]] std::string to_string() const;
  [[nodiscard]] bool is_nil() const noexcept;

  friend auto operator<=>(const PeerId&, const PeerId&) = default;
};

}  // namespace ferry

template <>
struct std::hash<ferry::PeerId> {
  std::size_t operator()(const ferry::PeerId& id) const noexcept {
    std::size_t h = 1469598103934665603ULL;  // FNV-1a: ids are random, any mix will do
    for (const std::uint8_t b : id.bytes) h = (h ^ b) * 1099511628211ULL;
    return h;
  }
};
