// SPDX-License-Identifier: Apache-2.0
// Codecs: how typed values become message bytes and back. Public API; one customisation point.
#pragma once

#include <concepts>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include <ferry/bytes.hpp>
#include <ferry/error.hpp>

namespace ferry {

/// The customisation point. Specialise it for your type:
///
///   template <> struct ferry::Codec<Point> {
///     static ferry::Bytes encode(const Point& p);                  // may throw
///     static Point decode(std::span<const std::byte> bytes);       // throws ferry::Error
///   };
///
/// decode() receives bytes from a peer: it must validate them and throw
/// ferry::Error(Errc::protocol_error) rather than trust them.
/// Built in: ferry::Bytes, std::string, trivially copyable types, protobuf messages.
template <class T>
struct Codec;

/// A type with a Codec.
template <class T>
concept Encodable = requires(const T& value, std::span<const std::byte> bytes) {
  { Codec<T>::encode(value) } -> std::same_as<Bytes>;
  { Codec<T>::decode(bytes) } -> std::convertible_to<T>;
};

/// A protobuf message (detected by its interface, so this header needs no protobuf include).
template <class T>
concept ProtobufMessage = requires(T& m, const T& cm, void* out, const void* in, int n) {
  { cm.ByteSizeLong() } -> std::convertible_to<std::size_t>;
  { cm.SerializeToArray(out, n) } -> std::same_as<bool>;
  { m.ParseFromArray(in, n) } -> std::same_as<bool>;
};

template <>
struct Codec<Bytes> {
  static Bytes encode(const Bytes& b) { return Bytes::copy_of(b.span()); }
  static Bytes decode(std::span<const std::byte> bytes) { return Bytes::copy_of(bytes); }
};

template <>
struct Codec<std::string> {
  static Bytes encode(const std::string& s) { return Bytes::copy_of(std::string_view(s)); }
  static std::string decode(std::span<const std::byte> bytes) {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
};

/// Trivially copyable values travel as their object representation: both ends must agree on
/// the type's layout (same ABI). decode() checks the size.
template <class T>
  requires(std::is_trivially_copyable_v<T> && !ProtobufMessage<T>)
struct Codec<T> {
  static Bytes encode(const T& value) {
    Bytes b(sizeof(T));
    std::memcpy(b.data(), &value, sizeof(T));
    return b;
  }
  static T decode(std::span<const std::byte> bytes) {
    if (bytes.size() != sizeof(T)) {
      throw Error(Errc::protocol_error, "decode: message of " + std::to_string(bytes.size()) +
                                            " bytes for a type of " + std::to_string(sizeof(T)));
    }
    T value;
    std::memcpy(&value, bytes.data(), sizeof(T));
    return value;
  }
};

template <ProtobufMessage T>
struct Codec<T> {
  static Bytes encode(const T& message) {
    const std::size_t size = message.ByteSizeLong();
    if (size > static_cast<std::size_t>(INT32_MAX)) {
      throw Error(Errc::message_too_large, "encode: protobuf message over 2 GiB");
    }
    Bytes b(size);
    if (!message.SerializeToArray(b.data(), static_cast<int>(size))) {
      throw Error(Errc::invalid_argument, "encode: protobuf serialisation failed");
    }
    return b;
  }
  static T decode(std::span<const std::byte> bytes) {
    T message;
    if (bytes.size() > static_cast<std::size_t>(INT32_MAX) ||
        !message.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      throw Error(Errc::protocol_error, "decode: not a valid protobuf message of this type");
    }
    return message;
  }
};

}  // namespace ferry
