// SPDX-License-Identifier: Apache-2.0
// Fuzz target: a peer's byte stream after the handshake, through the frame decoder and the
// reassembler as every stream transport's reader uses them (src/core/frame_reader.cpp): headers
// decoded and checked, data chunks placed into the message they continue, whole messages taken.
// The input is untrusted bytes; any outcome but a clean error or a message is a bug. Checked:
// no crash or sanitizer report, a decoded length never over max_chunk, a message never larger
// than its limit or than what its chunks carried, ids strictly consecutive. Layer: tests/fuzz.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "framing/frame.hpp"
#include "framing/reassembler.hpp"

namespace {
constexpr std::uint32_t kFuzzMaxChunk = 4096;
constexpr std::uint64_t kFuzzMaxMessage = std::uint64_t{1} << 20;

void check(bool ok) {
  if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace ferry::framing;
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  Reassembler reassembler;
  reassembler.reset(1, kFuzzMaxMessage);
  std::uint64_t expected_id = 1;
  std::string why;
  while (in.size() >= kHeaderSize) {
    FrameHeader h;
    if (decode_header(in.first<kHeaderSize>(), kFuzzMaxChunk, h, why) != ferry::Errc{}) {
      check(!why.empty());  // an error always says why
      return 0;
    }
    check(h.length <= kFuzzMaxChunk);
    in = in.subspan(kHeaderSize);
    if (h.type != FrameType::data) {
      check(h.type == FrameType::ack || h.type == FrameType::keepalive || h.type == FrameType::close);
      continue;
    }
    if (reassembler.begin_chunk(h, why) != ferry::Errc{}) {
      check(!why.empty());
      return 0;
    }
    // The chunk's bytes as they arrive: possibly fewer than announced (the stream ends).
    while (!reassembler.chunk_done() && !in.empty()) {
      const std::span<std::byte> target = reassembler.chunk_target();
      const std::size_t n = std::min(target.size(), in.size());
      std::memcpy(target.data(), in.data(), n);
      reassembler.advance(n);
      in = in.subspan(n);
    }
    if (!reassembler.chunk_done()) return 0;  // truncated mid-chunk: the reader waits for more
    if (reassembler.message_done()) {
      const ferry::Bytes message = reassembler.take();
      check(message.size() <= kFuzzMaxMessage);
      check(reassembler.next_expected() == ++expected_id);
    }
  }
  return 0;
}
