// SPDX-License-Identifier: Apache-2.0
// PeerId: random generation, parsing and formatting. Layer: src/core.
#include <ferry/error.hpp>
#include <ferry/peer_id.hpp>

#include <random>

namespace ferry {

PeerId PeerId::random() {
  thread_local std::mt19937_64 rng{[] {
    std::random_device rd;  // the kernel's entropy (getrandom) seeds each thread's generator
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
    return std::mt19937_64(seq);
  }()};
  PeerId id;
  for (std::size_t i = 0; i < 16; i += 8) {
    const std::uint64_t v = rng();
    for (std::size_t j = 0; j < 8; ++j) id.bytes[i + j] = static_cast<std::uint8_t>(v >> (8 * j));
  }
  id.bytes[6] = static_cast<std::uint8_t>((id.bytes[6] & 0x0f) | 0x40);  // version 4
  id.bytes[8] = static_cast<std::uint8_t>((id.bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  return id;
}

PeerId PeerId::parse(std::string_view text) {
  const auto fail = [&] {
    throw Error(Errc::invalid_argument, "peer id '" + std::string(text) +
                                            "': expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx");
  };
  if (text.size() != 36) fail();
  PeerId id;
  std::size_t out = 0;
  for (std::size_t i = 0; i < 36;) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') fail();
      ++i;
      continue;
    }
    const auto nibble = [&](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      fail();
      return 0;
    };
    id.bytes[out++] = static_cast<std::uint8_t>(nibble(text[i]) << 4 | nibble(text[i + 1]));
    i += 2;
  }
  return id;
}

std::string PeerId::to_string() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (std::size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(kHex[bytes[i] >> 4]);
    s.push_back(kHex[bytes[i] & 0x0f]);
  }
  return s;
}

bool PeerId::is_nil() const noexcept {
  for (const std::uint8_t b : bytes) {
    if (b != 0) return false;
  }
  return true;
}

}  // namespace ferry
