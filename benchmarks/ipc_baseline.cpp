// SPDX-License-Identifier: Apache-2.0
// ferry-uds-baseline, ferry-bmq-baseline, ferry-zmq-baseline and ferry-iox-baseline: plain
// same-host IPC (no Ferry code) that Ferry is compared with, built from this one source
// (FERRY_IPC_UDS, _BMQ, _ZMQ or _IOX), with the command line and JSON of ferry-asio-baseline so
// `ferry-bench comm` and `ferry-bench compare` drive them alike.
//   uds: a Unix domain stream socket; each message a 4-byte length and the payload, written
//        with one writev; the reader reads the length, then the payload into its buffer.
//   bmq: Boost.Interprocess message_queue (a mutex and condition variables in a POSIX shared
//        memory segment): one queue each way, one message per send, 32 slots of 4 MiB.
//   zmq: a ZeroMQ (libzmq) PAIR socket over ipc:// or loopback tcp:// (--over); zmq_send copies
//        the message, the reader keeps it in ZeroMQ's zmq_msg_t; default high-water marks.
//   iox: Eclipse iceoryx (its RouDi daemon must run; the driver starts it): an untyped
//        publisher and subscriber each way, a loaned chunk per message (the payload copied in),
//        lossless (the publisher waits while the subscriber's queue of 256 is full); the reader
//        polls for --spin-us, then sleeps in a WaitSet, as Ferry's shm get() does.
// Streaming: the client sends for --seconds, then an empty message; the server counts from the
// first message to the empty one, answers with the count and prints its rates. Ping-pong: the
// server echoes each message; the client times each round trip. Layer: benchmarks/.
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(FERRY_IPC_BMQ)
#include <boost/interprocess/ipc/message_queue.hpp>
#elif defined(FERRY_IPC_ZMQ)
#include <zmq.h>
#elif defined(FERRY_IPC_IOX)
#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/mepoo/chunk_header.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/popo/wait_set.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"
#endif

#include "baseline_support.hpp"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
#if defined(FERRY_IPC_BMQ)
namespace bip = boost::interprocess;
#endif

#if defined(FERRY_IPC_UDS)
constexpr const char* kProgram = "uds";
#elif defined(FERRY_IPC_BMQ)
constexpr const char* kProgram = "bmq";
#elif defined(FERRY_IPC_ZMQ)
constexpr const char* kProgram = "zmq";
#elif defined(FERRY_IPC_IOX)
constexpr const char* kProgram = "iox";
#else
#error "build with FERRY_IPC_UDS, FERRY_IPC_BMQ, FERRY_IPC_ZMQ or FERRY_IPC_IOX"
#endif

// The largest message: what the message queue's slots and iceoryx's largest chunks hold.
constexpr std::size_t kBmqMaxMessage = std::size_t{4} << 20;
constexpr std::size_t kBmqSlots = 32;
// iceoryx: each subscriber's queue (its maximum, 256, is what the driver's RouDi mempools are
// sized for).
[[maybe_unused]] constexpr std::uint64_t kIoxQueue = 256;

struct Args {
  std::string port;  // server: ignored ("0"); client: what the server printed after "listening"
  std::string host;  // accepted for ferry-asio-baseline's command line
  bool pingpong = false;
  bool json_out = false;
  int timeout_s = 30;
  std::string size_text = "64";
  double seconds = 2;
  std::size_t batch = 1;  // accepted; one message per send
  std::uint64_t count = 20'000;
  std::uint64_t warmup = 1'000;
  std::string over = "ipc";  // zmq: ipc or tcp
  unsigned spin_us = 20;     // iox: poll this long before sleeping in a WaitSet
};

/// The name in results: uds, bmq, zmq-ipc, zmq-tcp, iox.
std::string impl_name(const Args& a) {
  return std::string(kProgram) == "zmq" ? "zmq-" + a.over : std::string(kProgram);
}

[[noreturn]] [[maybe_unused]] void die(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

/// One message channel, both ways: a connected Unix socket, two message queues, a ZeroMQ PAIR
/// socket, or an iceoryx publisher and subscriber each way. receive() hands out the next
/// message, valid until the next receive(); false at the end of the connection.
class Channel {
 public:
#if defined(FERRY_IPC_UDS)
  /// Server: listens on a new socket path and prints it; accepts one client.
  static Channel serve(const Args& /*a*/) {
    const std::string name = "/tmp/ferry-uds-baseline-" + std::to_string(::getpid()) + ".sock";
    const int l = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = address(name);
    ::unlink(name.c_str());
    if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(l, 1) != 0) die("listen " + name);
    std::cout << "listening " << name << std::endl;
    const int fd = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(l);
    ::unlink(name.c_str());
    if (fd < 0) die("accept");
    return Channel(fd);
  }
  static Channel connect(const Args& a) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr = address(a.port);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("connect " + a.port);
    return Channel(fd);
  }
  Channel(Channel&& o) noexcept : m_fd(std::exchange(o.m_fd, -1)), m_buf(std::move(o.m_buf)) {}
  ~Channel() {
    if (m_fd >= 0) ::close(m_fd);
  }
  void send(const std::byte* p, std::uint32_t n) {
    iovec v[2] = {{&n, sizeof n}, {const_cast<std::byte*>(p), n}};  // NOLINT: writev only reads
    std::size_t left = sizeof n + n;
    int i = 0;
    while (left > 0) {
      const ssize_t w = ::writev(m_fd, v + i, 2 - i);
      if (w < 0) {
        if (errno == EINTR) continue;
        die("write");
      }
      left -= static_cast<std::size_t>(w);
      auto done = static_cast<std::size_t>(w);
      while (i < 2 && done >= v[i].iov_len) {
        done -= v[i].iov_len;
        ++i;
      }
      if (i < 2) {
        v[i].iov_base = static_cast<char*>(v[i].iov_base) + done;
        v[i].iov_len -= done;
      }
    }
  }
  /// Reads the length, then the payload into a buffer grown only for a larger message.
  bool receive(std::span<const std::byte>& msg) {
    std::uint32_t len = 0;
    if (!read_all(reinterpret_cast<std::byte*>(&len), sizeof len)) return false;
    if (m_buf.size() < len) m_buf.resize(len);
    if (len > 0 && !read_all(m_buf.data(), len)) return false;
    msg = {m_buf.data(), len};
    return true;
  }

 private:
  explicit Channel(int fd) : m_fd(fd) {}
  static sockaddr_un address(const std::string& name) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, name.c_str(), sizeof a.sun_path - 1);
    return a;
  }
  bool read_all(std::byte* p, std::size_t n) {
    while (n > 0) {
      const ssize_t r = ::read(m_fd, p, n);
      if (r == 0) return false;
      if (r < 0) {
        if (errno == EINTR) continue;
        die("read");
      }
      p += r;
      n -= static_cast<std::size_t>(r);
    }
    return true;
  }
  int m_fd = -1;
  std::vector<std::byte> m_buf;
#elif defined(FERRY_IPC_BMQ)
  /// Server: creates the two queues and prints their base name.
  static Channel serve(const Args& /*a*/) {
    const std::string name = "ferry-bmq-baseline-" + std::to_string(::getpid());
    bip::message_queue::remove((name + "-up").c_str());
    bip::message_queue::remove((name + "-down").c_str());
    Channel c(name, true);
    std::cout << "listening " << name << std::endl;
    return c;
  }
  static Channel connect(const Args& a) { return Channel(a.port, false); }
  Channel(Channel&&) noexcept = default;
  ~Channel() { remove_names(); }
  void send(const std::byte* p, std::uint32_t n) { m_out->send(p, n, 0); }
  /// Into a buffer as large as a slot (made once).
  bool receive(std::span<const std::byte>& msg) {
    if (m_buf.size() < kBmqMaxMessage) m_buf.resize(kBmqMaxMessage);
    bip::message_queue::size_type got = 0;
    unsigned priority = 0;
    m_in->receive(m_buf.data(), m_buf.size(), got, priority);
    // The client opened both queues before it sent: their names can go now, so a process that
    // dies from here on leaves no 128 MiB segments in /dev/shm.
    remove_names();
    msg = {m_buf.data(), static_cast<std::size_t>(got)};
    return true;  // the empty message ends a stream
  }

 private:
  Channel(const std::string& name, bool server) : m_name(name), m_owner(server) {
    const std::string up = name + "-up";  // client -> server
    const std::string down = name + "-down";
    if (server) {
      m_in = std::make_unique<bip::message_queue>(bip::create_only, up.c_str(), kBmqSlots, kBmqMaxMessage);
      m_out = std::make_unique<bip::message_queue>(bip::create_only, down.c_str(), kBmqSlots, kBmqMaxMessage);
    } else {
      m_out = std::make_unique<bip::message_queue>(bip::open_only, up.c_str());
      m_in = std::make_unique<bip::message_queue>(bip::open_only, down.c_str());
    }
  }
  void remove_names() {
    if (std::exchange(m_owner, false)) {
      bip::message_queue::remove((m_name + "-up").c_str());
      bip::message_queue::remove((m_name + "-down").c_str());
    }
  }
  std::string m_name;
  bool m_owner = false;
  std::unique_ptr<bip::message_queue> m_in, m_out;
  std::vector<std::byte> m_buf;
#elif defined(FERRY_IPC_ZMQ)
  /// Server: binds a PAIR socket to a new ipc:// path or a free loopback tcp:// port and prints
  /// the endpoint.
  static Channel serve(const Args& a) {
    Channel c;
    const std::string where = a.over == "ipc" ? "ipc:///tmp/ferry-zmq-baseline-" + std::to_string(::getpid()) + ".ipc"
                                              : "tcp://127.0.0.1:*";
    if (zmq_bind(c.m_socket, where.c_str()) != 0) zmq_die("bind " + where);
    std::array<char, 256> endpoint{};
    std::size_t len = endpoint.size();
    if (zmq_getsockopt(c.m_socket, ZMQ_LAST_ENDPOINT, endpoint.data(), &len) != 0) zmq_die("ZMQ_LAST_ENDPOINT");
    c.m_ipc_path = a.over == "ipc" ? where.substr(6) : std::string();
    std::cout << "listening " << endpoint.data() << std::endl;
    return c;
  }
  static Channel connect(const Args& a) {
    Channel c;
    if (zmq_connect(c.m_socket, a.port.c_str()) != 0) zmq_die("connect " + a.port);
    return c;
  }
  Channel(Channel&& o) noexcept
      : m_context(std::exchange(o.m_context, nullptr)), m_socket(std::exchange(o.m_socket, nullptr)),
        m_ipc_path(std::move(o.m_ipc_path)) {
    zmq_msg_init(&m_msg);
  }
  ~Channel() {
    zmq_msg_close(&m_msg);
    if (m_socket != nullptr) zmq_close(m_socket);  // lingers until what was sent has gone
    if (m_context != nullptr) zmq_ctx_term(m_context);
    if (!m_ipc_path.empty()) ::unlink(m_ipc_path.c_str());
  }
  void send(const std::byte* p, std::uint32_t n) {
    while (zmq_send(m_socket, p, n, 0) < 0) {
      if (zmq_errno() != EINTR) zmq_die("zmq_send");
    }
  }
  /// Into ZeroMQ's own message (no copy out).
  bool receive(std::span<const std::byte>& msg) {
    while (zmq_msg_recv(&m_msg, m_socket, 0) < 0) {
      if (zmq_errno() != EINTR) zmq_die("zmq_msg_recv");
    }
    msg = {static_cast<const std::byte*>(zmq_msg_data(&m_msg)), zmq_msg_size(&m_msg)};
    return true;
  }

 private:
  Channel() : m_context(zmq_ctx_new()) {
    if (m_context == nullptr) zmq_die("zmq_ctx_new");
    m_socket = zmq_socket(m_context, ZMQ_PAIR);
    if (m_socket == nullptr) zmq_die("zmq_socket");
    zmq_msg_init(&m_msg);
  }
  [[noreturn]] static void zmq_die(const std::string& what) {
    throw std::runtime_error(what + ": " + zmq_strerror(zmq_errno()));
  }
  void* m_context = nullptr;
  void* m_socket = nullptr;
  std::string m_ipc_path;
  zmq_msg_t m_msg{};
#elif defined(FERRY_IPC_IOX)
  /// Server: a subscriber on "up" and a publisher on "down" of a service named after its pid,
  /// through the RouDi daemon (which the driver starts); prints the name.
  static Channel serve(const Args& a) {
    const std::string name = "server-" + std::to_string(::getpid());
    Channel c(name, "up", "down", a.spin_us);
    std::cout << "listening " << name << std::endl;
    return c;
  }
  /// Client: the other ends; returns once both are connected (iceoryx keeps nothing for a
  /// subscriber that is not there yet).
  static Channel connect(const Args& a, ferry::baseline::Watchdog& dog) {
    Channel c(a.port, "down", "up", a.spin_us);
    while (!c.m_publisher->hasSubscribers() || c.m_subscriber->getSubscriptionState() != iox::SubscribeState::SUBSCRIBED) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      dog.moved();
    }
    return c;
  }
  Channel(Channel&&) noexcept = default;
  ~Channel() {
    if (m_held != nullptr) m_subscriber->release(m_held);
  }
  /// Loans a chunk, copies the message into it and publishes it (the publisher waits while the
  /// subscriber's queue is full: nothing is dropped).
  void send(const std::byte* p, std::uint32_t n) {
    m_publisher->loan(n)
        .and_then([&](void* chunk) {
          if (n > 0) std::memcpy(chunk, p, n);
          m_publisher->publish(chunk);
        })
        .or_else([](iox::popo::AllocationError e) {
          throw std::runtime_error(std::string("iceoryx could not loan a chunk: ") + iox::popo::asStringLiteral(e));
        });
  }
  /// Takes the next chunk (releasing the one before): polls for the spin time, then sleeps in
  /// a WaitSet until the subscriber has data.
  bool receive(std::span<const std::byte>& msg) {
    if (m_held != nullptr) m_subscriber->release(std::exchange(m_held, nullptr));
    auto spin_until = Clock::now() + m_spin;
    for (std::uint32_t polls = 0;; ++polls) {
      const auto taken = m_subscriber->take();
      if (!taken.has_error()) {
        m_held = taken.value();
        const auto* header = iox::mepoo::ChunkHeader::fromUserPayload(m_held);
        msg = {static_cast<const std::byte*>(m_held), header->userPayloadSize()};
        return true;
      }
      if (taken.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE) {
        throw std::runtime_error(std::string("iceoryx take: ") + iox::popo::asStringLiteral(taken.get_error()));
      }
      if ((polls & 63) == 0 && Clock::now() >= spin_until) {
        (void)m_waitset->timedWait(iox::units::Duration::fromMilliseconds(100));
        spin_until = Clock::now() + m_spin;
      }
    }
  }

 private:
  Channel(const std::string& name, const char* in, const char* out, unsigned spin_us) : m_spin(std::chrono::microseconds(spin_us)) {
    const std::string runtime = "ferry-iox-baseline-" + std::to_string(::getpid());
    // iceoryx logs every registration to stdout otherwise; warnings and errors still show.
    iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn,
                                                             iox::log::LogLevelOutput::kHideLogLevel);
    iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, runtime.c_str()));
    const auto id = [](const std::string& s) { return iox::capro::IdString_t(iox::cxx::TruncateToCapacity, s.c_str()); };
    // Lossless both ways: the subscriber's queue blocks its publisher when full.
    iox::popo::PublisherOptions po;
    po.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    iox::popo::SubscriberOptions so;
    so.queueCapacity = kIoxQueue;
    so.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
    m_publisher = std::make_unique<iox::popo::UntypedPublisher>(iox::capro::ServiceDescription{id("ferry"), id(name), id(out)}, po);
    m_subscriber = std::make_unique<iox::popo::UntypedSubscriber>(iox::capro::ServiceDescription{id("ferry"), id(name), id(in)}, so);
    m_waitset = std::make_unique<iox::popo::WaitSet<>>();
    m_waitset->attachState(*m_subscriber, iox::popo::SubscriberState::HAS_DATA).or_else([](auto) {
      throw std::runtime_error("iceoryx: cannot attach the subscriber to a WaitSet");
    });
  }
  std::chrono::microseconds m_spin;
  std::unique_ptr<iox::popo::UntypedPublisher> m_publisher;
  std::unique_ptr<iox::popo::UntypedSubscriber> m_subscriber;
  std::unique_ptr<iox::popo::WaitSet<>> m_waitset;
  const void* m_held = nullptr;
#endif
};

json run_server(const Args& a) {
  const std::string impl = impl_name(a);
  ferry::baseline::Watchdog dog(impl.c_str(), a.timeout_s);
  Channel ch = Channel::serve(a);
  std::span<const std::byte> msg;
  std::uint64_t messages = 0, bytes = 0;
  std::optional<Clock::time_point> first;
  while (ch.receive(msg)) {
    if ((messages & 1023) == 0) dog.moved();  // a mutex and a wake-up: not per message
    if (msg.empty()) break;  // the end of the stream (or of the round trips)
    if (!first) first = Clock::now();
    ++messages;
    bytes += msg.size();
    if (a.pingpong) ch.send(msg.data(), static_cast<std::uint32_t>(msg.size()));
  }
  const double seconds = first ? std::chrono::duration<double>(Clock::now() - *first).count() : 0.0;
  const std::uint64_t count = messages;
  ch.send(reinterpret_cast<const std::byte*>(&count), sizeof count);
  const double per_s = seconds > 0 ? 1.0 / seconds : 0.0;
  return json{{"impl", impl},
              {"role", "server"},
              {"messages", messages},
              {"bytes", bytes},
              {"seconds", seconds},
              {"msgs_per_s", static_cast<double>(messages) * per_s},
              {"bytes_per_s", static_cast<double>(bytes) * per_s},
              {"gbit_per_s", static_cast<double>(bytes) * 8e-9 * per_s}};
}

json run_client(const Args& a) {
  const std::string impl = impl_name(a);
  ferry::baseline::Watchdog dog(impl.c_str(), a.timeout_s);
  const std::size_t size = ferry::baseline::parse_size(a.size_text);
  if (size == 0 || size + 4096 > kBmqMaxMessage) throw std::runtime_error("--size must be in [1, 4 MiB - 4 KiB]");
  std::vector<std::byte> payload(size);
  for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<std::byte>(i * 31 + 7);
#if defined(FERRY_IPC_IOX)
  Channel ch = Channel::connect(a, dog);
#else
  Channel ch = Channel::connect(a);
#endif
  std::span<const std::byte> in;
  json r{{"impl", impl}, {"role", "client"}};
  std::uint64_t sent = 0;
  if (a.pingpong) {
    std::vector<std::int64_t> rtt;
    rtt.reserve(a.count);
    for (std::uint64_t i = 0; i < a.warmup + a.count; ++i) {
      const auto t0 = Clock::now();
      ch.send(payload.data(), static_cast<std::uint32_t>(size));
      if (!ch.receive(in) || in.size() != size) throw std::runtime_error("a short echo");
      if (i >= a.warmup) rtt.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
      if ((i & 255) == 0) dog.moved();
    }
    sent = a.warmup + a.count;
    r.update(ferry::baseline::latency_json(rtt));
  } else {
    const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.seconds));
    while (Clock::now() < until) {
      for (int i = 0; i < 64; ++i) ch.send(payload.data(), static_cast<std::uint32_t>(size));
      sent += 64;
      if ((sent & 4095) == 0) dog.moved();
    }
  }
  ch.send(payload.data(), 0);  // the end (an empty message; a valid pointer for memcpy)
  if (!ch.receive(in) || in.size() != sizeof(std::uint64_t)) throw std::runtime_error("no count from the server");
  std::uint64_t counted = 0;
  std::memcpy(&counted, in.data(), sizeof counted);
  if (counted != sent) {
    throw std::runtime_error("sent " + std::to_string(sent) + " messages, the server counted " + std::to_string(counted));
  }
  r["messages"] = sent;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{std::string("ferry-") + kProgram + "-baseline: plain same-host IPC, measured beside Ferry"};
  app.require_subcommand(1);
  Args a;
  auto* server_cmd = app.add_subcommand("server", "serve one client, then print its result");
  auto* client_cmd = app.add_subcommand("client", "send to a server");
  for (auto* cmd : {server_cmd, client_cmd}) {
    cmd->add_option("--port", a.port, "client: what the server printed after 'listening'")->required();
    cmd->add_option("--host", a.host, "accepted for ferry-asio-baseline's command line");
    cmd->add_flag("--pingpong", a.pingpong, "round trips instead of streaming (both sides)");
    cmd->add_flag("--json", a.json_out, "print the result as one JSON object on one line");
    cmd->add_option("--timeout", a.timeout_s, "give up when nothing happens for this many seconds");
#if defined(FERRY_IPC_ZMQ)
    cmd->add_option("--over", a.over, "the ZeroMQ transport: ipc or tcp (loopback)")->check(CLI::IsMember({"ipc", "tcp"}));
#elif defined(FERRY_IPC_IOX)
    cmd->add_option("--spin-us", a.spin_us, "poll the subscriber this long before sleeping in a WaitSet");
#endif
  }
  client_cmd->add_option("--size", a.size_text, "payload bytes per message (suffix K or M allowed)");
  client_cmd->add_option("--seconds", a.seconds, "streaming time");
  client_cmd->add_option("--batch", a.batch, "accepted for ferry-asio-baseline's command line");
  client_cmd->add_option("--count", a.count, "timed round trips (--pingpong)");
  client_cmd->add_option("--warmup", a.warmup, "untimed round trips first (--pingpong)");
  CLI11_PARSE(app, argc, argv);
  try {
    const json r = *server_cmd ? run_server(a) : run_client(a);
    if (a.json_out) {
      std::cout << r.dump() << std::endl;
    } else {
      std::cout << r.dump(2) << std::endl;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-%s-baseline: %s\n", kProgram, e.what());
    return 1;
  }
}
