// SPDX-License-Identifier: Apache-2.0
// Fuzz target: the handshake a peer sends first (a hello) and the locality block an auto://
// server answers a probe with, through their decoders, each as it came and resealed (its
// checksum made to match, so the fields' own checks are reached too). A hello that decodes
// encodes back to the same fields; the locality's socket path is bounded and has no NUL.
// Layer: tests/fuzz.
#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "framing/crc32c.hpp"
#include "framing/frame.hpp"

namespace {
using namespace ferry::framing;

void check(bool ok) {
  if (!ok) std::abort();
}

// The CRC-32C of the bytes before the last four, written into them.
void reseal(std::span<std::byte> bytes) {
  const std::uint32_t crc = crc32c(bytes.first(bytes.size() - 4));
  for (std::size_t i = 0; i < 4; ++i) bytes[bytes.size() - 4 + i] = static_cast<std::byte>((crc >> (8 * i)) & 0xff);
}

void hello(std::span<const std::byte> in) {
  std::string why;
  Hello h;
  const ferry::Errc e = decode_hello(in, h, why);
  check(e == ferry::Errc{} || !why.empty());
  if (e != ferry::Errc{}) return;
  check(in.size() == kHelloSize && h.version == kProtocolVersion);
  std::array<std::byte, kHelloSize> again{};
  encode_hello(h, again);
  Hello twice;
  check(decode_hello(again, twice, why) == ferry::Errc{});
  check(twice.version == h.version && twice.flags == h.flags && twice.id == h.id &&
        twice.next_expected == h.next_expected && twice.first_unacked == h.first_unacked &&
        twice.max_message == h.max_message && twice.max_chunk == h.max_chunk && twice.status == h.status);
  check(std::memcmp(again.data(), in.data(), kHelloSize) == 0);
}

void locality(std::span<const std::byte, kLocalitySize> in) {
  std::string why;
  Locality l;
  if (decode_locality(in, l, why) == ferry::Errc{}) {
    check(l.shm_path.size() <= kMaxLocalityPath);
    check(l.shm_path.find('\0') == std::string::npos);
  } else {
    check(!why.empty());
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  // The hello: as long as its prefix says when the input has that many bytes, else all of it.
  std::size_t n = std::min(size, kMaxHelloSize);
  if (size >= kHelloPrefixSize) {
    std::size_t said = 0;
    std::string why;
    if (hello_size(std::span<const std::byte, kHelloPrefixSize>(bytes, kHelloPrefixSize), said, why) == ferry::Errc{} &&
        said <= size) {
      n = said;
    }
  }
  hello(std::span<const std::byte>(bytes, n));
  if (n >= kHelloPrefixSize + 4) {
    std::vector<std::byte> sealed(bytes, bytes + n);
    reseal(sealed);
    hello(sealed);
  }
  // The locality block: the bytes after the hello when there are enough, else the input's own.
  const std::byte* l = size >= kHelloSize + kLocalitySize ? bytes + kHelloSize : bytes;
  if (size >= kLocalitySize) {
    std::array<std::byte, kLocalitySize> raw{};
    std::memcpy(raw.data(), l, kLocalitySize);
    locality(raw);
    reseal(raw);
    locality(raw);
  }
  return 0;
}
