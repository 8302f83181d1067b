// SPDX-License-Identifier: Apache-2.0
// Encoding and validation of the hello and the frame header (see frame.hpp for the layout).
#include "framing/frame.hpp"

#include "framing/crc32c.hpp"

#include <algorithm>
#include <cstring>

namespace ferry::framing {
namespace {

template <class T>
void put_le(std::byte* at, T value) noexcept {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    at[i] = static_cast<std::byte>((value >> (8 * i)) & 0xff);
  }
}

template <class T>
T get_le(const std::byte* at) noexcept {
  T value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    value = static_cast<T>(value | (static_cast<T>(std::to_integer<std::uint8_t>(at[i])) << (8 * i)));
  }
  return value;
}

}  // namespace

void encode_hello(const Hello& h, std::span<std::byte, kHelloSize> out) noexcept {
  std::byte* p = out.data();
  std::memcpy(p, kMagic.data(), kMagic.size());
  put_le<std::uint16_t>(p + 8, h.version);
  put_le<std::uint16_t>(p + 10, static_cast<std::uint16_t>(kHelloSize));
  put_le<std::uint32_t>(p + 12, h.flags);
  std::memcpy(p + 16, h.id.bytes.data(), 16);
  put_le<std::uint64_t>(p + 32, h.next_expected);
  put_le<std::uint64_t>(p + 40, h.first_unacked);
  put_le<std::uint64_t>(p + 48, h.max_message);
  put_le<std::uint32_t>(p + 56, h.max_chunk);
  put_le<std::uint32_t>(p + 60, h.status);
  put_le<std::uint32_t>(p + 64, crc32c(std::span<const std::byte>(p, kHelloSize - 4)));
}

namespace {
constexpr std::uint16_t kVersionWithoutChecksum = 1;
constexpr std::size_t kVersion1Size = 64;
}  // namespace

namespace {
// The fields at bytes 12-63 (the same in versions 1 and 2), checked.
Errc decode_fields(const std::byte* p, Hello& h, std::string& why) {
  h.flags = get_le<std::uint32_t>(p + 12);
  std::memcpy(h.id.bytes.data(), p + 16, 16);
  h.next_expected = get_le<std::uint64_t>(p + 32);
  h.first_unacked = get_le<std::uint64_t>(p + 40);
  h.max_message = get_le<std::uint64_t>(p + 48);
  h.max_chunk = get_le<std::uint32_t>(p + 56);
  h.status = get_le<std::uint32_t>(p + 60);
  if ((h.flags & ~(kHelloResume | kHelloProbe | kHelloChecksums)) != 0) {
    why = "unknown handshake flags";
    return Errc::protocol_error;
  }
  if (h.id.is_nil()) {
    why = "nil peer id in the handshake";
    return Errc::protocol_error;
  }
  if (h.next_expected == 0 || h.first_unacked == 0 || h.next_expected > (std::uint64_t{1} << 62) ||
      h.first_unacked > (std::uint64_t{1} << 62)) {
    why = "message ids out of range in the handshake";
    return Errc::protocol_error;
  }
  if (h.max_chunk == 0 || h.max_chunk > kMaxChunk) {
    why = "chunk size out of range in the handshake";
    return Errc::protocol_error;
  }
  if (h.status > static_cast<std::uint32_t>(Errc::internal)) {
    why = "unknown status in the handshake";
    return Errc::protocol_error;
  }
  return Errc{};
}
}  // namespace

Errc hello_size(std::span<const std::byte, kHelloPrefixSize> prefix, std::size_t& size, std::string& why) {
  const std::byte* p = prefix.data();
  int wrong = 0;
  for (std::size_t i = 0; i < kMagic.size(); ++i) wrong += std::to_integer<std::uint8_t>(p[i]) != kMagic[i] ? 1 : 0;
  if (wrong > 2) {
    why = "not a Ferry peer (bad magic in the handshake)";
    return Errc::protocol_error;
  }
  if (wrong > 0) {
    why = "handshake damaged in transit (magic)";
    return Errc::peer_lost;
  }
  const auto version = get_le<std::uint16_t>(p + 8);
  size = get_le<std::uint16_t>(p + 10);
  if (version == kVersionWithoutChecksum && size == kVersion1Size) return Errc{};  // decode_hello refuses it
  if ((version == kProtocolVersion && size != kHelloSize) || size < kHelloPrefixSize + 4 || size > kMaxHelloSize) {
    why = "handshake damaged in transit (size " + std::to_string(size) + ")";
    return Errc::peer_lost;
  }
  return Errc{};
}

Errc decode_hello(std::span<const std::byte> in, Hello& h, std::string& why) {
  if (in.size() < kHelloPrefixSize) {
    why = "handshake of " + std::to_string(in.size()) + " bytes, too short";
    return Errc::protocol_error;
  }
  std::size_t size = 0;
  if (const Errc prefix = hello_size(in.first<kHelloPrefixSize>(), size, why); prefix != Errc{}) return prefix;
  const std::byte* p = in.data();
  if (in.size() != size) {
    why = "handshake of " + std::to_string(in.size()) + " bytes, its size field says " + std::to_string(size);
    return Errc::peer_lost;
  }
  if (get_le<std::uint16_t>(p + 8) == kVersionWithoutChecksum && size == kVersion1Size) {
    // Version 1 has no checksum to vouch for it: believed only when its fields (laid out as
    // ours) hold up, else it is taken for damage (bytes lost from a hello of ours can line up
    // as version 1's version and size).
    Hello v1;
    if (decode_fields(p, v1, why) != Errc{}) {
      why = "handshake damaged in transit (a version 1 hello with " + why + ")";
      return Errc::peer_lost;
    }
    h.version = kVersionWithoutChecksum;
    why = "peer speaks protocol version 1, this side " + std::to_string(kProtocolVersion);
    return Errc::version_mismatch;
  }
  if (!hello_checks_out(in)) {
    why = "handshake damaged in transit (checksum mismatch)";
    return Errc::peer_lost;
  }
  h.version = get_le<std::uint16_t>(p + 8);
  if (h.version != kProtocolVersion) {
    why = "peer speaks protocol version " + std::to_string(h.version) + ", this side " +
          std::to_string(kProtocolVersion);
    return Errc::version_mismatch;
  }
  return decode_fields(p, h, why);
}

bool hello_checks_out(std::span<const std::byte> in) noexcept {
  if (in.size() < kHelloPrefixSize + 4) return false;
  const std::size_t size = get_le<std::uint16_t>(in.data() + 10);
  if (size != in.size() || get_le<std::uint16_t>(in.data() + 8) == kVersionWithoutChecksum) return false;
  return get_le<std::uint32_t>(in.data() + size - 4) == crc32c(in.first(size - 4));
}

void encode_header(const FrameHeader& f, std::span<std::byte, kHeaderSize> out) noexcept {
  std::byte* p = out.data();
  p[0] = static_cast<std::byte>(f.type);
  p[1] = std::byte{0};
  p[2] = std::byte{0};
  p[3] = std::byte{0};
  put_le<std::uint32_t>(p + 4, f.length);
  put_le<std::uint64_t>(p + 8, f.a);
  put_le<std::uint64_t>(p + 16, f.b);
  put_le<std::uint64_t>(p + 24, f.c);
}

Errc decode_header(std::span<const std::byte, kHeaderSize> in, std::uint32_t max_chunk,
                   FrameHeader& f, std::string& why) {
  const std::byte* p = in.data();
  const auto type = std::to_integer<std::uint8_t>(p[0]);
  if (p[1] != std::byte{0} || p[2] != std::byte{0} || p[3] != std::byte{0}) {
    why = "non-zero reserved bits in a frame header";
    return Errc::protocol_error;
  }
  f.length = get_le<std::uint32_t>(p + 4);
  f.a = get_le<std::uint64_t>(p + 8);
  f.b = get_le<std::uint64_t>(p + 16);
  f.c = get_le<std::uint64_t>(p + 24);
  switch (type) {
    case static_cast<std::uint8_t>(FrameType::data):
      f.type = FrameType::data;
      if (f.length > max_chunk) {
        why = "chunk of " + std::to_string(f.length) + " bytes over the agreed " +
              std::to_string(max_chunk);
        return Errc::protocol_error;
      }
      if (f.b > f.c || f.length > f.c - f.b) {
        why = "chunk outside its message (offset " + std::to_string(f.b) + " + " +
              std::to_string(f.length) + " > " + std::to_string(f.c) + ")";
        return Errc::protocol_error;
      }
      if (f.length == 0 && f.c != 0) {
        why = "empty chunk of a non-empty message";
        return Errc::protocol_error;
      }
      return Errc{};
    case static_cast<std::uint8_t>(FrameType::ack):
      f.type = FrameType::ack;
      break;
    case static_cast<std::uint8_t>(FrameType::keepalive):
      f.type = FrameType::keepalive;
      if (f.a != 0 || f.b != 0 || f.c != 0) {
        why = "non-zero fields in a keep-alive";
        return Errc::protocol_error;
      }
      break;
    case static_cast<std::uint8_t>(FrameType::close):
      f.type = FrameType::close;
      if (f.a > static_cast<std::uint64_t>(Errc::internal) || f.b != 0 || f.c != 0) {
        why = "bad close frame";
        return Errc::protocol_error;
      }
      break;
    default:
      why = "unknown frame type " + std::to_string(type);
      return Errc::protocol_error;
  }
  if (f.length != 0) {
    why = "control frame with a payload";
    return Errc::protocol_error;
  }
  return Errc{};
}

namespace {
constexpr std::array<char, 8> kLocalityMagic = {'F', 'E', 'R', 'R', 'Y', 'L', 'O', 'C'};
constexpr std::size_t kLocalityCrcAt = kLocalitySize - 4;
}  // namespace

void encode_locality(const Locality& l, std::span<std::byte, kLocalitySize> out) noexcept {
  std::memset(out.data(), 0, out.size());
  std::byte* p = out.data();
  std::memcpy(p, kLocalityMagic.data(), kLocalityMagic.size());
  std::memcpy(p + 8, l.boot_id.data(), 16);
  put_le<std::uint64_t>(p + 24, l.ipc_namespace);
  put_le<std::uint32_t>(p + 32, l.uid);
  const std::size_t n = std::min(l.shm_path.size(), kMaxLocalityPath);
  put_le<std::uint16_t>(p + 36, static_cast<std::uint16_t>(n));
  std::memcpy(p + 40, l.shm_path.data(), n);
  put_le<std::uint32_t>(p + kLocalityCrcAt, crc32c(std::span<const std::byte>(p, kLocalityCrcAt)));
}

Errc decode_locality(std::span<const std::byte, kLocalitySize> in, Locality& out, std::string& why) {
  const std::byte* p = in.data();
  if (get_le<std::uint32_t>(p + kLocalityCrcAt) != crc32c(in.first<kLocalityCrcAt>())) {
    why = "locality block damaged in transit (checksum mismatch)";
    return Errc::peer_lost;
  }
  if (std::memcmp(p, kLocalityMagic.data(), kLocalityMagic.size()) != 0) {
    why = "bad magic in the locality block";
    return Errc::protocol_error;
  }
  std::memcpy(out.boot_id.data(), p + 8, 16);
  out.ipc_namespace = get_le<std::uint64_t>(p + 24);
  out.uid = get_le<std::uint32_t>(p + 32);
  const std::size_t n = get_le<std::uint16_t>(p + 36);
  if (n > kMaxLocalityPath || get_le<std::uint16_t>(p + 38) != 0) {
    why = "bad path length in the locality block";
    return Errc::protocol_error;
  }
  out.shm_path.assign(reinterpret_cast<const char*>(p + 40), n);
  if (out.shm_path.find('\0') != std::string::npos || (n > 0 && out.shm_path.front() != '/')) {
    why = "bad path in the locality block";
    return Errc::protocol_error;
  }
  for (std::size_t i = 40 + n; i < kLocalityCrcAt; ++i) {
    if (p[i] != std::byte{0}) {
      why = "non-zero padding in the locality block";
      return Errc::protocol_error;
    }
  }
  return Errc{};
}

}  // namespace ferry::framing
