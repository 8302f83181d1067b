// SPDX-License-Identifier: Apache-2.0
// The rpc messages: one Communicator message per request and per reply. Encoding and
// validation only (no I/O). Layer: src/rpc.
//
// Byte order: little-endian. Everything read from a peer is untrusted and validated here.
//
// Request (client -> server): a header, the method name, the request's bytes.
//
//   0      1        2          4          8             16            24         24+m
//   +------+--------+----------+----------+-------------+-------------+----------+---------+
//   | kind | version| method   | zero     | call id     | timeout_ns  | method   | request |
//   | u8=1 | u8=1   | size u16 | u32      | u64         | u64         | m bytes  |         |
//   +------+--------+----------+----------+-------------+-------------+----------+---------+
//   timeout_ns: what was left of the caller's timeout when it sent the call; 0: none.
//
// Reply (server -> client): the reply's bytes (or the error's text), then a trailer, so the
// client hands the reply out in the buffer it arrived in (Bytes::truncate, no copy).
//
//   0              n          n+8         n+10     n+11     n+12     n+16
//   +--------------+----------+-----------+--------+--------+--------+
//   | reply / error| call id  | status    | version| kind   | magic  |
//   | text, n bytes| u64      | u16       | u8=1   | u8=2   | "FRPC" |
//   +--------------+----------+-----------+--------+--------+--------+
//   status: 0, or the ferry::Errc of the failure; the bytes before the trailer are then its
//   message (UTF-8, as thrown).
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>

#include <ferry/bytes.hpp>

namespace ferry::rpc::wire {

static_assert(std::endian::native == std::endian::little, "the rpc messages are little-endian");

inline constexpr std::uint8_t kVersion = 1;
inline constexpr std::uint8_t kRequest = 1;
inline constexpr std::uint8_t kReply = 2;
inline constexpr std::size_t kRequestHeader = 24;
inline constexpr std::size_t kReplyTrailer = 16;
inline constexpr std::array<std::uint8_t, 4> kReplyMagic = {'F', 'R', 'P', 'C'};
inline constexpr std::uint16_t kMaxMethod = 255;

namespace off {  // field offsets, drawn above
inline constexpr std::size_t kind = 0, version = 1, method_size = 2, zero = 4, id = 8, timeout = 16;
inline constexpr std::size_t t_id = 0, t_status = 8, t_version = 10, t_kind = 11, t_magic = 12;
}  // namespace off
static_assert(off::timeout + 8 == kRequestHeader);
static_assert(off::t_magic + kReplyMagic.size() == kReplyTrailer);

template <class T>
inline void store(std::byte* at, T v) noexcept {
  std::memcpy(at, &v, sizeof v);
}
template <class T>
inline T load(const std::byte* at) noexcept {
  T v;
  std::memcpy(&v, at, sizeof v);
  return v;
}

/// One request message: the header, the method and the request's bytes, in one buffer.
inline Bytes encode_request(std::uint64_t id, std::string_view method, std::uint64_t timeout_ns,
                            std::span<const std::byte> request) {
  Bytes b = Bytes::pooled(kRequestHeader + method.size() + request.size());
  std::byte* p = b.data();
  store<std::uint8_t>(p + off::kind, kRequest);
  store<std::uint8_t>(p + off::version, kVersion);
  store<std::uint16_t>(p + off::method_size, static_cast<std::uint16_t>(method.size()));
  store<std::uint32_t>(p + off::zero, 0);
  store<std::uint64_t>(p + off::id, id);
  store<std::uint64_t>(p + off::timeout, timeout_ns);
  std::memcpy(p + kRequestHeader, method.data(), method.size());
  if (!request.empty()) std::memcpy(p + kRequestHeader + method.size(), request.data(), request.size());
  return b;
}

struct Request {
  std::uint64_t id = 0;
  std::uint64_t timeout_ns = 0;
  std::string_view method;
  std::span<const std::byte> body;
};

/// Parses a request; false (with why) when the bytes are not one. has_id: the header was
/// whole, so `out.id` can be answered.
inline bool parse_request(std::span<const std::byte> m, Request& out, bool& has_id, const char*& why) noexcept {
  has_id = false;
  if (m.size() < kRequestHeader) {
    why = "shorter than a request header";
    return false;
  }
  const std::byte* p = m.data();
  if (load<std::uint8_t>(p + off::kind) != kRequest) {
    why = "not a request";
    return false;
  }
  out.id = load<std::uint64_t>(p + off::id);
  has_id = true;
  if (load<std::uint8_t>(p + off::version) != kVersion) {
    why = "unsupported rpc version";
    return false;
  }
  const std::size_t method_size = load<std::uint16_t>(p + off::method_size);
  if (method_size == 0 || method_size > kMaxMethod || load<std::uint32_t>(p + off::zero) != 0) {
    why = "bad method size or reserved field";
    return false;
  }
  if (m.size() - kRequestHeader < method_size) {
    why = "method name beyond the message";
    return false;
  }
  out.timeout_ns = load<std::uint64_t>(p + off::timeout);
  out.method = {reinterpret_cast<const char*>(p + kRequestHeader), method_size};
  out.body = m.subspan(kRequestHeader + method_size);
  return true;
}

/// One reply message: body (the reply, or the error's text) and the trailer, in one buffer.
inline Bytes encode_reply(std::uint64_t id, std::uint16_t status, std::span<const std::byte> body) {
  Bytes b = Bytes::pooled(body.size() + kReplyTrailer);
  if (!body.empty()) std::memcpy(b.data(), body.data(), body.size());
  std::byte* t = b.data() + body.size();
  store<std::uint64_t>(t + off::t_id, id);
  store<std::uint16_t>(t + off::t_status, status);
  store<std::uint8_t>(t + off::t_version, kVersion);
  store<std::uint8_t>(t + off::t_kind, kReply);
  std::memcpy(t + off::t_magic, kReplyMagic.data(), kReplyMagic.size());
  return b;
}

struct Reply {
  std::uint64_t id = 0;
  std::uint16_t status = 0;
  std::size_t body_size = 0;  ///< the bytes before the trailer
};

inline bool parse_reply(std::span<const std::byte> m, Reply& out, const char*& why) noexcept {
  if (m.size() < kReplyTrailer) {
    why = "shorter than a reply trailer";
    return false;
  }
  const std::byte* t = m.data() + m.size() - kReplyTrailer;
  if (std::memcmp(t + off::t_magic, kReplyMagic.data(), kReplyMagic.size()) != 0 ||
      load<std::uint8_t>(t + off::t_kind) != kReply) {
    why = "not a reply";
    return false;
  }
  if (load<std::uint8_t>(t + off::t_version) != kVersion) {
    why = "unsupported rpc version";
    return false;
  }
  out.id = load<std::uint64_t>(t + off::t_id);
  out.status = load<std::uint16_t>(t + off::t_status);
  out.body_size = m.size() - kReplyTrailer;
  return true;
}

}  // namespace ferry::rpc::wire
