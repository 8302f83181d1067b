// SPDX-License-Identifier: Apache-2.0
// What only the MQTT transport has: a publish lost in between (QoS 0) detected, reported and
// recovered; a broker killed and restarted mid-stream; Ferry's window within a small broker
// queue; the server's presence (a second server refused, no server found); credentials; and
// the publish header's validation. Each test starts its own Mosquitto.
#include <gtest/gtest.h>

#include <ferry/ferry.hpp>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "support/errors.hpp"
#include "support/mosquitto.hpp"
#include "support/numbered.hpp"
#include "support/mqtt_drop_proxy.hpp"
#include "transport/mqtt/mqtt_transport.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using testing::MosquittoBroker;
constexpr auto kWait = 20s;

using test::number_of;

Bytes numbered(std::uint64_t i, std::size_t size = 256) { return test::numbered(i, size); }
Message must_get(Communicator& c, std::chrono::nanoseconds timeout = kWait) { return test::must_get(c, timeout); }
template <class F>
Errc errc_of(F&& f) {
  return test::error_of(std::forward<F>(f));
}

std::string url(std::uint16_t port, const std::string& prefix) { return "mqtt://127.0.0.1:" + std::to_string(port) + "/" + prefix; }

Options with(const std::string& endpoint, int qos = 1) {
  Options o;
  o.endpoint = endpoint;
  o.mqtt.qos = qos;
  return o;
}

MosquittoBroker::Config plain() {
  MosquittoBroker::Config c;
  c.tls = false;
  c.auth = false;
  return c;
}

TEST(MqttTransport, QoS0PublishLostInBetweenIsDetectedReportedAndResent) {
  MosquittoBroker broker(plain());
  testing::MqttDropProxy proxy(broker.port());
  auto server = open(Purpose::server, with(url(broker.port(), "qos0"), 0));
  auto client = open(Purpose::client, with(url(proxy.port(), "qos0"), 0));
  for (std::uint64_t i = 0; i < 50; ++i) (void)client.put(numbered(i));
  for (std::uint64_t i = 0; i < 50; ++i) ASSERT_EQ(number_of(must_get(server)), i);
  // The client's next data publish (kind 1) to the server vanishes between it and the broker.
  proxy.drop_next("/s/", 1, 1);
  for (std::uint64_t i = 50; i < 250; ++i) (void)client.put(numbered(i));
  for (std::uint64_t i = 50; i < 250; ++i) ASSERT_EQ(number_of(must_get(server)), i) << "lost or duplicated";
  EXPECT_FALSE(server.get_for(100ms).has_value());
  EXPECT_EQ(proxy.dropped(), 1);
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_NE(s.peers[0].transport_detail.find(", lost 1,"), std::string::npos) << s.peers[0].transport_detail;
  EXPECT_GE(s.peers[0].connects, 2u) << "the loss must end the connection it happened on";
}

TEST(MqttTransport, BrokerKilledAndRestartedMidStreamLosesNothing) {
  MosquittoBroker broker(plain());
  Options so = with(url(broker.port(), "restart"));
  auto server = open(Purpose::server, so);
  auto client = open(Purpose::client, with(url(broker.port(), "restart")));
  constexpr std::uint64_t kCount = 3000;
  std::thread producer([&] {
    for (std::uint64_t i = 0; i < kCount; ++i) {
      (void)client.put(numbered(i));
      if (i % 100 == 0) std::this_thread::sleep_for(2ms);
    }
  });
  std::thread killer;
  std::uint64_t bad = kCount;
  for (std::uint64_t i = 0; i < kCount && bad == kCount; ++i) {
    const auto m = server.get_for(30s);
    if (!m || number_of(*m) != i) bad = i;
    if (i == 500) {
      killer = std::thread([&] {
        broker.kill();
        std::this_thread::sleep_for(300ms);
        broker.restart();
      });
    }
  }
  producer.join();
  if (killer.joinable()) killer.join();
  ASSERT_EQ(bad, kCount) << "message " << bad << " lost, duplicated or late";
  EXPECT_FALSE(server.get_for(100ms).has_value());
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_GE(s.peers[0].connects, 2u) << "the broker's restart must have ended the first connection";
  // Both directions work after it.
  server.put(std::string("after"), client.id()).wait_delivered();
  EXPECT_EQ(must_get(client).text(), "after");
}

TEST(MqttTransport, WindowKeepsWithinASmallBrokerQueueAndASlowReaderLosesNothing) {
  MosquittoBroker::Config c = plain();
  c.max_queued_messages = 40;  // Mosquitto drops QoS 1 publishes beyond this per client
  MosquittoBroker broker(c);
  Options so = with(url(broker.port(), "window"));
  so.mqtt.window_publishes = 32;
  so.connection.receive_queue_messages = 4;  // the server reads slowly: the client must wait
  auto server = open(Purpose::server, so);
  Options co = with(url(broker.port(), "window"));
  co.mqtt.window_publishes = 32;
  co.connection.merge_size = 1024;  // one message per publish
  auto client = open(Purpose::client, co);
  constexpr std::uint64_t kCount = 2000;
  std::thread producer([&] {
    for (std::uint64_t i = 0; i < kCount; ++i) (void)client.put(numbered(i, 1000));
  });
  for (std::uint64_t i = 0; i < kCount; ++i) {
    if (i % 200 == 0) std::this_thread::sleep_for(20ms);
    ASSERT_EQ(number_of(must_get(server)), i);
  }
  producer.join();
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_NE(s.peers[0].transport_detail.find(", lost 0,"), std::string::npos) << s.peers[0].transport_detail;
  EXPECT_EQ(s.peers[0].connects, 1u);
}

TEST(MqttTransport, PresenceRefusesASecondServerAndReportsAMissingOne) {
  MosquittoBroker broker(plain());
  const std::string at = url(broker.port(), "presence");
  {
    Options co = with(at);
    co.connection.connect_timeout = 1s;
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(errc_of([&] { (void)open(Purpose::client, co); }), Errc::not_found);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  }
  auto server = open(Purpose::server, with(at));
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::server, with(at)); }), Errc::address_in_use);
  auto client = open(Purpose::client, with(at));
  client.put(std::string("hi")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "hi");
  // A clean close replaces the presence: the next server starts at once, and a client that
  // comes after finds it.
  client.close();
  server.close();
  auto second = open(Purpose::server, with(at));
  auto again = open(Purpose::client, with(at));
  again.put(std::string("again")).wait_delivered();
  EXPECT_EQ(must_get(second).text(), "again");
}

TEST(MqttTransport, AForeignGoneOnThePresenceTopicEndsNothing) {
  // Another server's last will (one refused as the second), or anyone's publish, on
  // <prefix>/server: the live server overwrites it, and its clients keep their connections.
  MosquittoBroker broker(plain());
  const std::string at = url(broker.port(), "foreign");
  auto server = open(Purpose::server, with(at));
  auto client = open(Purpose::client, with(at));
  client.put(std::string("before")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "before");
  const std::string cmd = "mosquitto_pub -h 127.0.0.1 -p " + std::to_string(broker.port()) +
                          " -q 1 -r -t foreign/server -m 'ferry-gone 00000000000000000000000000000000'";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  std::this_thread::sleep_for(200ms);
  client.put(std::string("after")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "after");
  EXPECT_EQ(server.stats().peers.at(0).connects, 1u) << "the forged gone ended the connection";
  auto late = open(Purpose::client, with(at));  // finds the presence the server restored
  late.put(std::string("late")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "late");
}

TEST(MqttTransport, CredentialsAreSentAndAWrongPasswordIsRefused) {
  MosquittoBroker::Config c;
  c.tls = false;
  MosquittoBroker broker(c);
  const std::string at = url(broker.auth_port(), "auth");
  Options so = with(at);
  so.mqtt.username = MosquittoBroker::user();
  so.mqtt.password = MosquittoBroker::password();
  auto server = open(Purpose::server, so);
  Options wrong = so;
  wrong.mqtt.password = "not-the-password";
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::client, wrong); }), Errc::permission_denied);
  Options none = with(at);
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::client, none); }), Errc::permission_denied);
  auto client = open(Purpose::client, so);
  client.put(std::string("authenticated")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "authenticated");
}

TEST(MqttTransport, BadOptionsAreRefused) {
  Options o = with("mqtt://127.0.0.1:1/x");
  o.mqtt.qos = 2;
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::server, o); }), Errc::invalid_argument);
  o = with("mqtt://127.0.0.1:1/x");
  o.mqtt.window_bytes = 1;
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::server, o); }), Errc::invalid_argument);
}

TEST(MqttPublishHeader, RoundTripsAndRejectsWhatIsMalformed) {
  using namespace detail::mqtt_link;
  std::array<std::byte, kPubHeaderSize + 8> buf{};
  PubHeader h;
  h.kind = Kind::data;
  h.window_pubs = 64;
  h.seq = 7;
  h.ack = 3;
  h.window_bytes = 1 << 20;
  encode_pub_header(h, std::span<std::byte, kPubHeaderSize>(buf.data(), kPubHeaderSize));
  PubHeader d;
  std::string why;
  ASSERT_EQ(decode_pub_header(buf, d, why), Errc{}) << why;
  EXPECT_EQ(d.seq, 7u);
  EXPECT_EQ(d.ack, 3u);
  EXPECT_EQ(d.window_pubs, 64u);
  EXPECT_EQ(d.window_bytes, 1u << 20);
  const auto bad = [&](auto mutate) {
    auto b = buf;
    mutate(b);
    PubHeader x;
    std::string w;
    return decode_pub_header(b, x, w) == Errc::protocol_error && !w.empty();
  };
  EXPECT_TRUE(bad([](auto& b) { b[0] = std::byte{9}; }));                 // unknown kind
  EXPECT_TRUE(bad([](auto& b) { b[2] = std::byte{1}; }));                 // reserved byte
  EXPECT_TRUE(bad([](auto& b) { std::memset(b.data() + 8, 0, 8); }));     // data with seq 0
  EXPECT_TRUE(bad([](auto& b) { std::memset(b.data() + 4, 0, 4); }));     // window 0
  EXPECT_TRUE(bad([](auto& b) { b[0] = std::byte{2}; }));                 // ack with seq and a body
  EXPECT_FALSE(decode_pub_header(std::span(buf).first(kPubHeaderSize), d, why) == Errc{});  // empty data
  EXPECT_FALSE(decode_pub_header(std::span(buf).first(10), d, why) == Errc{});              // too short
}

}  // namespace
}  // namespace ferry
