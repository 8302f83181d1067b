// SPDX-License-Identifier: Apache-2.0
// Fuzz target: the handshake a peer sends first (a 64-byte hello) and the locality block an
// auto:// server answers a probe with, through their decoders. A hello that decodes encodes
// back to the same fields; the locality's socket path is bounded and has no NUL. Layer:
// tests/fuzz.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "framing/frame.hpp"

namespace {
void check(bool ok) {
  if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ferry::framing;
  std::string why;
  if (size >= kHelloSize) {
    std::array<std::byte, kHelloSize> raw{};
    std::memcpy(raw.data(), data, kHelloSize);
    Hello hello;
    if (decode_hello(raw, hello, why) == ferry::Errc{}) {
      std::array<std::byte, kHelloSize> again{};
      encode_hello(hello, again);
      Hello twice;
      check(decode_hello(again, twice, why) == ferry::Errc{});
      check(twice.version == hello.version && twice.flags == hello.flags && twice.id == hello.id &&
            twice.next_expected == hello.next_expected && twice.first_unacked == hello.first_unacked &&
            twice.max_message == hello.max_message && twice.max_chunk == hello.max_chunk &&
            twice.status == hello.status);
    } else {
      check(!why.empty());
    }
  }
  // The locality block: the bytes after the hello when there are enough, else the input's own.
  const std::uint8_t* l = size >= kHelloSize + kLocalitySize ? data + kHelloSize : data;
  if (size >= kLocalitySize) {
    std::array<std::byte, kLocalitySize> raw{};
    std::memcpy(raw.data(), l, kLocalitySize);
    Locality locality;
    if (decode_locality(raw, locality, why) == ferry::Errc{}) {
      check(locality.shm_path.size() <= kMaxLocalityPath);
      check(locality.shm_path.find('\0') == std::string::npos);
    } else {
      check(!why.empty());
    }
  }
  return 0;
}
