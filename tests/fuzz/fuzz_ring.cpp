// SPDX-License-Identifier: Apache-2.0
// Fuzz target: the byte ring's reader over a segment whose contents a hostile or corrupted
// producer controls. Each input is laid over a valid 4 KiB ring's segment image (a memfd, as
// the shm transport hands over): its first byte chooses whether the header is patched too
// (then the next 256 bytes are XORed into it), the next 384 bytes become the producer,
// consumer and wait lines, the rest the data region. The segment is then joined by descriptor
// (Segment::open_fd validates the header) and read with ByteRing::Consumer until it stops.
// Checked: no crash or sanitizer report; every message lies inside the data region; the
// reader ends with a clean status (would_block, closed, protocol_error) or a ferry::Error.
// Layer: tests/fuzz.
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include <ferry/error.hpp>
#include <ferry/shm/layout.hpp>
#include <ferry/shm/ring.hpp>
#include <ferry/shm/segment.hpp>

namespace {
namespace shm = ferry::shm;
namespace layout = ferry::shm::layout;

constexpr std::uint64_t kCapacity = 4096;

void check(bool ok) {
  if (!ok) std::abort();
}

struct Image {
  shm::Segment segment = shm::Segment::create_anonymous({shm::RingKind::byte_ring, kCapacity, 0});
  std::array<std::byte, layout::kDataOffset> pristine{};  // the header and lines as created
  Image() { std::memcpy(pristine.data(), segment.data() - layout::kDataOffset, pristine.size()); }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Image image;
  std::array<std::byte, layout::kDataOffset + kCapacity> bytes{};
  std::memcpy(bytes.data(), image.pristine.data(), image.pristine.size());
  std::size_t at = 0;
  const auto take = [&](std::size_t n) {
    const std::size_t k = std::min(n, size - at);
    const std::uint8_t* p = data + at;
    at += k;
    return std::pair{p, k};
  };
  const bool patch_header = size > 0 && (data[at++] & 1) != 0;
  if (patch_header) {
    const auto [p, n] = take(sizeof(layout::SegmentHeader));
    for (std::size_t i = 0; i < n; ++i) bytes[i] ^= static_cast<std::byte>(p[i]);
  }
  {
    const auto [p, n] = take(sizeof(layout::Control) - sizeof(layout::SegmentHeader));
    std::memcpy(bytes.data() + sizeof(layout::SegmentHeader), p, n);
  }
  {
    const auto [p, n] = take(kCapacity);
    std::memcpy(bytes.data() + layout::kDataOffset, p, n);
  }
  const int fd = image.segment.fd();
  check(::pwrite(fd, bytes.data(), bytes.size(), 0) == static_cast<ssize_t>(bytes.size()));

  try {
    shm::Segment joined = shm::Segment::open_fd(fd, {shm::RingKind::byte_ring, 0, 0});
    shm::ByteRing::Consumer consumer(joined);
    const std::byte* lo = joined.data();
    const std::byte* hi = joined.data() + kCapacity;
    for (int i = 0; i < 1024; ++i) {
      std::span<const std::byte> msg;
      const shm::Status s = consumer.try_peek(msg);
      if (s != shm::Status::ok) {
        check(s == shm::Status::would_block || s == shm::Status::closed || s == shm::Status::protocol_error);
        break;
      }
      check(msg.empty() || (msg.data() >= lo && msg.data() + msg.size() <= hi));
      volatile std::uint8_t sum = 0;
      for (const std::byte b : msg) sum = static_cast<std::uint8_t>(sum + static_cast<std::uint8_t>(b));
      consumer.release();
    }
  } catch (const ferry::Error&) {
    // A header the join refused, or a consumer it would not attach: a clean error.
  }
  return 0;
}
