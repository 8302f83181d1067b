// SPDX-License-Identifier: Apache-2.0
// ferry::rpc: calls over every transport, errors, deadlines, cancellation, shutdown, and the
// death of either side (helper processes, killed with SIGKILL).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <ferry/ferry.hpp>

#include "support/mosquitto.hpp"
#include "support/tls_certs.hpp"
#include "rpc/wire.hpp"
#include "support/errors.hpp"
#include "support/spawn.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Point {
  double x, y;
};

std::span<const std::byte> bytes_of(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }
std::string text_of(const Bytes& b) { return std::string(b.text()); }

std::string unique_service(const std::string& tag) {
  static std::atomic<int> counter{0};
  return "rpc-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

/// The methods most tests use.
void add_methods(rpc::Server& server) {
  server.handle("echo", [](std::span<const std::byte> in, const rpc::CallContext&) { return Bytes::copy_of(in); });
  server.handle<Point, double>("norm", [](const Point& p) { return std::sqrt(p.x * p.x + p.y * p.y); });
  server.handle<std::string, std::string>("upper", [](const std::string& s) {
    std::string out = s;
    for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return out;
  });
  server.handle<std::uint64_t, std::uint64_t>("square", [](const std::uint64_t& v) { return v * v; });
  server.handle<std::uint32_t, std::uint32_t>("sleep", [](const std::uint32_t& ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
  });
  server.handle("boom", [](std::span<const std::byte>, const rpc::CallContext&) -> Bytes {
    throw std::runtime_error("the handler went boom");
  });
  server.handle("refuse", [](std::span<const std::byte>, const rpc::CallContext&) -> Bytes {
    throw Error(Errc::invalid_argument, "no such key");
  });
}

class RpcTransports : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() { s_certs = std::make_unique<testing::TlsCerts>(); }
  static void TearDownTestSuite() {
    s_broker.reset();
    s_certs.reset();
  }
  static testing::MosquittoBroker& broker() {
    if (!s_broker) s_broker = std::make_unique<testing::MosquittoBroker>();
    return *s_broker;
  }
  bool slow() const { return GetParam() == "mqtt"; }

  Options server_options() const {
    Options o;
    const std::string& t = GetParam();
    if (t == "shm") {
      o.endpoint = unique_service("t");  // a bare name: shm://
    } else if (t == "mqtt") {
      o.endpoint = "mqtt://127.0.0.1:" + std::to_string(broker().port()) + "/" + unique_service("t");
    } else {
      o.endpoint = t + "://127.0.0.1:0";
    }
    o.shm.huge_pages = false;  // the pool belongs to the hugepage tests
    if (t == "tls") {
      o.security.certificate = s_certs->server_chain();
      o.security.key = s_certs->server_key();
    }
    return o;
  }
  Options client_options(const rpc::Server& server) const {
    Options o;
    o.endpoint = server.local_endpoint();
    o.shm.huge_pages = false;
    if (GetParam() == "tls") {
      o.security.ca = s_certs->ca();
      o.security.server_name = "localhost";
    }
    return o;
  }

  static std::unique_ptr<testing::TlsCerts> s_certs;
  static std::unique_ptr<testing::MosquittoBroker> s_broker;
};
std::unique_ptr<testing::TlsCerts> RpcTransports::s_certs;
std::unique_ptr<testing::MosquittoBroker> RpcTransports::s_broker;

TEST_P(RpcTransports, BytesTypedAndStringCalls) {
  rpc::Server server(server_options(), {.workers = 2});
  add_methods(server);
  server.start();
  rpc::Client client(client_options(server));
  EXPECT_EQ(text_of(client.call("echo", bytes_of("hello"))), "hello");
  EXPECT_EQ(text_of(client.call("echo", {})), "");
  EXPECT_DOUBLE_EQ(client.call<double>("norm", Point{3, 4}), 5.0);
  EXPECT_EQ(client.call<std::string>("upper", std::string("ferry")), "FERRY");
  // A large request and reply (chunked by the transport).
  std::string big(3 << 20, 'x');
  for (std::size_t i = 0; i < big.size(); i += 4096) big[i] = static_cast<char>('a' + i % 26);
  EXPECT_EQ(client.call<std::string>("echo", big, 30s), big);
  EXPECT_EQ(client.stats().calls, 5U);
  EXPECT_EQ(client.stats().failed, 0U);
  EXPECT_EQ(server.stats().calls, 5U);
}

TEST_P(RpcTransports, ManyThreadsManyCallsEachGetTheirOwnReply) {
  rpc::Server server(server_options(), {.workers = 4});
  add_methods(server);
  server.start();
  rpc::Client client(client_options(server));
  const int threads = 8;
  const int calls = slow() ? 100 : 500;
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = 0; i < calls; ++i) {
        const std::uint64_t v = static_cast<std::uint64_t>(t) * 1'000'003 + static_cast<std::uint64_t>(i);
        try {
          if (client.call<std::uint64_t>("square", v, 30s) != v * v) ++wrong;
        } catch (const Error&) {
          ++failed;
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(server.stats().calls, static_cast<std::uint64_t>(threads * calls));
}

TEST_P(RpcTransports, PipelinedAsyncCallsOnOneConnection) {
  rpc::Server server(server_options(), {.workers = 3});
  add_methods(server);
  server.start();
  rpc::Client client(client_options(server));
  const std::uint64_t n = slow() ? 200 : 2000;
  std::vector<rpc::Call> calls;
  for (std::uint64_t i = 0; i < n; ++i) calls.push_back(client.async_call("square", i, 30s));
  // Waited for out of order: every reply still reaches its own call.
  for (std::uint64_t i = n; i-- > 0;) ASSERT_EQ(calls[i].get_as<std::uint64_t>(), i * i) << i;
  EXPECT_EQ(client.stats().late_replies, 0U);
}

TEST_P(RpcTransports, HandlerErrorsAndUnknownMethodsReachTheCaller) {
  rpc::Server server(server_options(), {.workers = 2});
  add_methods(server);
  server.start();
  rpc::Client client(client_options(server));
  try {
    (void)client.call("boom", {});
    ADD_FAILURE() << "boom returned";
  } catch (const rpc::RemoteError& e) {
    EXPECT_EQ(e.errc(), Errc::remote_error);
    EXPECT_NE(std::string(e.what()).find("the handler went boom"), std::string::npos) << e.what();
  }
  try {
    (void)client.call("refuse", {});
    ADD_FAILURE() << "refuse returned";
  } catch (const rpc::RemoteError& e) {
    EXPECT_EQ(e.errc(), Errc::invalid_argument);
    // The handler's message, with the code's name once (the server strips its own copy).
    EXPECT_EQ(std::string(e.what()), "rpc refuse: no such key: invalid argument");
  }
  try {
    (void)client.call("no-such-method", {});
    ADD_FAILURE() << "an unknown method returned";
  } catch (const rpc::RemoteError& e) {
    EXPECT_EQ(e.errc(), Errc::not_found);
    EXPECT_NE(std::string(e.what()).find("no method 'no-such-method'"), std::string::npos) << e.what();
  }
  // A request that does not decode as the method's type.
  try {
    (void)client.call("norm", bytes_of("3"));
    ADD_FAILURE() << "a bad request returned";
  } catch (const rpc::RemoteError& e) {
    EXPECT_EQ(e.errc(), Errc::protocol_error);
  }
  // The connection is still good.
  EXPECT_EQ(text_of(client.call("echo", bytes_of("still here"))), "still here");
  EXPECT_EQ(server.stats().failed, 4U);
  EXPECT_EQ(client.stats().failed, 4U);
}

INSTANTIATE_TEST_SUITE_P(Transports, RpcTransports, ::testing::Values("shm", "tcp", "tls", "auto", "grpc", "mqtt"));

// --- one transport: behaviour that does not depend on it ---

Options shm_options(const std::string& service) {
  Options o;
  o.endpoint = service;
  o.shm.huge_pages = false;
  return o;
}

struct Service {
  explicit Service(Options o = shm_options(unique_service("s")), unsigned workers = 2)
      : server(std::move(o), {.workers = workers}) {
    add_methods(server);
  }
  rpc::Server server;
};

TEST(Rpc, ConfigurationErrorsAreClear) {
  rpc::Server server(shm_options(unique_service("c")));
  EXPECT_EQ(test::error_of([&] { server.handle("", [](auto, auto&) { return Bytes(); }); }), Errc::invalid_argument);
  EXPECT_EQ(test::error_of([&] { server.handle(std::string(256, 'm'), [](auto, auto&) { return Bytes(); }); }),
            Errc::invalid_argument);
  server.handle("a", [](auto, auto&) { return Bytes(); });
  EXPECT_EQ(test::error_of([&] { server.handle("a", [](auto, auto&) { return Bytes(); }); }), Errc::invalid_argument);
  EXPECT_EQ(test::error_of([&] { server.handle("b", rpc::Handler{}); }), Errc::invalid_argument);
  server.start();
  EXPECT_EQ(test::error_of([&] { server.handle("c", [](auto, auto&) { return Bytes(); }); }), Errc::invalid_argument);
  EXPECT_EQ(test::error_of([&] { server.start(); }), Errc::invalid_argument);
  rpc::Client client(server.local_endpoint());
  EXPECT_EQ(test::error_of([&] { (void)client.call("", {}); }), Errc::invalid_argument);
  EXPECT_EQ(test::error_of([&] { (void)client.call(std::string(256, 'm'), {}); }), Errc::invalid_argument);
  // No server by that name.
  Options o = shm_options(unique_service("none"));
  o.connection.connect_timeout = 100ms;
  const Errc e = test::error_of([&] { rpc::Client c(o); });
  EXPECT_TRUE(e == Errc::not_found || e == Errc::timed_out) << static_cast<int>(e);
}

TEST(Rpc, ABareNameIsAShmService) {
  EXPECT_EQ(rpc::service_endpoint("kv"), "shm://kv");
  EXPECT_EQ(rpc::service_endpoint("tcp://127.0.0.1:5"), "tcp://127.0.0.1:5");
  const std::string name = unique_service("bare");
  Service s(shm_options(name));
  s.server.start();
  EXPECT_EQ(s.server.local_endpoint(), "shm://" + name);
  rpc::Client client(name);
  EXPECT_EQ(client.call<std::uint64_t>("square", std::uint64_t{12}), 144U);
}

TEST(Rpc, ADeadlineEndsTheCallAndTheServerSkipsTheReply) {
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  const auto t0 = Clock::now();
  try {
    (void)client.call<std::uint32_t>("sleep", std::uint32_t{300}, 50ms);
    ADD_FAILURE() << "the call returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::timed_out);
    EXPECT_EQ(dynamic_cast<const rpc::RemoteError*>(&e), nullptr);
  }
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 50ms);
  EXPECT_LT(took, 2s);  // at its deadline, not the handler's 300 ms (generous for a loaded machine)
  // The connection serves the next call while the slow handler still runs.
  EXPECT_EQ(client.call<std::uint64_t>("square", std::uint64_t{7}), 49U);
  // The handler finished after the caller's deadline, which it knew: no reply was sent.
  const auto until = Clock::now() + 5s;
  while (s.server.stats().expired == 0 && Clock::now() < until) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(s.server.stats().expired, 1U);
  EXPECT_EQ(client.stats().timed_out, 1U);
}

TEST(Rpc, HandlersSeeTheCallersDeadline) {
  rpc::Server server(shm_options(unique_service("d")));
  std::atomic<std::int64_t> left_ms{-1};
  server.handle("deadline", [&](std::span<const std::byte>, const rpc::CallContext& ctx) {
    left_ms = std::chrono::duration_cast<std::chrono::milliseconds>(ctx.deadline - Clock::now()).count();
    return Bytes();
  });
  server.start();
  rpc::Client client(server.local_endpoint());
  (void)client.call("deadline", {}, 2s);
  EXPECT_GT(left_ms.load(), 1500);
  EXPECT_LE(left_ms.load(), 2000);
}

TEST(Rpc, CancelEndsTheCallAndItsLateReplyIsDropped) {
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  rpc::Call call = client.async_call("sleep", std::uint32_t{100}, 10s);
  EXPECT_FALSE(call.wait_for(10ms));
  call.cancel();
  EXPECT_TRUE(call.ready());
  EXPECT_EQ(test::error_of([&] { (void)call.get(); }), Errc::cancelled);
  // The reply comes after ~100 ms and is dropped; the next calls still get their own.
  const auto until = Clock::now() + 5s;
  while (client.stats().late_replies == 0 && Clock::now() < until) {
    EXPECT_EQ(client.call<std::uint64_t>("square", std::uint64_t{3}), 9U);
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(client.stats().late_replies, 1U);
  EXPECT_EQ(client.stats().cancelled, 1U);
}

TEST(Rpc, AReplyIsTakenOnce) {
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  rpc::Call call = client.async_call("echo", bytes_of("once"));
  EXPECT_EQ(text_of(call.get()), "once");
  EXPECT_EQ(test::error_of([&] { (void)call.get(); }), Errc::invalid_argument);
  EXPECT_EQ(test::error_of([] { (void)rpc::Call().get(); }), Errc::invalid_argument);
}

TEST(Rpc, ThreadsWaitingOnEachOthersCallsAllFinish) {
  // A thread whose call is slow reads the connection while others' replies arrive, then hands
  // the reading over; none waits past its own reply.
  Service s(shm_options(unique_service("lf")), 4);
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  rpc::Call slow = client.async_call("sleep", std::uint32_t{2000}, 10s);
  std::thread waiter([&] { EXPECT_EQ(slow.get_as<std::uint32_t>(), 2000U); });
  std::this_thread::sleep_for(20ms);  // the waiter is reading the connection now
  for (std::uint64_t i = 0; i < 100; ++i) EXPECT_EQ(client.call<std::uint64_t>("square", i), i * i);
  EXPECT_FALSE(slow.ready());  // these were not held until the slow reply
  waiter.join();
}

TEST(Rpc, OversizeRequestIsRefusedAndTheConnectionStaysUsable) {
  Options o = shm_options(unique_service("big"));
  o.connection.message_size = 64 << 10;
  Service s(o);
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  const std::string big(128 << 10, 'b');
  const auto t0 = Clock::now();
  try {
    (void)client.call<std::string>("echo", big);
    ADD_FAILURE() << "the oversize call returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::message_too_large);
    EXPECT_NE(std::string(e.what()).find("exceeds the server's limit"), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - t0, 2s);  // refused at once, not at the 10 s timeout
  EXPECT_EQ(client.call<std::string>("echo", std::string(1000, 's')), std::string(1000, 's'));
  EXPECT_EQ(s.server.stats().calls, 1U);
}

TEST(Rpc, AReplyLargerThanTheClientAcceptsIsAnError) {
  Service s;
  s.server.start();
  Options c;
  c.endpoint = s.server.local_endpoint();
  c.connection.message_size = 64 << 10;
  rpc::Client client(c);
  try {
    (void)client.call<std::string>("echo", std::string(60 << 10, 'x') + std::string(8 << 10, 'y'));
    ADD_FAILURE() << "the call returned";
  } catch (const rpc::RemoteError& e) {
    EXPECT_EQ(e.errc(), Errc::message_too_large);
  }
  EXPECT_EQ(client.call<std::uint64_t>("square", std::uint64_t{5}), 25U);
}

TEST(Rpc, GracefulShutdownFinishesRunningCalls) {
  std::latch started(3);
  rpc::Server server(shm_options(unique_service("g")), {.workers = 4});
  server.handle<std::uint32_t, std::uint32_t>("slow", [&](const std::uint32_t& v) {
    started.count_down();
    std::this_thread::sleep_for(500ms);
    return v + 1;
  });
  server.handle<std::uint32_t, std::uint32_t>("fast", [](const std::uint32_t& v) { return v; });
  server.start();
  rpc::Client client(server.local_endpoint());
  std::vector<rpc::Call> calls;
  for (std::uint32_t i = 0; i < 3; ++i) calls.push_back(client.async_call("slow", i, 10s));
  // The calls are read only by a thread that waits: this one, until the handlers run.
  EXPECT_FALSE(calls[0].wait_for(50ms));
  started.wait();
  std::thread stopper([&] { server.shutdown(); });
  // Calls that come once the drain has begun are refused, clearly (the fourth worker answers).
  Errc refused{};
  for (std::uint32_t i = 0; refused == Errc{} && i < 10'000; ++i) {
    try {
      EXPECT_EQ(client.call<std::uint32_t>("fast", i, 5s), i);
    } catch (const rpc::RemoteError& e) {
      refused = e.errc();
    }
  }
  EXPECT_EQ(refused, Errc::unavailable);
  for (std::uint32_t i = 0; i < 3; ++i) EXPECT_EQ(calls[i].get_as<std::uint32_t>(), i + 1);
  stopper.join();
  server.wait();  // returns at once: shut down
  EXPECT_EQ(server.stats().in_flight, 0U);
  EXPECT_GE(server.stats().refused, 1U);
}

TEST(Rpc, ShutdownFromAHandlerIsRefused) {
  rpc::Server* self = nullptr;
  rpc::Server server(shm_options(unique_service("h")));
  server.handle("stop", [&](std::span<const std::byte>, const rpc::CallContext&) -> Bytes {
    self->shutdown();
    return Bytes();
  });
  self = &server;
  server.start();
  rpc::Client client(server.local_endpoint());
  EXPECT_EQ(test::error_of([&] { (void)client.call("stop", {}); }), Errc::invalid_argument);
}

TEST(Rpc, ClosedClientFailsItsCallsWithClosed) {
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  rpc::Call call = client.async_call("sleep", std::uint32_t{500}, 10s);
  std::thread closer([&] {
    std::this_thread::sleep_for(30ms);
    client.close();
  });
  EXPECT_EQ(test::error_of([&] { (void)call.get(); }), Errc::closed);
  closer.join();
  EXPECT_EQ(test::error_of([&] { (void)client.call("echo", {}); }), Errc::closed);
}

TEST(Rpc, GarbageFromAPlainCommunicatorIsCountedAndAnswered) {
  Service s;
  s.server.start();
  Options o;
  o.endpoint = s.server.local_endpoint();
  Communicator raw = open(Purpose::client, o);
  (void)raw.put(std::string("not a request"));
  // A request header with a method longer than the message.
  Bytes bad = rpc::wire::encode_request(77, "echo", 0, {});
  rpc::wire::store<std::uint16_t>(bad.data() + rpc::wire::off::method_size, 200);
  (void)raw.put(std::move(bad));
  const auto reply = raw.get_for(5s);
  ASSERT_TRUE(reply.has_value());
  rpc::wire::Reply r;
  const char* why = "";
  ASSERT_TRUE(rpc::wire::parse_reply(reply->bytes(), r, why)) << why;
  EXPECT_EQ(r.id, 77U);
  EXPECT_EQ(static_cast<Errc>(r.status), Errc::protocol_error);
  const auto until = Clock::now() + 5s;  // two workers: the first message may still be in hand
  while (s.server.stats().bad_requests < 2 && Clock::now() < until) std::this_thread::sleep_for(2ms);
  EXPECT_EQ(s.server.stats().bad_requests, 2U);
  // The service still serves.
  rpc::Client client(s.server.local_endpoint());
  EXPECT_EQ(client.call<std::uint64_t>("square", std::uint64_t{4}), 16U);
}

TEST(Rpc, GarbageFromAServerIsDroppedAndAnUnknownStatusIsAProtocolError) {
  Options o = shm_options("shm://" + unique_service("plain"));
  Communicator plain = open(Purpose::server, o);
  rpc::Client client(plain.local_endpoint());
  std::thread answer([&] {
    const auto m = plain.get_for(5s);
    if (!m) return;
    (void)plain.put(std::string("definitely not a reply"), m->peer);
    // A reply trailer with an unknown status.
    Bytes r = rpc::wire::encode_reply(1, 999, bytes_of("odd"));
    (void)plain.put(std::move(r), m->peer);
  });
  try {
    (void)client.call("echo", {}, 2s);
    ADD_FAILURE() << "the call returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::protocol_error) << e.what();
  }
  answer.join();
  EXPECT_EQ(client.stats().bad_replies, 1U);
}

TEST(Rpc, RepliesThatArrivedBeforeTheServerClosedAreAnswers) {
  // The server answers every call, then shuts down: the replies wait in the client's receive
  // queue while the connection ends. They are answers, not losses.
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  std::vector<rpc::Call> calls;
  for (std::uint64_t i = 0; i < 50; ++i) calls.push_back(client.async_call("square", i, 10s));
  const auto until = Clock::now() + 5s;
  while (s.server.stats().calls < 50 && Clock::now() < until) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(s.server.stats().calls, 50U);
  s.server.shutdown();  // returns once the client has acknowledged the replies
  for (std::uint64_t i = 0; i < 50; ++i) EXPECT_EQ(calls[i].get_as<std::uint64_t>(), i * i) << i;
  EXPECT_EQ(client.stats().failed, 0U);
}

TEST(Rpc, ReadyMakesProgressWithoutAWaitingThread) {
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  rpc::Call call = client.async_call("square", std::uint64_t{11}, 10s);
  const auto until = Clock::now() + 5s;
  while (!call.ready() && Clock::now() < until) std::this_thread::sleep_for(1ms);
  ASSERT_TRUE(call.ready());
  EXPECT_EQ(call.get_as<std::uint64_t>(), 121U);
  // A call nobody waits for still ends at its deadline.
  rpc::Call slow = client.async_call("sleep", std::uint32_t{2000}, 100ms);
  const auto t0 = Clock::now();
  while (!slow.ready() && Clock::now() < t0 + 5s) std::this_thread::sleep_for(5ms);
  EXPECT_TRUE(slow.ready());
  EXPECT_LT(Clock::now() - t0, 2s);
  EXPECT_EQ(test::error_of([&] { (void)slow.get(); }), Errc::timed_out);
}

TEST(Rpc, AbandonedCallsAreForgotten) {
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  for (std::uint64_t i = 0; i < 100; ++i) (void)client.async_call("square", i, 10s);  // dropped at once
  // Their replies are dropped as they come; the connection serves the next calls.
  const auto until = Clock::now() + 5s;
  while (client.stats().late_replies < 100 && Clock::now() < until) {
    EXPECT_EQ(client.call<std::uint64_t>("square", std::uint64_t{2}), 4U);
  }
  EXPECT_EQ(client.stats().late_replies, 100U);
}

TEST(Rpc, ConcurrentShutdownsAreSafe) {
  Service s;
  s.server.start();
  rpc::Client client(s.server.local_endpoint());
  EXPECT_EQ(client.call<std::uint64_t>("square", std::uint64_t{9}), 81U);
  std::thread a([&] { s.server.shutdown(); });
  std::thread b([&] { s.server.shutdown(); });
  s.server.wait();
  a.join();
  b.join();
  EXPECT_NE(test::error_of([&] { (void)client.call("echo", {}, 2s); }), Errc::internal);  // fails: no server
}

// --- the death of either side (helper processes) ---

std::string rpc_peer() {
  return (std::filesystem::path(test::peer_path()).parent_path() / "ferry_rpc_peer").string();
}

TEST(RpcProcesses, AKilledServerFailsEveryPendingCallPromptlyAndARestartedOneIsReachedAgain) {
  const std::string name = unique_service("kill");
  auto server = std::make_unique<test::Child>(std::vector<std::string>{rpc_peer(), "server", "shm://" + name}, -1, true);
  ASSERT_EQ(server->read_line().rfind("listening", 0), 0U);
  Options o = shm_options(name);
  o.connection.connect_timeout = 3s;
  rpc::Client client(o);
  EXPECT_EQ(text_of(client.call("echo", bytes_of("before"))), "before");
  std::vector<rpc::Call> calls;
  for (int i = 0; i < 4; ++i) calls.push_back(client.async_call("sleep", std::uint32_t{10'000}, 30s));
  std::thread killer([&] {
    std::this_thread::sleep_for(100ms);
    server->kill();
  });
  const auto t0 = Clock::now();
  for (auto& c : calls) EXPECT_EQ(test::error_of([&] { (void)c.get(); }), Errc::peer_lost);
  const auto took = Clock::now() - t0;
  killer.join();
  EXPECT_LT(took, 100ms + 2s) << "the calls failed after "
                              << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  EXPECT_EQ(server->wait(5s), 128 + SIGKILL);
  // With the server gone, a new call fails at once (not at its deadline).
  const auto t1 = Clock::now();
  const Errc down = test::error_of([&] { (void)client.call("echo", bytes_of("down"), 20s); });
  EXPECT_TRUE(down == Errc::peer_lost || down == Errc::not_found || down == Errc::timed_out) << static_cast<int>(down);
  EXPECT_LT(Clock::now() - t1, 5s);
  // A new server under the same name: the same client reaches it.
  server = std::make_unique<test::Child>(std::vector<std::string>{rpc_peer(), "server", "shm://" + name}, -1, true);
  ASSERT_EQ(server->read_line().rfind("listening", 0), 0U);
  Bytes again;
  const auto until = Clock::now() + 5s;
  for (;;) {
    try {
      again = client.call("echo", bytes_of("after"), 2s);
      break;
    } catch (const Error& e) {
      // The first call may find the old session still ending.
      ASSERT_TRUE(e.errc() == Errc::peer_lost || e.errc() == Errc::not_found) << e.what();
      ASSERT_LT(Clock::now(), until) << e.what();
    }
  }
  EXPECT_EQ(text_of(again), "after");
  server->kill(SIGTERM);  // a graceful end removes its rendezvous socket (SIGKILL's would stay)
  EXPECT_EQ(server->wait(10s), 0);
}

TEST(RpcProcesses, AClientKilledMidCallLeavesNoSessionBehind) {
  std::latch started(1);
  Options o = shm_options(unique_service("kc"));
  o.connection.resume_timeout = 200ms;
  rpc::Server server(o, {.workers = 2});
  std::atomic<int> finished{0};
  server.handle<std::uint32_t, std::string>("sleep", [&](const std::uint32_t&) {
    started.count_down();
    std::this_thread::sleep_for(300ms);
    ++finished;
    return std::string("slept");
  });
  server.handle("echo", [](std::span<const std::byte> in, const rpc::CallContext&) { return Bytes::copy_of(in); });
  server.start();
  test::Child client({rpc_peer(), "client", server.local_endpoint()}, -1, true);
  ASSERT_EQ(client.read_line(), "calling");
  started.wait();
  client.kill();
  EXPECT_EQ(client.wait(5s), 128 + SIGKILL);
  // The handler finishes; its reply has nowhere to go; the session ends after resume_timeout.
  const auto until = Clock::now() + 5s;
  while ((server.stats().sessions != 0 || finished.load() == 0) && Clock::now() < until) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(finished.load(), 1);
  EXPECT_EQ(server.stats().sessions, 0U);
  EXPECT_EQ(server.stats().in_flight, 0U);
  // Other clients are served as before.
  rpc::Client other(server.local_endpoint());
  EXPECT_EQ(text_of(other.call("echo", bytes_of("fine"))), "fine");
}

}  // namespace
}  // namespace ferry
