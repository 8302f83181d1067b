// SPDX-License-Identifier: Apache-2.0
// Codecs: the built-in ones (bytes, strings, trivially copyable types, protobuf) and a user
// codec through the one customisation point; decode() refuses bytes that do not hold a T.
#include <gtest/gtest.h>

#include <ferry/codec.hpp>
#include <ferry/message.hpp>

#include "unit/core/codec_test.pb.h"

namespace geometry {
struct Polygon {
  std::vector<float> xy;
};
}  // namespace geometry

template <>
struct ferry::Codec<geometry::Polygon> {
  static Bytes encode(const geometry::Polygon& p) {
    Bytes b(p.xy.size() * sizeof(float));
    std::memcpy(b.data(), p.xy.data(), b.size());
    return b;
  }
  static geometry::Polygon decode(std::span<const std::byte> bytes) {
    if (bytes.size() % (2 * sizeof(float)) != 0) throw Error(Errc::protocol_error, "polygon: odd size");
    geometry::Polygon p;
    p.xy.resize(bytes.size() / sizeof(float));
    std::memcpy(p.xy.data(), bytes.data(), bytes.size());
    return p;
  }
};

namespace ferry {
namespace {

template <class T>
T round_trip(const T& value) {
  const Payload p = Payload::encode(value);
  return Codec<T>::decode(p.bytes());
}

Errc decode_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.errc();
  }
  return Errc{};
}

TEST(Codec, BuiltInsRoundTrip) {
  EXPECT_EQ(round_trip(std::string("hello")), "hello");
  EXPECT_EQ(round_trip(std::string()), "");
  struct Pod {
    int a;
    double b;
  };
  const Pod pod = round_trip(Pod{7, 2.5});
  EXPECT_EQ(pod.a, 7);
  EXPECT_EQ(pod.b, 2.5);
  EXPECT_EQ(round_trip(std::uint64_t{42}), 42u);
  const Bytes b = round_trip(Bytes::copy_of(std::string_view("raw")));
  EXPECT_EQ(b.text(), "raw");
}

TEST(Codec, TriviallyCopyableDecodeChecksTheSize) {
  const std::array<std::byte, 3> three{};
  EXPECT_EQ(decode_error([&] { (void)Codec<std::uint32_t>::decode(three); }), Errc::protocol_error);
}

TEST(Codec, ProtobufMessagesRoundTripAndGarbageIsRefused) {
  test::Quote q;
  q.set_symbol("FRY");
  q.set_price(12.5);
  q.add_sizes(100);
  q.add_sizes(-3);
  const test::Quote back = round_trip(q);
  EXPECT_EQ(back.symbol(), "FRY");
  EXPECT_EQ(back.price(), 12.5);
  ASSERT_EQ(back.sizes_size(), 2);
  EXPECT_EQ(back.sizes(1), -3);
  const std::array<std::byte, 4> garbage{std::byte{0xff}, std::byte{0xff}, std::byte{0xff}, std::byte{0xff}};
  EXPECT_EQ(decode_error([&] { (void)Codec<test::Quote>::decode(garbage); }), Errc::protocol_error);
  Message m{PeerId::random(), Bytes::copy_of(Payload::encode(q).bytes())};
  EXPECT_EQ(m.as<test::Quote>().symbol(), "FRY");
}

TEST(Codec, UserCodecsPlugIn) {
  const geometry::Polygon p{{0, 0, 1, 0, 1, 1}};
  EXPECT_EQ(round_trip(p).xy, p.xy);
  const std::array<std::byte, 4> odd{};
  EXPECT_EQ(decode_error([&] { (void)Codec<geometry::Polygon>::decode(odd); }), Errc::protocol_error);
}

TEST(Payload, OwnedCopiedAndBorrowedBytes) {
  std::string s(100, 'o');  // long enough to live on the heap (no small-string buffer)
  const char* data = s.data();
  const Payload owned(std::move(s));
  EXPECT_EQ(reinterpret_cast<const char*>(owned.bytes().data()), data);  // moved, not copied
  const std::vector<std::byte> v(5, std::byte{1});
  const Payload copied = Payload::copy(v);
  EXPECT_NE(copied.bytes().data(), v.data());
  EXPECT_FALSE(copied.borrowed());
  const Payload borrowed = Payload::borrow(v);
  EXPECT_EQ(borrowed.bytes().data(), v.data());
  EXPECT_TRUE(borrowed.borrowed());
}

}  // namespace
}  // namespace ferry
