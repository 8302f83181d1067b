// SPDX-License-Identifier: Apache-2.0
// ferry::Message (what get() returns) and ferry::Payload (what put() sends). Public API.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <ferry/bytes.hpp>
#include <ferry/codec.hpp>
#include <ferry/peer_id.hpp>

namespace ferry {

/// A received message: the bytes and the peer they came from.
struct Message {
  PeerId peer;
  Bytes data;

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept { return data.span(); }
  [[nodiscard]] std::string_view text() const noexcept { return data.text(); }
  /// Decodes the bytes with Codec<T>; throws ferry::Error(Errc::protocol_error) when they do
  /// not hold a T.
  template <Encodable T>
  [[nodiscard]] T as() const {
    return Codec<T>::decode(data.span());
  }
};

/// The bytes of one put(). Three kinds:
///  - owned: Bytes or a std::string moved in (no copy); Ferry frees them when every peer has
///    acknowledged them;
///  - copied: Payload::copy(span) copies once at put();
///  - borrowed: Payload::borrow(span) copies nothing: the caller keeps the bytes alive and
///    unchanged until the put handle is ready(), which for a borrowed payload means every peer
///    acknowledged it (a resend after a dropped connection may still need the bytes until then).
class Payload {
 public:
  Payload(Bytes&& owned) noexcept : m_data(std::move(owned)) {}  // NOLINT(google-explicit-constructor): a payload *is* its bytes
  Payload(std::string&& owned) noexcept : m_data(std::move(owned)) {}  // NOLINT(google-explicit-constructor)

  [[nodiscard]] static Payload copy(std::span<const std::byte> bytes) {
    return Payload(Bytes::copy_of(bytes));
  }
  [[nodiscard]] static Payload copy(std::string_view text) { return Payload(Bytes::copy_of(text)); }
  [[nodiscard]] static Payload borrow(std::span<const std::byte> bytes) noexcept {
    return Payload(Borrowed{bytes});
  }
  /// Encodes value with Codec<T>.
  template <Encodable T>
  [[nodiscard]] static Payload encode(const T& value) {
    return Payload(Codec<T>::encode(value));
  }

  [[nodiscard]] std::span<const std::byte> bytes() const noexcept {
    switch (m_data.index()) {
      case 0: return std::get<0>(m_data).span();
      case 1: {
        const std::string& s = std::get<1>(m_data);
        return std::as_bytes(std::span(s.data(), s.size()));
      }
      default: return std::get<2>(m_data).bytes;
    }
  }
  [[nodiscard]] bool borrowed() const noexcept { return m_data.index() == 2; }

 private:
  struct Borrowed {
    std::span<const std::byte> bytes;
  };
  explicit Payload(Borrowed b) noexcept : m_data(b) {}
  std::variant<Bytes, std::string, Borrowed> m_data;
};

}  // namespace ferry
