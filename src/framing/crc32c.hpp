// SPDX-License-Identifier: Apache-2.0
// CRC-32C (Castagnoli), the frame checksum of ConnectionOptions::checksums: SSE4.2's crc32
// instruction where the CPU has it (checked once), a table otherwise. Chains: crc32c(b,
// crc32c(a)) == crc32c(a then b). Layer: src/framing.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace ferry::framing {
namespace detail {

inline constexpr std::array<std::uint32_t, 256> kCrc32cTable = [] {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    t[i] = c;
  }
  return t;
}();

inline std::uint32_t crc32c_table(std::uint32_t c, const std::byte* p, std::size_t n) noexcept {
  for (std::size_t i = 0; i < n; ++i) c = kCrc32cTable[(c ^ static_cast<std::uint8_t>(p[i])) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) inline std::uint32_t crc32c_sse42(std::uint32_t c, const std::byte* p,
                                                                    std::size_t n) noexcept {
  std::uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
  }
  auto c32 = static_cast<std::uint32_t>(c64);
  for (; n > 0; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, static_cast<unsigned char>(*p));
  return c32;
}
#endif

}  // namespace detail

/// The CRC-32C of `data`, continuing `crc` (0 to start).
inline std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0) noexcept {
  const std::uint32_t c = ~crc;
#if defined(__x86_64__)
  static const bool hardware = __builtin_cpu_supports("sse4.2");
  if (hardware) return ~detail::crc32c_sse42(c, data.data(), data.size());
#endif
  return ~detail::crc32c_table(c, data.data(), data.size());
}

}  // namespace ferry::framing
