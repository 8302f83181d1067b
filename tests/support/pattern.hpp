// SPDX-License-Identifier: Apache-2.0
// Deterministic message sizes and contents for ordered, lossless transfer checks: message i
// of a stream with seed s has a size and bytes any process can recompute.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace ferry::test {

inline constexpr std::size_t kMaxMessage = 256 * 1024;

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/// Sizes from 1 B to 256 KiB: one message in 64 is uniform over the whole range, the others
/// uniform over 1-512 B (so a million messages move ~2.5 GB, not 128 GB); messages 0 and 1
/// are the two extremes.
inline std::size_t message_size(std::uint64_t seed, std::uint64_t i) {
  if (i == 0) return kMaxMessage;
  if (i == 1) return 1;
  const std::uint64_t r = splitmix64(seed * 0x100000001b3ULL ^ i);
  if ((r & 63) == 0) return 1 + (r >> 8) % kMaxMessage;
  return 1 + (r >> 8) % 512;
}

inline std::uint8_t pattern_byte(std::uint64_t seed, std::uint64_t i, std::size_t j) {
  return static_cast<std::uint8_t>(seed * 131 + i * 7 + j);
}

/// Fills `out` with message i: the sequence number first (when it fits), then the pattern.
inline void fill(std::span<std::byte> out, std::uint64_t seed, std::uint64_t i) {
  auto* p = reinterpret_cast<std::uint8_t*>(out.data());
  for (std::size_t j = 0; j < out.size(); ++j) p[j] = pattern_byte(seed, i, j);
  if (out.size() >= 8) std::memcpy(p, &i, 8);
}

/// True if `msg` is exactly message i.
inline bool check(std::span<const std::byte> msg, std::uint64_t seed, std::uint64_t i) {
  if (msg.size() != message_size(seed, i)) return false;
  const auto* p = reinterpret_cast<const std::uint8_t*>(msg.data());
  std::size_t j = 0;
  if (msg.size() >= 8) {
    std::uint64_t seq = 0;
    std::memcpy(&seq, p, 8);
    if (seq != i) return false;
    j = 8;
  }
  bool ok = true;
  for (; j < msg.size(); ++j) ok &= p[j] == pattern_byte(seed, i, j);
  return ok;
}

}  // namespace ferry::test
