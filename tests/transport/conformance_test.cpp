// SPDX-License-Identifier: Apache-2.0
// The Communicator contract, one suite for every transport (tcp and tls now): ordering, large
// messages, broadcast, many clients, close, put handles, timeouts, limits, back-pressure,
// resumption across dropped connections, killed peers, and bad input from raw sockets.
#include <gtest/gtest.h>

#include <ferry/ferry.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "core/access.hpp"
#include "core/sanitizers.hpp"
#include "framing/frame.hpp"
#include "transport/shm/shm_transport.hpp"
#include "support/mosquitto.hpp"
#include "support/numbered.hpp"
#include "support/spawn.hpp"
#include "support/tcp_proxy.hpp"
#include "support/tls_certs.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;
constexpr auto kWait = 20s;  // every blocking call in these tests has a deadline

constexpr bool kSanitizedAllocator = detail::kSanitized;

Errc errc_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.errc();
  }
  return Errc{};
}

using test::numbered;
using test::number_of;

Message must_get(Communicator& c, std::chrono::nanoseconds timeout = kWait) { return test::must_get(c, timeout); }

/// A raw socket (TCP, or the Unix socket of an shm server) to poke a server with bytes that
/// are not Ferry's.
class RawSocket {
 public:
  explicit RawSocket(std::uint16_t port) : m_fd(::socket(AF_INET, SOCK_STREAM, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connect(reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  explicit RawSocket(const std::string& unix_path) : m_fd(::socket(AF_UNIX, SOCK_STREAM, 0)) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, unix_path.c_str(), sizeof a.sun_path - 1);
    connect(reinterpret_cast<sockaddr*>(&a), sizeof a);
  }
  ~RawSocket() { ::close(m_fd); }
  RawSocket(const RawSocket&) = delete;
  RawSocket& operator=(const RawSocket&) = delete;
  void send(const void* p, std::size_t n) {
    if (::send(m_fd, p, n, MSG_NOSIGNAL) != static_cast<ssize_t>(n)) throw std::runtime_error("send");
  }
  /// Reads until EOF/reset or n bytes or 5 s; returns what came.
  std::string read_until_closed(std::size_t n = 1 << 20) {
    std::string out;
    char buf[4096];
    while (out.size() < n) {
      const ssize_t r = ::recv(m_fd, buf, sizeof buf, 0);
      if (r <= 0) break;
      out.append(buf, static_cast<std::size_t>(r));
    }
    return out;
  }
  /// True when the server closed the connection (EOF or reset) within 5 s.
  bool closed_by_peer() {
    char buf[4096];
    for (;;) {
      const ssize_t r = ::recv(m_fd, buf, sizeof buf, 0);
      if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) return true;
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
    }
  }
  int fd() const { return m_fd; }

 private:
  void connect(const sockaddr* a, socklen_t len) {
    timeval tv{5, 0};
    ::setsockopt(m_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(m_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (::connect(m_fd, a, len) != 0) throw std::runtime_error(std::string("connect: ") + std::strerror(errno));
  }

  int m_fd;
};

// A client's hello as a raw socket sends it (max_message 16 MiB, max_chunk 1 MiB).
std::array<std::byte, framing::kHelloSize> hello_bytes(std::uint16_t version = framing::kProtocolVersion,
                                                       std::uint32_t flags = 0) {
  framing::Hello hello;
  hello.version = version;
  hello.flags = flags;
  hello.id = PeerId::random();
  hello.max_message = 16 << 20;
  hello.max_chunk = 1 << 20;
  std::array<std::byte, framing::kHelloSize> h{};
  framing::encode_hello(hello, h);
  return h;
}

class Conformance : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() { s_certs = std::make_unique<testing::TlsCerts>(); }
  static void TearDownTestSuite() {
    s_broker.reset();
    s_certs.reset();
  }

  bool tls() const { return GetParam() == "tls" || GetParam() == "grpcs" || GetParam() == "mqtts"; }
  bool mqtt() const { return GetParam() == "mqtt" || GetParam() == "mqtts"; }
  /// The suite's Mosquitto, started by the first MQTT test (its TLS listener has certificates
  /// of its own, so mqtts clients of either purpose trust its CA).
  static testing::MosquittoBroker& broker() {
    if (!s_broker) s_broker = std::make_unique<testing::MosquittoBroker>();
    return *s_broker;
  }
  /// The raw test socket speaks Ferry's framing straight over TCP or the rendezvous socket:
  /// not through TLS or gRPC's HTTP/2.
  bool raw_capable() const { return GetParam() == "tcp" || GetParam() == "shm" || GetParam() == "auto"; }
  bool shm() const { return GetParam() == "shm"; }
  /// A server endpoint no other test uses.
  std::string server_endpoint() const {
    static std::atomic<int> counter{0};
    const std::string unique = "conformance-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
    if (shm()) return "shm://" + unique;
    if (GetParam() == "mqtt") return "mqtt://127.0.0.1:" + std::to_string(broker().port()) + "/" + unique;
    if (GetParam() == "mqtts") return "mqtts://127.0.0.1:" + std::to_string(broker().tls_port()) + "/" + unique;
    return GetParam() + "://127.0.0.1:0";
  }

  Options server_options() const {
    Options o;
    o.endpoint = server_endpoint();
    o.shm.huge_pages = false;  // the pool belongs to the hugepage tests (RESOURCE_LOCK hugepage_pool)
    if (GetParam() == "mqtts") {
      o.security.ca = broker().certs()->ca();  // a client of the broker, as the clients are
    } else if (tls()) {
      o.security.certificate = s_certs->server_chain();
      o.security.key = s_certs->server_key();
    }
    return o;
  }
  Options client_options(const Communicator& server) const { return client_options(server.local_endpoint()); }
  Options client_options(const std::string& endpoint) const {
    Options o;
    o.endpoint = endpoint;
    if (GetParam() == "mqtts") {
      o.security.ca = broker().certs()->ca();
    } else if (tls()) {
      o.security.ca = s_certs->ca();
      o.security.server_name = "localhost";
    }
    return o;
  }
  static std::uint16_t port_of(const Communicator& c) {
    return Endpoint::parse(c.local_endpoint()).port;
  }
  /// A raw connection to the server: its TCP port, or its rendezvous socket.
  std::unique_ptr<RawSocket> raw_to(const Communicator& server) const {
    if (shm()) {
      const std::string name = Endpoint::parse(server.local_endpoint()).path;
      return std::make_unique<RawSocket>(detail::shm_link::rendezvous_path(ShmOptions{}, name, false).string());
    }
    return std::make_unique<RawSocket>(port_of(server));
  }
  /// Files in /dev/shm (the shm transport must never leave any), leaving out the segments
  /// that the ring tests running beside this one name themselves ("ferry.test-...", see
  /// support/unique_name.hpp): they come and go while ctest runs tests in parallel.
  /// Ferry's segment files in /dev/shm but the tests' own named rings (other programs' files,
  /// such as a benchmark's iceoryx or message-queue segments, come and go beside these tests).
  static std::size_t dev_shm_files() {
    std::size_t n = 0;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm")) {
      const std::string file = e.path().filename().string();
      if (file.rfind("ferry.", 0) == 0 && file.rfind("ferry.test-", 0) != 0) ++n;
    }
    return n;
  }

  /// The server's endpoint with another port (a proxy in front of the server or its broker).
  static std::string via_port(const Communicator& server, std::uint16_t port) {
    Endpoint e = Endpoint::parse(server.local_endpoint());
    e.port = port;
    return e.to_string();
  }

  static std::unique_ptr<testing::TlsCerts> s_certs;
  static std::unique_ptr<testing::MosquittoBroker> s_broker;
};
std::unique_ptr<testing::TlsCerts> Conformance::s_certs;
std::unique_ptr<testing::MosquittoBroker> Conformance::s_broker;

TEST_P(Conformance, PutGetBothWaysWithPeerIds) {
  auto server = open(Purpose::server, server_options());
  auto client = open(Purpose::client, client_options(server));
  client.put(std::string("ping")).wait_delivered();
  Message m = must_get(server);
  EXPECT_EQ(m.text(), "ping");
  EXPECT_EQ(m.peer, client.id());
  server.put(std::string("pong"), m.peer).wait_delivered();
  Message r = must_get(client);
  EXPECT_EQ(r.text(), "pong");
  EXPECT_EQ(r.peer, server.id());
  // auto:// on one host: the handshake finds the server local and the client uses shm.
  const std::string used = GetParam() == "auto" ? "shm" : GetParam();
  EXPECT_EQ(server.stats().transport_of(client.id()), used);
  EXPECT_EQ(client.stats().transport_of(server.id()), used);
  EXPECT_EQ(client.peers(), std::vector<PeerId>{server.id()});
}

TEST_P(Conformance, TypedMessagesThroughCodecs) {
  struct Point {
    double x, y;
  };
  auto server = open(Purpose::server, server_options());
  auto client = open(Purpose::client, client_options(server));
  client.put(Point{1.5, -2.0}).wait();
  const std::string text = "text";
  client.put(text).wait();
  const std::vector<std::byte> raw(3, std::byte{7});
  client.put(std::span<const std::byte>(raw)).wait();
  client.put(Payload::borrow(raw)).wait_delivered();
  const auto p = must_get(server).as<Point>();
  EXPECT_EQ(p.x, 1.5);
  EXPECT_EQ(p.y, -2.0);
  EXPECT_EQ(must_get(server).as<std::string>(), "text");
  EXPECT_EQ(must_get(server).data.size(), 3u);
  Message borrowed = must_get(server);
  EXPECT_EQ(borrowed.data.size(), 3u);
  EXPECT_EQ(errc_of([&] { (void)borrowed.as<Point>(); }), Errc::protocol_error);
}

TEST_P(Conformance, FifoPerSenderWithManyMessages) {
  auto server = open(Purpose::server, server_options());
  auto client = open(Purpose::client, client_options(server));
  constexpr std::uint64_t kCount = 20000;
  std::thread producer([&] {
    for (std::uint64_t i = 0; i < kCount; ++i) (void)client.put(numbered(i, 16 + i % 3000));
  });
  for (std::uint64_t i = 0; i < kCount; ++i) {
    const Message m = must_get(server);
    ASSERT_EQ(number_of(m), i);
    ASSERT_EQ(m.data.size(), 16 + i % 3000);
  }
  producer.join();
}

TEST_P(Conformance, LargeMessagesAreChunkedAndReassembled) {
  auto server = open(Purpose::server, server_options());
  auto client = open(Purpose::client, client_options(server));
  constexpr std::size_t kSize = std::size_t{256} << 20;
  Bytes big(kSize);
  for (std::size_t i = 0; i < kSize; i += 4096) big.data()[i] = static_cast<std::byte>(i / 4096);
  big.data()[kSize - 1] = std::byte{0x5a};
  auto handle = client.put(std::move(big));
  const Message m = must_get(server, 60s);
  ASSERT_EQ(m.data.size(), kSize);
  for (std::size_t i = 0; i < kSize; i += 4096) ASSERT_EQ(m.data.data()[i], static_cast<std::byte>(i / 4096)) << i;
  EXPECT_EQ(m.data.data()[kSize - 1], std::byte{0x5a});
  ASSERT_TRUE(handle.wait_delivered_for(kWait));
}

TEST_P(Conformance, BroadcastReachesEveryClientAndTracksEach) {
  auto server = open(Purpose::server, server_options());
  std::vector<Communicator> clients;
  for (int i = 0; i < 5; ++i) clients.push_back(open(Purpose::client, client_options(server)));
  auto handle = server.put(std::string("all"));
  ASSERT_TRUE(handle.wait_delivered_for(kWait));
  EXPECT_EQ(handle.peers().size(), 5u);
  EXPECT_TRUE(handle.errors().empty());
  for (auto& c : clients) EXPECT_EQ(must_get(c).text(), "all");
  // Naming peers addresses only them; an unknown peer fails alone.
  const PeerId stranger = PeerId::random();
  auto some = server.put(std::string("two"), clients[0].id(), stranger, clients[1].id());
  EXPECT_EQ(errc_of([&] { (void)some.wait_delivered_for(kWait); }), Errc::not_found);
  EXPECT_TRUE(some.delivered());
  ASSERT_EQ(some.errors().size(), 1u);
  EXPECT_EQ(some.errors()[0].peer, stranger);
  EXPECT_EQ(must_get(clients[0]).text(), "two");
  EXPECT_EQ(must_get(clients[1]).text(), "two");
  EXPECT_FALSE(clients[2].get_for(50ms).has_value());
}

TEST_P(Conformance, HundredClientsEachTalkingToTheServer) {
  auto server = open(Purpose::server, server_options());
  constexpr int kClients = 100;
  std::vector<Communicator> clients;
  clients.reserve(kClients);
  for (int i = 0; i < kClients; ++i) clients.push_back(open(Purpose::client, client_options(server)));
  for (int i = 0; i < kClients; ++i) {
    for (std::uint64_t j = 0; j < 10; ++j) (void)clients[i].put(numbered(j));
  }
  std::map<PeerId, std::uint64_t> next;
  for (int n = 0; n < kClients * 10; ++n) {
    const Message m = must_get(server);
    ASSERT_EQ(number_of(m), next[m.peer]++);  // FIFO per sender
    (void)server.put(std::string("ack"), m.peer);
  }
  EXPECT_EQ(next.size(), static_cast<std::size_t>(kClients));
  for (auto& c : clients) {
    for (int j = 0; j < 10; ++j) EXPECT_EQ(must_get(c).text(), "ack");
  }
}

TEST_P(Conformance, CloseKeepsQueuedMessagesReadableThenErrors) {
  auto server = open(Purpose::server, server_options());
  auto client = open(Purpose::client, client_options(server));
  for (std::uint64_t i = 0; i < 3; ++i) client.put(numbered(i)).wait_delivered();
  server.close();
  server.close();  // idempotent
  EXPECT_TRUE(server.closed());
  for (std::uint64_t i = 0; i < 3; ++i) EXPECT_EQ(number_of(must_get(server)), i);
  EXPECT_EQ(errc_of([&] { (void)server.get(); }), Errc::closed);
  EXPECT_EQ(errc_of([&] { server.put(std::string("late")).wait(); }), Errc::closed);
  // The client learns of the server's close: get() fails with closed, puts fail.
  EXPECT_EQ(errc_of([&] { (void)client.get_for(kWait); }), Errc::closed);
  EXPECT_NE(errc_of([&] { client.put(std::string("x")).wait(); }), Errc{});
}

TEST_P(Conformance, ClientCloseFlushesItsMessagesFirst) {
  auto server = open(Purpose::server, server_options());
  std::optional<Communicator> client = open(Purpose::client, client_options(server));
  std::vector<PutHandle> handles;
  for (std::uint64_t i = 0; i < 1000; ++i) handles.push_back(client->put(numbered(i, 4096)));
  client->close();
  for (auto& h : handles) EXPECT_TRUE(h.delivered());
  for (std::uint64_t i = 0; i < 1000; ++i) ASSERT_EQ(number_of(must_get(server)), i);
  client.reset();
}

TEST_P(Conformance, RoundTripsNeverStall) {
  // Request and reply, one at a time: every read round that delivers a message must wake
  // get(), also when an ack-only round follows it. The client polls before it sleeps
  // (receive_spin), the server sleeps at once: both paths of get().
  auto server = open(Purpose::server, server_options());
  Options co = client_options(server);
  co.receive_spin = std::chrono::microseconds(50);
  auto client = open(Purpose::client, co);
  std::thread echo([&] {
    for (int i = 0; i < 3000; ++i) {
      std::optional<Message> m = server.get_for(5s);
      if (!m) return;
      (void)server.put(std::move(m->data), m->peer);
    }
  });
  for (std::uint64_t i = 0; i < 3000; ++i) {
    (void)client.put(numbered(i));
    std::optional<Message> reply = client.get_for(5s);
    ASSERT_TRUE(reply.has_value()) << "round trip " << i << " stalled";
    ASSERT_EQ(number_of(*reply), i);
  }
  echo.join();
}

TEST_P(Conformance, PutsRacingCloseAllComplete) {
  // A thread puts while another closes: every handle completes (delivered or failed), none
  // is left waiting on a write nobody answers.
  // The server never reads: close() gives up on the flush after close_timeout.
  for (int round = 0; round < 3; ++round) {
    auto server = open(Purpose::server, server_options());
    Options co = client_options(server);
    co.connection.close_timeout = std::chrono::milliseconds(100);
    std::optional<Communicator> client = open(Purpose::client, co);
    std::vector<std::byte> big(64 << 10, std::byte{1});
    std::vector<PutHandle> handles;
    std::atomic<bool> stop{false};
    std::thread putter([&] {
      // relaxed: a stop flag; the handles are read after join.
      while (!stop.load(std::memory_order_relaxed) && handles.size() < 4000) {
        handles.push_back(client->put(Payload::borrow(big)));
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(2 + round));
    client->close();
    stop.store(true, std::memory_order_relaxed);  // relaxed: as above
    putter.join();
    for (std::size_t i = 0; i < handles.size(); ++i) {
      bool completed = true;  // delivered, or failed (closed): either way it completed
      try {
        completed = handles[i].wait_delivered_for(kWait);
      } catch (const Error&) {
      }
      ASSERT_TRUE(completed) << "round " << round << ": put " << i << " never completed";
    }
    client.reset();
  }
}

TEST_P(Conformance, MessageTakenJustBeforeCloseIsDelivered) {
  // What a server get()s is acknowledged by its close, however soon the close follows: the
  // client's put never fails with closed for a message the server has.
  for (int round = 0; round < 20; ++round) {
    std::optional<Communicator> server = open(Purpose::server, server_options());
    auto client = open(Purpose::client, client_options(*server));
    PutHandle h = client.put(numbered(static_cast<std::uint64_t>(round)));
    // Polling takes the message the moment it is queued, before the reader's round is over.
    std::optional<Message> m;
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (!(m = server->try_get()) && std::chrono::steady_clock::now() < deadline) {
    }
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(number_of(*m), static_cast<std::uint64_t>(round));
    server->close();
    ASSERT_TRUE(h.wait_delivered_for(kWait));
    ASSERT_TRUE(h.errors().empty()) << "round " << round << ": " << h.errors()[0].error.message();
  }
}

TEST_P(Conformance, SentAndDeliveredAreDistinct) {
  Options so = server_options();
  so.connection.receive_queue_messages = 1;  // the server stops reading after one message
  auto server = open(Purpose::server, so);
  auto client = open(Purpose::client, client_options(server));
  std::vector<PutHandle> handles;
  for (std::uint64_t i = 0; i < 20; ++i) handles.push_back(client.put(numbered(i)));
  for (auto& h : handles) ASSERT_TRUE(h.wait_for(kWait));  // written to the connection
  EXPECT_TRUE(handles[0].wait_delivered_for(kWait));
  EXPECT_FALSE(handles[19].wait_delivered_for(200ms));  // not read by the server yet
  for (std::uint64_t i = 0; i < 20; ++i) ASSERT_EQ(number_of(must_get(server)), i);
  for (auto& h : handles) EXPECT_TRUE(h.wait_delivered_for(kWait));
}

TEST_P(Conformance, TimeoutsReturnInsteadOfBlocking) {
  auto server = open(Purpose::server, server_options());
  auto client = open(Purpose::client, client_options(server));
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(server.get_for(100ms).has_value());
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 100ms);
  EXPECT_FALSE(server.try_get().has_value());
  client.put(std::string("x")).wait_delivered();
  EXPECT_TRUE(server.try_get().has_value());
}

TEST_P(Conformance, OversizeMessageIsRefusedNotSplit) {
  Options so = server_options();
  so.connection.message_size = 1 << 20;
  auto server = open(Purpose::server, so);
  auto client = open(Purpose::client, client_options(server));
  auto big = client.put(Bytes((1 << 20) + 1));
  EXPECT_EQ(errc_of([&] { big.wait(); }), Errc::message_too_large);
  client.put(Bytes(1 << 20)).wait_delivered();  // at the limit: fine, and the session goes on
  EXPECT_EQ(must_get(server).data.size(), std::size_t{1} << 20);
  EXPECT_FALSE(server.get_for(50ms).has_value());
}

TEST_P(Conformance, FullSendQueueFailsThePutInsteadOfGrowing) {
  auto server = open(Purpose::server, server_options());
  Options co = client_options(server);
  co.connection.send_queue_messages = 8;
  auto client = open(Purpose::client, co);
  std::vector<PutHandle> handles;
  for (int i = 0; i < 10000; ++i) handles.push_back(client.put(numbered(i)));
  std::size_t refused = 0;
  for (auto& h : handles) {
    const Errc e = errc_of([&] { ASSERT_TRUE(h.wait_delivered_for(kWait)); });
    if (e != Errc{}) {
      EXPECT_EQ(h.errors()[0].error, make_error_code(Errc::would_block));
      ++refused;
    }
  }
  EXPECT_GT(refused, 0u);
  std::size_t got = 0;
  while (server.get_for(200ms)) ++got;
  EXPECT_EQ(got + refused, handles.size());  // nothing lost silently
}

TEST_P(Conformance, SlowPeerDoesNotHoldBackAnother) {
  Options so = server_options();
  so.connection.receive_queue_messages = 16;
  auto server = open(Purpose::server, so);
  auto flood = open(Purpose::client, client_options(server));
  auto other = open(Purpose::client, client_options(server));
  std::vector<PutHandle> pending;
  for (int i = 0; i < 2000; ++i) pending.push_back(flood.put(numbered(i, 1024)));
  std::this_thread::sleep_for(100ms);
  // The flood filled its share of the receive queue; the other client still gets through.
  other.put(std::string("me too")).wait_delivered();
  bool seen = false;
  int flooded = 0;
  while (auto m = server.get_for(kWait)) {
    if (m->peer == other.id()) {
      seen = true;
      break;
    }
    ++flooded;
  }
  EXPECT_TRUE(seen);
  EXPECT_LE(flooded, 16);
  // Back-pressure, not loss: the rest of the flood arrives once the server reads again.
  for (int i = flooded; i < 2000; ++i) ASSERT_EQ(number_of(must_get(server)), static_cast<std::uint64_t>(i));
  for (auto& h : pending) ASSERT_TRUE(h.wait_delivered_for(kWait));
}

TEST_P(Conformance, SecondLiveConnectionWithTheSameIdIsRefused) {
  auto server = open(Purpose::server, server_options());
  Options co = client_options(server);
  auto first = open(Purpose::client, co);
  try {
    auto second = open(Purpose::client, co);
    FAIL() << "a second connection with the same id was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::address_in_use);
    EXPECT_NE(std::string(e.what()).find("already has a live connection"), std::string::npos) << e.what();
  }
  first.put(std::string("still fine")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "still fine");
}

TEST_P(Conformance, CallbacksReportConnectAndDisconnect) {
  std::mutex mu;
  std::vector<PeerId> connected;
  std::vector<std::error_code> disconnected;
  Options so = server_options();
  so.on_connect = [&](const PeerId& p) {
    const std::lock_guard lock(mu);
    connected.push_back(p);
  };
  so.on_disconnect = [&](const PeerId&, std::error_code ec) {
    const std::lock_guard lock(mu);
    disconnected.push_back(ec);
  };
  auto server = open(Purpose::server, so);
  PeerId id;
  {
    auto client = open(Purpose::client, client_options(server));
    id = client.id();
    client.close();
  }
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  for (;;) {
    {
      const std::lock_guard lock(mu);
      if (!disconnected.empty()) break;
    }
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(5ms);
  }
  const std::lock_guard lock(mu);
  EXPECT_EQ(connected, std::vector<PeerId>{id});
  EXPECT_EQ(disconnected[0], make_error_code(Errc::closed));
}

TEST_P(Conformance, ResumesAcrossCutConnectionsWithoutLossOrDuplicates) {
  auto server = open(Purpose::server, server_options());
  // TCP: a proxy in between cuts the connections (MQTT: the client's connection to the
  // broker). Shared memory (shm, and auto on one host) has no wire to cut: the server's links
  // are broken from inside (both sides see the socket drop).
  const bool wire = GetParam() == "tcp" || GetParam() == "tls" || GetParam() == "grpc" || GetParam() == "grpcs" || mqtt();
  std::optional<testing::TcpProxy> proxy;
  if (wire) proxy.emplace("127.0.0.1", port_of(server));
  auto client = open(Purpose::client, client_options(!wire ? server.local_endpoint() : via_port(server, proxy->port())));
  constexpr std::uint64_t kCount = 30000;
  std::atomic<bool> done{false};
  std::thread cutter([&] {
    for (int i = 0; i < 8 && !done.load(std::memory_order_relaxed); ++i) {
      std::this_thread::sleep_for(30ms);
      if (proxy) {
        proxy->cut_all();
      } else {
        detail::cut_links_for_testing(server);
      }
    }
  });
  std::thread producer([&] {
    for (std::uint64_t i = 0; i < kCount; ++i) (void)client.put(numbered(i, 512));
  });
  std::thread echo_check([&] {
    // The server also streams to the client through the cuts.
    for (std::uint64_t i = 0; i < kCount / 10; ++i) (void)server.put(numbered(i), client.id());
  });
  for (std::uint64_t i = 0; i < kCount; ++i) {
    const Message m = must_get(server, 30s);
    ASSERT_EQ(number_of(m), i) << "lost or duplicated around message " << i;
  }
  for (std::uint64_t i = 0; i < kCount / 10; ++i) ASSERT_EQ(number_of(must_get(client, 30s)), i);
  done = true;
  producer.join();
  echo_check.join();
  cutter.join();
  EXPECT_FALSE(server.get_for(100ms).has_value());
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_GT(s.peers[0].connects, 1u) << "the proxy never cut the connection";
}

TEST_P(Conformance, KilledClientIsSeenPromptlyAndItsSessionReleased) {
  std::atomic<int> disconnects{0};
  std::atomic<std::int64_t> seen_at{0};
  Options so = server_options();
  so.connection.resume_timeout = 300ms;
  so.on_disconnect = [&](const PeerId&, std::error_code) {
    seen_at = std::chrono::steady_clock::now().time_since_epoch().count();
    ++disconnects;
  };
  if (tls()) GTEST_SKIP() << "the helper client speaks plain tcp";
  const std::size_t shm_files = dev_shm_files();
  auto server = open(Purpose::server, so);
  const std::string peer = (std::filesystem::path(test::peer_path()).parent_path() / "ferry_comm_peer").string();
  test::Child child({peer, "client", server.local_endpoint()}, -1, true);
  ASSERT_EQ(child.read_line(), "connected");
  ASSERT_TRUE(server.get_for(kWait).has_value());
  const auto killed = std::chrono::steady_clock::now();
  child.kill(SIGKILL);
  child.wait(5s);
  while (disconnects.load() == 0) {
    ASSERT_LT(std::chrono::steady_clock::now() - killed, 5s) << "kill not noticed";
    std::this_thread::sleep_for(1ms);
    while (server.try_get()) {
    }
  }
  const auto noticed = std::chrono::nanoseconds(seen_at.load()) - killed.time_since_epoch();
  std::printf("killed client noticed after %.1f ms\n", std::chrono::duration<double, std::milli>(noticed).count());
  EXPECT_LT(noticed, shm() ? std::chrono::nanoseconds(100ms) : std::chrono::nanoseconds(so.connection.keepalive_timeout));
  // After the resume timeout the session is gone and puts to that peer fail.
  std::this_thread::sleep_for(600ms);
  EXPECT_TRUE(server.stats().peers.empty());
  EXPECT_EQ(dev_shm_files(), shm_files) << "a killed shm client left files in /dev/shm";
}

TEST_P(Conformance, KilledServerFailsTheClientPromptly) {
  if (tls()) GTEST_SKIP() << "the helper server speaks plain tcp";
  const std::string peer = (std::filesystem::path(test::peer_path()).parent_path() / "ferry_comm_peer").string();
  const std::size_t shm_files = dev_shm_files();
  test::Child child({peer, "server", server_endpoint()}, -1, true);
  const std::string line = child.read_line();
  ASSERT_EQ(line.rfind("listening ", 0), 0u) << line;
  Options co = client_options(line.substr(10));
  co.connection.resume_timeout = 200ms;
  auto client = open(Purpose::client, co);
  client.put(std::string("echo me")).wait_delivered();
  EXPECT_EQ(must_get(client).text(), "echo me");
  const auto killed = std::chrono::steady_clock::now();
  child.kill(SIGKILL);
  child.wait(5s);
  EXPECT_EQ(errc_of([&] { (void)client.get_for(kWait); }), Errc::peer_lost);
  const auto took = std::chrono::steady_clock::now() - killed;
  std::printf("killed server: client get() failed after %.1f ms\n", std::chrono::duration<double, std::milli>(took).count());
  EXPECT_LT(took, shm() ? std::chrono::nanoseconds(100ms) : std::chrono::nanoseconds(co.connection.keepalive_timeout));
  EXPECT_EQ(errc_of([&] { client.put(std::string("x")).wait(); }), Errc::peer_lost);
  EXPECT_EQ(dev_shm_files(), shm_files) << "a killed shm server left files in /dev/shm";
  // Its rendezvous socket stays (the next server of that name replaces it): remove it here.
  const Endpoint killed_at = Endpoint::parse(line.substr(10));
  if (killed_at.scheme == Scheme::shm || killed_at.scheme == Scheme::automatic) {
    const std::string name = killed_at.scheme == Scheme::shm ? killed_at.path
                                                            : "auto-" + killed_at.host + "-" + std::to_string(killed_at.port);
    std::error_code ec;
    std::filesystem::remove(detail::shm_link::rendezvous_path(ShmOptions{}, name, false), ec);
  }
}

TEST_P(Conformance, KeepAliveTimeoutDetectsASilentPeer) {
  if (!raw_capable()) GTEST_SKIP() << "the raw socket speaks Ferry's framing over plain tcp or shm, not " << GetParam();
  Options so = server_options();
  so.connection.keepalive_interval = 50ms;
  so.connection.keepalive_timeout = 300ms;
  std::atomic<int> lost{0};
  so.on_disconnect = [&](const PeerId&, std::error_code ec) {
    if (ec == make_error_code(Errc::peer_lost)) ++lost;
  };
  auto server = open(Purpose::server, so);
  const auto raw_socket = raw_to(server);
  RawSocket& raw = *raw_socket;
  const auto h = hello_bytes();
  raw.send(h.data(), h.size());  // handshakes, then never sends another byte
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_TRUE(raw.closed_by_peer());
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, 250ms);
  EXPECT_LT(took, 3s);
  while (lost.load() == 0 && std::chrono::steady_clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(lost.load(), 1);
}

// --- bad input: each a clear error for that connection while the server keeps serving ---

class BadInput : public Conformance {};

TEST_P(BadInput, EachIsDroppedWhileOtherClientsAreServed) {
  Options so = server_options();
  so.connection.message_size = 16 << 20;
  so.connection.handshake_timeout = 500ms;
  auto server = open(Purpose::server, so);
  auto good = open(Purpose::client, client_options(server));
  const auto still_serving = [&] {
    good.put(std::string("ok")).wait_delivered();
    EXPECT_EQ(must_get(server).text(), "ok");
  };
  const std::uint16_t port = port_of(server);
  {  // garbage instead of a hello
    RawSocket raw(port);
    const std::string junk(100, 'x');
    raw.send(junk.data(), junk.size());
    EXPECT_TRUE(raw.closed_by_peer());
  }
  still_serving();
  {  // a future protocol version: refused with a hello saying version_mismatch
    RawSocket raw(port);
    const auto h = hello_bytes(7);
    raw.send(h.data(), h.size());
    const std::string reply = raw.read_until_closed();
    ASSERT_EQ(reply.size(), framing::kHelloSize);
    EXPECT_EQ(static_cast<std::uint8_t>(reply[60]), static_cast<std::uint8_t>(Errc::version_mismatch));
  }
  still_serving();
  {  // version 1 (64 bytes, no checksum): refused the same way
    RawSocket raw(port);
    auto h = hello_bytes();
    h[8] = std::byte{1};
    h[10] = std::byte{64};
    raw.send(h.data(), 64);
    const std::string reply = raw.read_until_closed();
    ASSERT_EQ(reply.size(), framing::kHelloSize);
    EXPECT_EQ(static_cast<std::uint8_t>(reply[8]), framing::kProtocolVersion);
    EXPECT_EQ(static_cast<std::uint8_t>(reply[60]), static_cast<std::uint8_t>(Errc::version_mismatch));
  }
  still_serving();
  {  // a hello damaged on the way (a bit of its id): closed at once, no reply, no session
    RawSocket raw(port);
    auto h = hello_bytes();
    h[20] ^= std::byte{0x04};
    raw.send(h.data(), h.size());
    EXPECT_EQ(raw.read_until_closed(), "");
    EXPECT_EQ(server.peers().size(), 1u);  // the good client only
  }
  still_serving();
  {  // a truncated hello, then silence: dropped at the handshake timeout
    RawSocket raw(port);
    const auto h = hello_bytes();
    raw.send(h.data(), 20);
    EXPECT_TRUE(raw.closed_by_peer());
  }
  still_serving();
  const auto after_hello = [&](const std::vector<std::uint8_t>& frame) {
    RawSocket raw(port);
    const auto h = hello_bytes();
    raw.send(h.data(), h.size());
    if (!frame.empty()) raw.send(frame.data(), frame.size());
    std::string got = raw.read_until_closed();
    return got.size() >= framing::kHelloSize;  // our hello reply came; read_until_closed returned: closed
  };
  const auto header = [](std::uint8_t type, std::uint32_t len, std::uint64_t a, std::uint64_t b, std::uint64_t c) {
    std::vector<std::uint8_t> f(32, 0);
    f[0] = type;
    std::memcpy(f.data() + 4, &len, 4);
    std::memcpy(f.data() + 8, &a, 8);
    std::memcpy(f.data() + 16, &b, 8);
    std::memcpy(f.data() + 24, &c, 8);
    return f;
  };
  EXPECT_TRUE(after_hello(header(1, 100, 1, 0, std::uint64_t{1} << 40)));  // oversize total
  still_serving();
  EXPECT_TRUE(after_hello(header(1, 0xffffffff, 1, 0, 0xffffffff)));  // oversize chunk
  still_serving();
  EXPECT_TRUE(after_hello(header(1, 10, 5, 0, 10)));  // wrong message id
  still_serving();
  EXPECT_TRUE(after_hello(header(2, 0, 99, 0, 0)));  // ack of a message never sent
  still_serving();
  EXPECT_TRUE(after_hello(header(77, 0, 0, 0, 0)));  // unknown frame type
  still_serving();
  {  // truncated frame: half a header, then the client goes away
    RawSocket raw(port);
    const auto h = hello_bytes();
    raw.send(h.data(), h.size());
    const auto f = header(1, 10, 1, 0, 10);
    raw.send(f.data(), 16);
  }
  still_serving();
}

TEST_P(BadInput, AHelloReplyDamagedOnTheWayIsRetriedNotFatal) {
  // The first connection's reply has a bit flipped on the way (the proxy flips one in every
  // piece until it has flipped one): its checksum fails, the client connects again and open()
  // succeeds; without the hello's checksum it would have believed the altered reply.
  auto server = open(Purpose::server, server_options());
  testing::TcpProxy proxy("127.0.0.1", port_of(server));
  proxy.set_corrupt_probability(testing::Direction::server_to_client, 1.0);
  std::atomic<bool> done{false};
  std::thread clear([&] {  // before the retry (10 ms later)
    while (!done.load() && proxy.chunks_corrupted(testing::Direction::server_to_client) == 0) std::this_thread::sleep_for(100us);
    proxy.clear_faults();
  });
  std::optional<Communicator> client;
  EXPECT_NO_THROW(client.emplace(open(Purpose::client, client_options(via_port(server, proxy.port())))));
  done = true;
  clear.join();
  ASSERT_TRUE(client.has_value());
  EXPECT_EQ(proxy.chunks_corrupted(testing::Direction::server_to_client), 1u);
  EXPECT_GE(proxy.connections_accepted(), 2u);
  client->put(std::string("after a damaged handshake")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "after a damaged handshake");
  EXPECT_EQ(server.peers().size(), 1u);
}

TEST_P(BadInput, WithChecksumsDamageResumesButAPeerSendingOnlyDamageIsRefused) {
  // A client that agreed checksums and sends only garbage: each connection is lost (resumable,
  // as damage on the way would be) until the ninth in a row without a message ends the session.
  std::mutex mu;
  std::vector<std::error_code> reasons;
  Options so = server_options();
  so.on_disconnect = [&](const PeerId&, std::error_code ec) {
    const std::lock_guard lock(mu);
    reasons.push_back(ec);
  };
  auto server = open(Purpose::server, so);
  const auto h = hello_bytes(framing::kProtocolVersion, framing::kHelloResume | framing::kHelloChecksums);  // one id
  for (std::size_t i = 0; i < 9; ++i) {
    RawSocket raw(port_of(server));
    raw.send(h.data(), h.size());
    const std::string reply = raw.read_until_closed(framing::kHelloSize);
    ASSERT_EQ(reply.size(), framing::kHelloSize);
    EXPECT_EQ(static_cast<std::uint8_t>(reply[60]), 0) << "connection " << i << " refused";
    EXPECT_NE(static_cast<std::uint8_t>(reply[12]) & framing::kHelloChecksums, 0u) << "checksums not agreed";
    const std::string junk(40, 'x');
    raw.send(junk.data(), junk.size());
    EXPECT_TRUE(raw.closed_by_peer());
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    for (;;) {
      {
        const std::lock_guard lock(mu);
        if (reasons.size() > i) break;
      }
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "connection " << i << " not dropped";
      std::this_thread::sleep_for(1ms);
    }
  }
  const std::lock_guard lock(mu);
  for (std::size_t i = 0; i < 8; ++i) EXPECT_EQ(reasons[i], make_error_code(Errc::peer_lost)) << i;
  EXPECT_EQ(reasons[8], make_error_code(Errc::protocol_error));
}

TEST_P(BadInput, AnnouncedSizeBeyondMemoryIsRefusedNotFatal) {
  if (kSanitizedAllocator) {
    GTEST_SKIP() << "the sanitizer's allocator aborts on an impossible size instead of throwing bad_alloc";
  }
  Options so = server_options();
  so.connection.message_size = std::size_t{1} << 40;  // the largest limit open() allows
  auto server = open(Purpose::server, so);
  auto good = open(Purpose::client, client_options(server));
  {
    RawSocket raw(port_of(server));
    const auto h = hello_bytes();
    raw.send(h.data(), h.size());
    std::vector<std::uint8_t> f(32, 0);
    f[0] = 1;
    const std::uint32_t len = 1;
    const std::uint64_t id = 1, total = std::uint64_t{1} << 40;  // 1 TiB on a 24 GiB machine
    std::memcpy(f.data() + 4, &len, 4);
    std::memcpy(f.data() + 8, &id, 8);
    std::memcpy(f.data() + 24, &total, 8);
    raw.send(f.data(), f.size());
    EXPECT_GE(raw.read_until_closed().size(), framing::kHelloSize);  // the hello reply, then the connection ends
  }
  good.put(std::string("still here")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "still here");
}

TEST_P(BadInput, ClientThatNeverReadsKeepsServerMemoryBounded) {
  if (!raw_capable()) GTEST_SKIP() << "the raw socket speaks Ferry's framing over plain tcp or shm, not " << GetParam();
  Options so = server_options();
  so.connection.send_queue_bytes = 8 << 20;
  auto server = open(Purpose::server, so);
  RawSocket raw(port_of(server));
  const int small = 4096;
  ::setsockopt(raw.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  const auto h = hello_bytes();
  raw.send(h.data(), h.size());
  ASSERT_EQ(raw.read_until_closed(framing::kHelloSize).size(), framing::kHelloSize);
  std::vector<PeerId> peers;
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while ((peers = server.peers()).empty()) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline);
    std::this_thread::sleep_for(1ms);
  }
  std::size_t refused = 0;
  for (int i = 0; i < 2000; ++i) {
    auto handle = server.put(Bytes(64 << 10), peers[0]);
    if (!handle.errors().empty()) {
      EXPECT_EQ(handle.errors()[0].error, make_error_code(Errc::would_block));
      ++refused;
    }
  }
  EXPECT_GT(refused, 1000u);
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_LE(s.peers[0].bytes_queued, std::uint64_t{8} << 20);
}

// --- TLS ---

class Tls : public Conformance {};

TEST_P(Tls, RefusesPlaintextWrongCaAndWrongHostAndSupportsMutualTls) {
  auto server = open(Purpose::server, server_options());
  const std::uint16_t port = port_of(server);
  const std::string url = "tls://127.0.0.1:" + std::to_string(port);
  Options plain;
  plain.endpoint = "tcp://127.0.0.1:" + std::to_string(port);
  plain.connection.connect_timeout = 2s;
  plain.connection.handshake_timeout = 1s;
  EXPECT_NE(errc_of([&] { (void)open(Purpose::client, plain); }), Errc{});

  Options wrong_ca = client_options(url);
  wrong_ca.security.ca = s_certs->wrong_ca();
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::client, wrong_ca); }), Errc::permission_denied);

  Options wrong_name = client_options(url);
  wrong_name.security.server_name = "example.invalid";
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::client, wrong_name); }), Errc::permission_denied);

  Options fine = client_options(url);
  auto client = open(Purpose::client, fine);
  client.put(std::string("secret")).wait_delivered();
  EXPECT_EQ(must_get(server).text(), "secret");

  // Mutual TLS: a client certificate is required, and one signed by the CA is accepted.
  Options mo = server_options();
  mo.security.ca = s_certs->ca();
  mo.security.require_client_certificate = true;
  auto mserver = open(Purpose::server, mo);
  Options anonymous = client_options(mserver);
  anonymous.connection.connect_timeout = 2s;
  EXPECT_NE(errc_of([&] { (void)open(Purpose::client, anonymous); }), Errc{});
  Options with_cert = client_options(mserver);
  with_cert.security.certificate = s_certs->client_cert();
  with_cert.security.key = s_certs->client_key();
  auto mclient = open(Purpose::client, with_cert);
  mclient.put(std::string("mutual")).wait_delivered();
  EXPECT_EQ(must_get(mserver).text(), "mutual");
}

TEST_P(Tls, ServerWithWrongHostCertificateIsRefused) {
  Options so = server_options();
  so.security.certificate = s_certs->wrong_host_chain();
  so.security.key = s_certs->wrong_host_key();
  auto server = open(Purpose::server, so);
  Options co = client_options(server);
  EXPECT_EQ(errc_of([&] { (void)open(Purpose::client, co); }), Errc::permission_denied);
}

TEST_P(Conformance, WithChecksumsEveryMessageArrivesBothWays) {
  // The client asks (ConnectionOptions::checksums); the server follows; shm ignores it.
  auto server = open(Purpose::server, server_options());
  Options co = client_options(server);
  co.connection.checksums = true;
  auto client = open(Purpose::client, co);
  constexpr std::uint64_t kCount = 500;
  for (std::uint64_t i = 0; i < kCount; ++i) (void)client.put(numbered(i, 1 + (i * 97) % 5000));
  (void)client.put(numbered(kCount, 3 << 20));  // chunked: a trailer per chunk
  for (std::uint64_t i = 0; i <= kCount; ++i) ASSERT_EQ(number_of(must_get(server)), i);
  for (std::uint64_t i = 0; i < kCount; ++i) (void)server.put(numbered(i, 100), client.id());
  for (std::uint64_t i = 0; i < kCount; ++i) ASSERT_EQ(number_of(must_get(client)), i);
  // Both sides agreed on them (or, over shm, neither uses them).
  const bool wire = !shm() && GetParam() != "auto";  // auto on one host runs over shm
  ASSERT_EQ(client.stats().peers.size(), 1u);
  ASSERT_EQ(server.stats().peers.size(), 1u);
  EXPECT_EQ(client.stats().peers[0].checksums, wire);
  EXPECT_EQ(server.stats().peers[0].checksums, wire);
  client.close();
}

// ---------------------------------------------------------------------------------------------
// Fault injection: peers SIGKILLed at random points, FERRY_CHAOS_ITERATIONS (100) times per
// transport, alternating which side dies.

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

int chaos_iterations() {
  const char* v = std::getenv("FERRY_CHAOS_ITERATIONS");
  return v != nullptr ? std::max(1, std::atoi(v)) : 100;
}

TEST_P(Conformance, SurvivesPeersKilledAtRandomPoints) {
  if (GetParam() != "tcp" && GetParam() != "shm" && GetParam() != "grpc" && GetParam() != "mqtt")
    GTEST_SKIP() << "killing runs cover shm, tcp, grpc and mqtt; " << GetParam() << " shares their code";
  const std::string peer = (std::filesystem::path(test::peer_path()).parent_path() / "ferry_comm_peer").string();
  const int iterations = chaos_iterations();
  const unsigned seed = std::random_device{}();
  std::printf("seed %u (FERRY_CHAOS_ITERATIONS=%d)\n", seed, iterations);
  std::mt19937 rng(seed);
  const std::size_t shm_files = dev_shm_files();
  const auto bound = shm() ? std::chrono::nanoseconds(100ms) : std::chrono::nanoseconds(Options{}.connection.keepalive_timeout);
  std::optional<std::size_t> fds_before;
  std::chrono::nanoseconds worst_server_death{0}, worst_client_death{0};
  std::uint64_t echoes = 0, received = 0;
  for (int it = 0; it < iterations; ++it) {
    SCOPED_TRACE("iteration " + std::to_string(it) + ", seed " + std::to_string(seed));
    const auto run_for = std::chrono::microseconds(std::uniform_int_distribution<int>(0, 20'000)(rng));
    if (it % 2 == 0) {
      // The server dies while the client streams numbered messages and reads their echoes.
      test::Child child({peer, "server", server_endpoint()}, -1, true);
      const std::string line = child.read_line();
      ASSERT_EQ(line.rfind("listening ", 0), 0u) << line;
      Options co = client_options(line.substr(10));
      co.connection.resume_timeout = 200ms;
      auto client = open(Purpose::client, co);
      std::uint64_t sent = 0, next_echo = 0;
      const auto until = std::chrono::steady_clock::now() + run_for;
      do {
        (void)client.put(numbered(sent++, 256));
        while (auto m = client.try_get()) {
          ASSERT_EQ(number_of(*m), next_echo++) << "an echo lost or repeated";
        }
      } while (std::chrono::steady_clock::now() < until);
      const auto killed = std::chrono::steady_clock::now();
      child.kill(SIGKILL);
      // The echoes that arrived come first, in order; then the loss of the server.
      Errc e{};
      try {
        for (;;) {
          auto m = client.get_for(kWait);
          ASSERT_TRUE(m.has_value()) << "the killed server was not noticed within " << kWait.count() << " s";
          ASSERT_EQ(number_of(*m), next_echo++) << "an echo lost or repeated";
        }
      } catch (const Error& err) {
        e = err.errc();
      }
      const auto took = std::chrono::steady_clock::now() - killed;
      EXPECT_EQ(e, Errc::peer_lost);
      EXPECT_LT(took, bound);
      worst_server_death = std::max<std::chrono::nanoseconds>(worst_server_death, took);
      EXPECT_EQ(errc_of([&] { client.put(std::string("x")).wait(); }), Errc::peer_lost);
      EXPECT_NE(child.wait(5s), -1);
      echoes += next_echo;
      const Endpoint at = Endpoint::parse(line.substr(10));
      if (at.scheme == Scheme::shm) {
        std::error_code ec;
        std::filesystem::remove(detail::shm_link::rendezvous_path(ShmOptions{}, at.path, false), ec);
      }
    } else {
      // The client dies while it streams to the server.
      std::atomic<int> disconnects{0};
      Options so = server_options();
      so.connection.resume_timeout = 50ms;
      so.on_disconnect = [&](const PeerId&, std::error_code) { ++disconnects; };
      auto server = open(Purpose::server, so);
      test::Child child({peer, "client", server.local_endpoint()}, -1, true);
      ASSERT_EQ(child.read_line(), "connected");
      std::uint64_t next = 0;
      const auto until = std::chrono::steady_clock::now() + run_for;
      do {
        if (auto m = server.get_for(1ms)) {
          ASSERT_EQ(number_of(*m), next++) << "a message lost or repeated";
        }
      } while (std::chrono::steady_clock::now() < until);
      const auto killed = std::chrono::steady_clock::now();
      child.kill(SIGKILL);
      while (disconnects.load() == 0) {
        ASSERT_LT(std::chrono::steady_clock::now() - killed, kWait) << "the killed client was not noticed";
        while (auto m = server.try_get()) {
          ASSERT_EQ(number_of(*m), next++) << "a message lost or repeated";
        }
        std::this_thread::sleep_for(200us);
      }
      const auto took = std::chrono::steady_clock::now() - killed;
      EXPECT_LT(took, bound);
      worst_client_death = std::max<std::chrono::nanoseconds>(worst_client_death, took);
      // Its session ends after the resume timeout.
      const auto released = std::chrono::steady_clock::now() + kWait;
      while (!server.stats().peers.empty()) {
        ASSERT_LT(std::chrono::steady_clock::now(), released) << "the killed client's session stayed";
        std::this_thread::sleep_for(5ms);
      }
      EXPECT_NE(child.wait(5s), -1);
      received += next;
    }
    if (HasFatalFailure()) return;
    // After the first round: what the transport keeps for the process (a library's threads and
    // their descriptors) is there; later rounds must add nothing.
    if (it == 1) fds_before = open_fds();
  }
  // Nothing left behind: descriptors (the transport's threads close theirs), /dev/shm files.
  const auto settle = std::chrono::steady_clock::now() + 5s;
  while (fds_before && open_fds() > *fds_before && std::chrono::steady_clock::now() < settle)
    std::this_thread::sleep_for(10ms);
  if (fds_before) {
    EXPECT_LE(open_fds(), *fds_before) << "descriptors leaked over " << iterations << " kills";
  }
  EXPECT_EQ(dev_shm_files(), shm_files);
  std::printf("%d kills (half servers, half clients): %llu echoes and %llu messages checked in order; "
              "slowest to notice a killed server %.1f ms, a killed client %.1f ms\n",
              iterations, static_cast<unsigned long long>(echoes), static_cast<unsigned long long>(received),
              std::chrono::duration<double, std::milli>(worst_server_death).count(),
              std::chrono::duration<double, std::milli>(worst_client_death).count());
}

// Message i of a fault run: its number, then bytes that depend on it and on their position,
// in a size that varies with i, so a receiver tells a lost, repeated, reordered, cut or
// corrupted message from the right one.
Bytes patterned(std::uint64_t i) {
  const std::size_t size = 8 + (i * 2654435761u) % 3000;
  Bytes b(size);
  std::memcpy(b.data(), &i, sizeof i);
  for (std::size_t j = sizeof i; j < size; ++j) b.data()[j] = static_cast<std::byte>((i * 31 + j * 7) & 0xff);
  return b;
}
bool intact(const Message& m, std::uint64_t i) {
  const Bytes want = patterned(i);
  return m.data.size() == want.size() && std::memcmp(m.data.data(), want.data(), want.size()) == 0;
}

TEST_P(Conformance, ThroughDelaysSplitsDropsAndCorruptionNothingIsLostRepeatedOrAltered) {
  if (GetParam() != "tcp" && GetParam() != "grpc" && GetParam() != "mqtt")
    GTEST_SKIP() << "a proxy between the peers: tcp, grpc and mqtt (TLS would refuse the first altered byte; shm has no wire)";
  // Keep-alives every 10 ms: a byte lost inside a payload leaves the reader waiting for the
  // rest of its chunk, and the next bytes (a keep-alive's, if nothing else) complete it sooner.
  Options so = server_options();
  so.connection.keepalive_interval = 10ms;
  so.connection.keepalive_timeout = 2s;
  so.connection.resume_timeout = 60s;  // a session outlives a run of damaged connections
  std::mutex lost_mutex;
  std::vector<std::error_code> server_lost;  // why the server saw the client's connections end
  so.on_disconnect = [&](const PeerId&, std::error_code ec) {
    const std::lock_guard lock(lost_mutex);
    server_lost.push_back(ec);
  };
  auto server = open(Purpose::server, so);
  // TCP and gRPC: between client and server; MQTT: between the client and the broker.
  testing::TcpProxy proxy("127.0.0.1", port_of(server));
  const unsigned seed = std::random_device{}();
  proxy.set_seed(seed);
  std::printf("proxy seed %u\n", seed);
  Options co = client_options(via_port(server, proxy.port()));
  co.connection.checksums = true;  // the point: bytes altered on the way never reach get()
  co.connection.keepalive_interval = 10ms;
  co.connection.keepalive_timeout = 2s;
  co.connection.resume_timeout = 60s;
  co.on_disconnect = [](const PeerId&, std::error_code ec) { std::printf("client: disconnected: %s\n", ec.message().c_str()); };
  auto client = open(Purpose::client, co);
  ASSERT_TRUE(client.stats().peers.at(0).checksums) << "the server did not agree to checksums";
  struct Phase {
    const char* what;
    std::function<void()> set;
    std::uint64_t messages;
  };
  using testing::Direction;
  // Damage both ways in pieces of at most 1 KiB, from each connection's first byte (the hello
  // carries its own checksum).
  const auto damaging = [&](void (testing::TcpProxy::*set_probability)(Direction, double)) {
    for (const auto d : {Direction::client_to_server, Direction::server_to_client}) {
      proxy.set_max_chunk(d, 1024);
      (proxy.*set_probability)(d, 0.005);
    }
  };
  const Phase phases[] = {
      {"pieces of at most 7 bytes one way and 13 the other", [&] {
         proxy.set_max_chunk(Direction::client_to_server, 7);
         proxy.set_max_chunk(Direction::server_to_client, 13);
       }, 400},
      {"a 200 us delay before each piece", [&] {
         proxy.set_delay(Direction::client_to_server, 200us);
         proxy.set_delay(Direction::server_to_client, 200us);
       }, 400},
      {"pieces of at most 1 KiB, 1 in 200 dropped", [&] { damaging(&testing::TcpProxy::set_drop_probability); }, 2000},
      {"pieces of at most 1 KiB, 1 in 200 with a bit flipped", [&] { damaging(&testing::TcpProxy::set_corrupt_probability); }, 2000},
  };
  std::uint64_t up = 0, down = 0;  // numbers sent so far each way
  for (const Phase& phase : phases) {
    SCOPED_TRACE(phase.what);
    std::printf("%s: %llu messages up, %llu down\n", phase.what, static_cast<unsigned long long>(phase.messages),
                static_cast<unsigned long long>(phase.messages / 4));
    std::fflush(stdout);
    proxy.clear_faults();
    phase.set();
    std::thread sender([&, first = up, n = phase.messages] {
      for (std::uint64_t i = first; i < first + n; ++i) (void)client.put(patterned(i));
    });
    std::thread echo([&, first = down, n = phase.messages / 4] {
      for (std::uint64_t i = first; i < first + n; ++i) (void)server.put(patterned(i), client.id());
    });
    // Every message, checked; a failure still joins the senders (the proxy is cleared and the
    // peers closed so their puts end).
    const auto receive = [&](Communicator& c, std::uint64_t first, std::uint64_t n, const char* from) {
      for (std::uint64_t i = first; i < first + n; ++i) {
        const auto m = c.get_for(30s);
        if (!m) return "message " + std::to_string(i) + " from the " + from + " not there after 30 s";
        if (!intact(*m, i)) {
          return "message " + std::to_string(i) + " from the " + from + " lost, repeated or altered (got number " +
                 std::to_string(number_of(*m)) + ", " + std::to_string(m->data.size()) + " bytes)";
        }
      }
      return std::string();
    };
    std::string failure = receive(server, up, phase.messages, "client");
    if (failure.empty()) failure = receive(client, down, phase.messages / 4, "server");
    if (!failure.empty()) {
      for (const auto* c : {&server, &client}) {
        for (const auto& peer : c->stats().peers) {
          std::printf("%s's peer: connects %llu, connected %d, queued %llu, received %llu\n", c == &server ? "server" : "client",
                      static_cast<unsigned long long>(peer.connects), static_cast<int>(peer.connected),
                      static_cast<unsigned long long>(peer.messages_queued), static_cast<unsigned long long>(peer.messages_received));
        }
      }
      std::printf("proxy: %llu connections, %llu cut\n", static_cast<unsigned long long>(proxy.connections_accepted()),
                  static_cast<unsigned long long>(proxy.connections_cut()));
      proxy.clear_faults();
      client.close();
      server.close();
    }
    sender.join();
    echo.join();
    ASSERT_EQ(failure, "");
    up += phase.messages;
    down += phase.messages / 4;
  }
  proxy.clear_faults();
  EXPECT_FALSE(server.get_for(100ms).has_value()) << "a message more than was sent";
  // One session on each side all along: every connection the server accepted resumed it (a
  // new one would count its connections from 1 again), and each ended as lost, not refused.
  // The client's count first: the server counts a connection before the client does.
  const std::uint64_t client_connects = client.stats().peers.at(0).connects;
  const Stats st = server.stats();
  ASSERT_EQ(st.peers.size(), 1u);
  EXPECT_GE(st.peers[0].connects, client_connects);
  EXPECT_GT(st.peers[0].connects, 1u);
  {
    const std::lock_guard lock(lost_mutex);
    for (const auto& ec : server_lost) EXPECT_EQ(ec, make_error_code(Errc::peer_lost)) << ec.message();
  }
  std::printf("%llu + %llu messages intact; proxy: %llu connections, %llu + %llu pieces dropped, %llu + %llu corrupted; "
              "client connects %llu\n",
              static_cast<unsigned long long>(up), static_cast<unsigned long long>(down),
              static_cast<unsigned long long>(proxy.connections_accepted()),
              static_cast<unsigned long long>(proxy.chunks_dropped(Direction::client_to_server)),
              static_cast<unsigned long long>(proxy.chunks_dropped(Direction::server_to_client)),
              static_cast<unsigned long long>(proxy.chunks_corrupted(Direction::client_to_server)),
              static_cast<unsigned long long>(proxy.chunks_corrupted(Direction::server_to_client)),
              static_cast<unsigned long long>(st.peers[0].connects));
}

INSTANTIATE_TEST_SUITE_P(Transports, Conformance, ::testing::Values("tcp", "tls", "shm", "auto", "grpc", "grpcs", "mqtt", "mqtts"));
INSTANTIATE_TEST_SUITE_P(Transports, BadInput, ::testing::Values("tcp"));
INSTANTIATE_TEST_SUITE_P(Transports, Tls, ::testing::Values("tls"));

}  // namespace
}  // namespace ferry
