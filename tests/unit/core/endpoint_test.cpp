// SPDX-License-Identifier: Apache-2.0
// Endpoint URLs and peer ids: parsing, printing, and errors that name the bad part.
#include <gtest/gtest.h>

#include <ferry/endpoint.hpp>
#include <ferry/error.hpp>
#include <ferry/peer_id.hpp>

#include <set>

namespace ferry {
namespace {

std::string parse_error(std::string_view url) {
  try {
    (void)Endpoint::parse(url);
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::invalid_argument);
    return e.what();
  }
  ADD_FAILURE() << url << " parsed";
  return {};
}

TEST(Endpoint, ParsesEveryScheme) {
  const Endpoint tcp = Endpoint::parse("tcp://127.0.0.1:51966");
  EXPECT_EQ(tcp.scheme, Scheme::tcp);
  EXPECT_EQ(tcp.host, "127.0.0.1");
  EXPECT_EQ(tcp.port, 51966);
  EXPECT_EQ(Endpoint::parse("tls://localhost:0").port, 0);
  const Endpoint v6 = Endpoint::parse("tcp://[::1]:80");
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.to_string(), "tcp://[::1]:80");
  const Endpoint shm = Endpoint::parse("shm://my-service.v1");
  EXPECT_EQ(shm.scheme, Scheme::shm);
  EXPECT_EQ(shm.path, "my-service.v1");
  const Endpoint mqtt = Endpoint::parse("mqtt://broker/ferry/test");
  EXPECT_EQ(mqtt.port, 1883);
  EXPECT_EQ(mqtt.path, "ferry/test");
  EXPECT_EQ(Endpoint::parse("mqtts://b:1").port, 1);
  EXPECT_EQ(Endpoint::parse("mqtts://b").port, 8883);
  EXPECT_EQ(Endpoint::parse("grpc://h:1").scheme, Scheme::grpc);
  EXPECT_EQ(Endpoint::parse("auto://0.0.0.0:5").scheme, Scheme::automatic);
  for (const char* url : {"tcp://a:1", "tls://[fe80::1]:65535", "shm://x", "mqtt://b:1883/p", "auto://h:2"}) {
    EXPECT_EQ(Endpoint::parse(Endpoint::parse(url).to_string()), Endpoint::parse(url)) << url;
  }
}

TEST(Endpoint, ErrorsNameTheBadPart) {
  EXPECT_NE(parse_error("127.0.0.1:80").find("expected scheme://"), std::string::npos);
  EXPECT_NE(parse_error("udp://h:1").find("unknown scheme 'udp'"), std::string::npos);
  EXPECT_NE(parse_error("tcp://h:99999").find("port 99999 out of range"), std::string::npos);
  EXPECT_NE(parse_error("tcp://h:8x").find("bad port '8x'"), std::string::npos);
  EXPECT_NE(parse_error("tcp://h").find("missing port"), std::string::npos);
  EXPECT_NE(parse_error("tcp://:80").find("missing host"), std::string::npos);
  EXPECT_NE(parse_error("tcp://h o:80").find("bad character ' ' in host"), std::string::npos);
  EXPECT_NE(parse_error("tcp://[::1:80").find("unterminated '['"), std::string::npos);
  EXPECT_NE(parse_error("tcp://h:80/x").find("unexpected path"), std::string::npos);
  EXPECT_NE(parse_error("shm://").find("missing name"), std::string::npos);
  EXPECT_NE(parse_error("shm://a/b").find("bad character '/'"), std::string::npos);
  EXPECT_NE(parse_error("mqtt://b/a/#").find("'+', '#'"), std::string::npos);
  EXPECT_NE(parse_error("tcp://h:-1").find("bad port"), std::string::npos);
}

TEST(PeerId, RandomIdsAreVersion4AndDistinct) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const PeerId id = PeerId::random();
    EXPECT_EQ(id.bytes[6] >> 4, 4);
    EXPECT_EQ(id.bytes[8] >> 6, 2);
    EXPECT_TRUE(seen.insert(id.to_string()).second);
  }
}

TEST(PeerId, ParsesAndPrintsTheCanonicalForm) {
  const PeerId id = PeerId::parse("123E4567-e89b-12d3-a456-426614174000");
  EXPECT_EQ(id.to_string(), "123e4567-e89b-12d3-a456-426614174000");
  EXPECT_EQ(PeerId::parse(id.to_string()), id);
  EXPECT_TRUE(PeerId{}.is_nil());
  EXPECT_THROW((void)PeerId::parse("123e4567e89b12d3a456426614174000"), Error);
  EXPECT_THROW((void)PeerId::parse("123e4567-e89b-12d3-a456-42661417400g"), Error);
}

}  // namespace
}  // namespace ferry
