// SPDX-License-Identifier: Apache-2.0
// The wire format: hello and frame header encoding, and validation of untrusted input.
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "framing/batch.hpp"
#include "framing/crc32c.hpp"
#include "framing/frame.hpp"
#include "framing/reassembler.hpp"

namespace ferry::framing {
namespace {

using HelloBytes = std::array<std::byte, kHelloSize>;
using HeaderBytes = std::array<std::byte, kHeaderSize>;

Hello sample_hello() {
  Hello h;
  h.id = PeerId::random();
  h.flags = kHelloResume;
  h.next_expected = 7;
  h.first_unacked = 3;
  h.max_message = std::uint64_t{1} << 30;
  h.max_chunk = 1 << 20;
  return h;
}

TEST(Hello, RoundTripsEveryField) {
  const Hello in = sample_hello();
  HelloBytes bytes{};
  encode_hello(in, bytes);
  Hello out;
  std::string why;
  ASSERT_EQ(decode_hello(bytes, out, why), Errc{}) << why;
  EXPECT_EQ(out.id, in.id);
  EXPECT_EQ(out.flags, in.flags);
  EXPECT_EQ(out.next_expected, 7u);
  EXPECT_EQ(out.first_unacked, 3u);
  EXPECT_EQ(out.max_message, in.max_message);
  EXPECT_EQ(out.max_chunk, in.max_chunk);
  EXPECT_EQ(out.status, 0u);
  // The layout drawn in frame.hpp: magic, version 2 and size 68 little-endian at offsets 8 and
  // 10, the CRC-32C of the first 64 bytes at 64.
  EXPECT_EQ(std::memcmp(bytes.data(), "FERRY\r\n\x1a", 8), 0);
  EXPECT_EQ(bytes[8], std::byte{2});
  EXPECT_EQ(bytes[9], std::byte{0});
  EXPECT_EQ(bytes[10], std::byte{68});
  const std::uint32_t crc = crc32c(std::span<const std::byte>(bytes.data(), 64));
  EXPECT_EQ(std::memcmp(bytes.data() + 64, &crc, 4), 0);
}

// The checksum of the bytes before the last four, written into them (a hello edited on purpose).
template <class Bytes>
void reseal(Bytes& bytes) {
  const std::uint32_t crc = crc32c(std::span<const std::byte>(bytes.data(), bytes.size() - 4));
  std::memcpy(bytes.data() + bytes.size() - 4, &crc, 4);  // little-endian host (x86-64)
}

TEST(Hello, RejectsGarbageOtherVersionsAndBadFields) {
  HelloBytes bytes{};
  encode_hello(sample_hello(), bytes);
  Hello out;
  std::string why;

  HelloBytes garbage{};
  std::memcpy(garbage.data(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 28);
  EXPECT_EQ(decode_hello(garbage, out, why), Errc::protocol_error);
  EXPECT_NE(why.find("magic"), std::string::npos);
  EXPECT_EQ(decode_hello(std::span<const std::byte>(bytes.data(), 10), out, why), Errc::protocol_error);

  // Another version is refused only from a hello that checks out, whatever its size.
  HelloBytes v7 = bytes;
  v7[8] = std::byte{7};
  reseal(v7);
  EXPECT_EQ(decode_hello(v7, out, why), Errc::version_mismatch);
  EXPECT_NE(why.find("version 7"), std::string::npos);
  EXPECT_EQ(out.version, 7);
  std::vector<std::byte> bigger(200);
  std::memcpy(bigger.data(), bytes.data(), 10);
  bigger[8] = std::byte{3};
  bigger[10] = std::byte{200};
  reseal(bigger);
  std::size_t size = 0;
  EXPECT_EQ(hello_size(std::span<const std::byte, kHelloPrefixSize>(bigger.data(), kHelloPrefixSize), size, why), Errc{});
  EXPECT_EQ(size, 200u);
  EXPECT_EQ(decode_hello(bigger, out, why), Errc::version_mismatch);
  // Version 1 had no checksum: 64 bytes, recognised from the prefix.
  std::array<std::byte, 64> v1{};
  std::memcpy(v1.data(), bytes.data(), 64);
  v1[8] = std::byte{1};
  v1[10] = std::byte{64};
  EXPECT_EQ(decode_hello(v1, out, why), Errc::version_mismatch);
  EXPECT_NE(why.find("version 1"), std::string::npos);

  HelloBytes flags = bytes;
  flags[13] = std::byte{1};
  reseal(flags);
  EXPECT_EQ(decode_hello(flags, out, why), Errc::protocol_error);

  Hello nil = sample_hello();
  nil.id = PeerId{};
  HelloBytes nil_bytes{};
  encode_hello(nil, nil_bytes);
  EXPECT_EQ(decode_hello(nil_bytes, out, why), Errc::protocol_error);

  Hello chunk = sample_hello();
  chunk.max_chunk = 0;
  HelloBytes chunk_bytes{};
  encode_hello(chunk, chunk_bytes);
  EXPECT_EQ(decode_hello(chunk_bytes, out, why), Errc::protocol_error);

  Hello ids = sample_hello();
  ids.next_expected = 0;
  HelloBytes ids_bytes{};
  encode_hello(ids, ids_bytes);
  EXPECT_EQ(decode_hello(ids_bytes, out, why), Errc::protocol_error);

  Hello status = sample_hello();
  status.status = 999;
  HelloBytes status_bytes{};
  encode_hello(status, status_bytes);
  EXPECT_EQ(decode_hello(status_bytes, out, why), Errc::protocol_error);
}

// Damage on the wire is never taken for a refusal: whichever bit flips (in the magic, the
// version, the size, a field or the checksum), or with two magic bytes wrong, or cut short,
// the hello is "damaged" (peer_lost: the client connects again), not protocol_error or
// version_mismatch (final).
TEST(Hello, AnyDamageIsDamageNotARefusal) {
  HelloBytes bytes{};
  encode_hello(sample_hello(), bytes);
  Hello out;
  std::string why;
  for (std::size_t i = 0; i < kHelloSize; ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      HelloBytes damaged = bytes;
      damaged[i] ^= static_cast<std::byte>(1 << bit);
      EXPECT_EQ(decode_hello(damaged, out, why), Errc::peer_lost) << "byte " << i << " bit " << bit;
      std::size_t size = 0;
      const Errc prefix = hello_size(std::span<const std::byte, kHelloPrefixSize>(damaged.data(), kHelloPrefixSize), size, why);
      EXPECT_TRUE(prefix == Errc{} || prefix == Errc::peer_lost) << "byte " << i << " bit " << bit;
    }
  }
  HelloBytes two = bytes;
  two[1] = std::byte{0};
  two[6] = std::byte{0};
  EXPECT_EQ(decode_hello(two, out, why), Errc::peer_lost);
  two[3] = std::byte{0};
  EXPECT_EQ(decode_hello(two, out, why), Errc::protocol_error);
  EXPECT_EQ(decode_hello(std::span<const std::byte>(bytes.data(), kHelloSize - 1), out, why), Errc::peer_lost);
}

// A stream that lost bytes from a hello: whatever run of its bytes is gone, what a reader
// takes for the hello (its prefix, then as many bytes as that names, from what follows)
// never decodes as a hello, and never as another version's (a final refusal): the bytes
// after it are a frame, or the hello's ids line up as version 1's version and size.
TEST(Hello, BytesLostFromAHelloNeverMakeAHelloOrARefusal) {
  int v1_shaped = 0;  // losses that line up as version 1's version and size
  for (const std::uint64_t next_expected : {std::uint64_t{1}, std::uint64_t{0x400001}}) {
    Hello h = sample_hello();
    h.next_expected = next_expected;
    HelloBytes hello{};
    encode_hello(h, hello);
    std::vector<std::byte> stream(hello.begin(), hello.end());
    HeaderBytes frame{};
    encode_header({FrameType::data, 200, 1, 0, 200}, frame);
    stream.insert(stream.end(), frame.begin(), frame.end());
    for (int i = 0; i < 200; ++i) stream.push_back(static_cast<std::byte>(i * 7));
    for (std::size_t from = 0; from < kHelloSize; ++from) {
      for (std::size_t to = from + 1; to <= kHelloSize; ++to) {
        std::vector<std::byte> left(stream.begin(), stream.begin() + static_cast<std::ptrdiff_t>(from));
        left.insert(left.end(), stream.begin() + static_cast<std::ptrdiff_t>(to), stream.end());
        std::size_t size = 0;
        std::string why;
        const Errc prefix = hello_size(std::span<const std::byte, kHelloPrefixSize>(left.data(), kHelloPrefixSize), size, why);
        // Refused from its prefix, or a size beyond what came: the reader waits for bytes that
        // do not come (the handshake timeout ends it).
        if (prefix != Errc{} || size > left.size()) continue;
        Hello out;
        const Errc e = decode_hello(std::span<const std::byte>(left.data(), size), out, why);
        EXPECT_NE(e, Errc{}) << "bytes " << from << "-" << to << " lost";
        EXPECT_NE(e, Errc::version_mismatch) << "bytes " << from << "-" << to << " lost: " << why;
        v1_shaped += why.find("a version 1 hello") != std::string::npos ? 1 : 0;
      }
    }
  }
  EXPECT_GT(v1_shaped, 0) << "no loss lined up as version 1: the case this test is for";
}

TEST(Locality, RoundTripsAndAnyDamagedBitIsDamage) {
  Locality l;
  l.boot_id.fill(0x5a);
  l.ipc_namespace = 4026531839;
  l.uid = 1000;
  l.shm_path = "/tmp/ferry-1000/auto.sock";
  std::array<std::byte, kLocalitySize> bytes{};
  encode_locality(l, bytes);
  Locality out;
  std::string why;
  ASSERT_EQ(decode_locality(bytes, out, why), Errc{}) << why;
  EXPECT_EQ(out.boot_id, l.boot_id);
  EXPECT_EQ(out.ipc_namespace, l.ipc_namespace);
  EXPECT_EQ(out.uid, l.uid);
  EXPECT_EQ(out.shm_path, l.shm_path);
  for (std::size_t i = 0; i < kLocalitySize; ++i) {
    auto damaged = bytes;
    damaged[i] ^= std::byte{0x10};
    EXPECT_EQ(decode_locality(damaged, out, why), Errc::peer_lost) << "byte " << i;
  }
  auto nul = bytes;
  nul[45] = std::byte{0};  // a NUL inside the path, sealed: refused by the field checks
  reseal(nul);
  EXPECT_EQ(decode_locality(nul, out, why), Errc::protocol_error);
}

Errc decode(const FrameHeader& h, std::uint32_t max_chunk = 1 << 20) {
  HeaderBytes bytes{};
  encode_header(h, bytes);
  FrameHeader out;
  std::string why;
  return decode_header(bytes, max_chunk, out, why);
}

TEST(FrameHeader, RoundTripsAndHasTheDrawnLayout) {
  const FrameHeader in{FrameType::data, 100, 5, 200, 1000};
  HeaderBytes bytes{};
  encode_header(in, bytes);
  EXPECT_EQ(bytes[0], std::byte{1});
  EXPECT_EQ(bytes[4], std::byte{100});
  EXPECT_EQ(bytes[8], std::byte{5});
  EXPECT_EQ(bytes[16], std::byte{200});
  FrameHeader out;
  std::string why;
  ASSERT_EQ(decode_header(bytes, 1 << 20, out, why), Errc{}) << why;
  EXPECT_EQ(out.type, FrameType::data);
  EXPECT_EQ(out.length, 100u);
  EXPECT_EQ(out.a, 5u);
  EXPECT_EQ(out.b, 200u);
  EXPECT_EQ(out.c, 1000u);
}

TEST(FrameHeader, RejectsEveryMalformedHeader) {
  EXPECT_EQ(decode({FrameType::data, 2 << 20, 1, 0, 4 << 20}), Errc::protocol_error);  // chunk > agreed
  EXPECT_EQ(decode({FrameType::data, 10, 1, 995, 1000}), Errc::protocol_error);       // past the end
  EXPECT_EQ(decode({FrameType::data, 10, 1, 2000, 1000}), Errc::protocol_error);      // offset > total
  EXPECT_EQ(decode({FrameType::data, 0, 1, 0, 10}), Errc::protocol_error);            // empty chunk
  // offset + length would wrap around 2^64: still caught.
  EXPECT_EQ(decode({FrameType::data, 10, 1, ~std::uint64_t{0} - 5, ~std::uint64_t{0}}), Errc::protocol_error);
  EXPECT_EQ(decode({FrameType::data, 10, 1, ~std::uint64_t{0} - 10, ~std::uint64_t{0}}), Errc{});
  EXPECT_EQ(decode({FrameType::ack, 4, 1, 0, 0}), Errc::protocol_error);  // control with payload
  EXPECT_EQ(decode({FrameType::keepalive, 0, 1, 0, 0}), Errc::protocol_error);
  EXPECT_EQ(decode({FrameType::close, 0, 999, 0, 0}), Errc::protocol_error);
  EXPECT_EQ(decode({FrameType::close, 0, 0, 0, 0}), Errc{});
  EXPECT_EQ(decode({FrameType::data, 0, 1, 0, 0}), Errc{});  // an empty message

  HeaderBytes bytes{};
  encode_header({FrameType::keepalive, 0, 0, 0, 0}, bytes);
  FrameHeader out;
  std::string why;
  HeaderBytes unknown = bytes;
  unknown[0] = std::byte{9};
  EXPECT_EQ(decode_header(unknown, 1 << 20, out, why), Errc::protocol_error);
  EXPECT_NE(why.find("unknown frame type 9"), std::string::npos);
  HeaderBytes reserved = bytes;
  reserved[2] = std::byte{1};
  EXPECT_EQ(decode_header(reserved, 1 << 20, out, why), Errc::protocol_error);
}

TEST(Reassembler, ReassemblesChunksInOrderStraightIntoTheMessage) {
  Reassembler r;
  r.reset(1, 100);
  std::string why;
  ASSERT_EQ(r.begin_chunk({FrameType::data, 6, 1, 0, 10}, why), Errc{}) << why;
  auto t = r.chunk_target();
  ASSERT_EQ(t.size(), 6u);
  std::memcpy(t.data(), "hello ", 6);
  r.advance(6);
  EXPECT_TRUE(r.chunk_done());
  EXPECT_FALSE(r.message_done());
  ASSERT_EQ(r.begin_chunk({FrameType::data, 4, 1, 6, 10}, why), Errc{}) << why;
  std::memcpy(r.chunk_target().data(), "ryef", 4);
  r.advance(4);
  ASSERT_TRUE(r.message_done());
  const Bytes m = r.take();
  EXPECT_EQ(m.text(), "hello ryef");
  EXPECT_EQ(r.next_expected(), 2u);
}

TEST(Reassembler, RefusesGapsWrongIdsChangedTotalsAndOversizeMessages) {
  Reassembler r;
  std::string why;
  r.reset(5, 100);
  EXPECT_EQ(r.begin_chunk({FrameType::data, 1, 4, 0, 1}, why), Errc::protocol_error);  // duplicate id
  EXPECT_EQ(r.begin_chunk({FrameType::data, 1, 6, 0, 1}, why), Errc::protocol_error);  // skipped id
  EXPECT_EQ(r.begin_chunk({FrameType::data, 1, 5, 3, 10}, why), Errc::protocol_error); // starts mid-way
  EXPECT_EQ(r.begin_chunk({FrameType::data, 1, 5, 0, 101}, why), Errc::message_too_large);
  EXPECT_NE(why.find("over the limit of 100"), std::string::npos);
  ASSERT_EQ(r.begin_chunk({FrameType::data, 4, 5, 0, 10}, why), Errc{});
  r.advance(4);
  EXPECT_EQ(r.begin_chunk({FrameType::data, 4, 5, 5, 10}, why), Errc::protocol_error);  // gap
  EXPECT_EQ(r.begin_chunk({FrameType::data, 4, 5, 4, 12}, why), Errc::protocol_error);  // total changed
  EXPECT_EQ(r.begin_chunk({FrameType::data, 4, 6, 4, 10}, why), Errc::protocol_error);  // other message
  EXPECT_EQ(r.begin_chunk({FrameType::data, 6, 5, 4, 10}, why), Errc{});
}

TEST(Batch, MergesSmallFramesAndReferencesLargePayloads) {
  Batch b(4096);
  const std::array<std::byte, 8> small{};
  std::vector<std::byte> large(4096);
  b.add({FrameType::data, 8, 1, 0, 8}, small);
  b.add({FrameType::ack, 0, 1, 8, 0}, {});
  b.add({FrameType::data, 4096, 2, 0, 4096}, large);
  b.add({FrameType::keepalive, 0, 0, 0, 0}, {});
  const auto& bufs = b.buffers();
  ASSERT_EQ(bufs.size(), 3u);  // [hdr, 8 B, hdr, hdr] [large] [hdr]
  EXPECT_EQ(bufs[0].size(), 3 * kHeaderSize + 8);
  EXPECT_EQ(bufs[1].data(), large.data());  // not copied
  EXPECT_EQ(bufs[2].size(), kHeaderSize);
  EXPECT_EQ(b.bytes(), 4 * kHeaderSize + 8 + 4096);
}

TEST(Crc32c, MatchesTheStandardCheckValueAndChains) {
  const std::string check = "123456789";
  const auto bytes = std::as_bytes(std::span(check));
  EXPECT_EQ(crc32c(bytes), 0xE3069283u);  // the CRC-32C check value (RFC 3720)
  EXPECT_EQ(crc32c(bytes.subspan(4), crc32c(bytes.first(4))), 0xE3069283u);
  EXPECT_EQ(crc32c({}), 0u);
  // The table agrees with the instruction on every length and alignment around 8.
  std::vector<std::byte> data(100);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::byte>(i * 37 + 11);
  for (std::size_t off = 0; off < 9; ++off) {
    for (std::size_t n = 0; n + off <= data.size(); n += 7) {
      const auto piece = std::span<const std::byte>(data).subspan(off, n);
      EXPECT_EQ(crc32c(piece), ~detail::crc32c_table(~0u, piece.data(), piece.size())) << off << " " << n;
    }
  }
}

TEST(Batch, WithChecksumsEachFrameEndsWithTheCrcOfItsHeaderAndPayload) {
  Batch b(4096);
  b.set_checksums(true);
  std::array<std::byte, 8> small{};
  small.fill(std::byte{7});
  std::vector<std::byte> large(4096, std::byte{9});
  b.add({FrameType::data, 8, 1, 0, 8}, small);
  b.add({FrameType::data, 4096, 2, 0, 4096}, large);
  b.add({FrameType::keepalive, 0, 0, 0, 0}, {});
  std::vector<std::byte> wire;
  for (const auto& piece : b.buffers()) wire.insert(wire.end(), piece.begin(), piece.end());
  ASSERT_EQ(wire.size(), 3 * (kHeaderSize + kTrailerSize) + 8 + 4096);
  EXPECT_EQ(b.bytes(), wire.size());
  std::size_t at = 0;
  for (const std::size_t payload : {std::size_t{8}, std::size_t{4096}, std::size_t{0}}) {
    const auto frame = std::span<const std::byte>(wire).subspan(at, kHeaderSize + payload);
    std::uint32_t trailer = 0;
    for (std::size_t i = 0; i < kTrailerSize; ++i) trailer |= std::to_integer<std::uint32_t>(wire[at + kHeaderSize + payload + i]) << (8 * i);
    EXPECT_EQ(trailer, crc32c(frame));
    at += kHeaderSize + payload + kTrailerSize;
  }
}

}  // namespace
}  // namespace ferry::framing
