// SPDX-License-Identifier: Apache-2.0
// ferry-uds-baseline and ferry-bmq-baseline: plain same-host IPC (no Ferry code) that Ferry is
// compared with, built from this one source (FERRY_IPC_UDS or FERRY_IPC_BMQ), with the command
// line and JSON of ferry-asio-baseline so `ferry-bench comm --impl ferry,uds,bmq` drives them
// alike.
//   uds: a Unix domain stream socket; each message a 4-byte length and the payload, written
//        with one writev; the reader reads the length, then the payload into its buffer.
//   bmq: Boost.Interprocess message_queue (a mutex and condition variables in a POSIX shared
//        memory segment): one queue each way, one message per send, 32 slots of 4 MiB.
// Streaming: the client sends for --seconds, then an empty message; the server counts from the
// first message to the empty one, answers with the count and prints its rates. Ping-pong: the
// server echoes each message; the client times each round trip. Layer: benchmarks/.
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/interprocess/ipc/message_queue.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "baseline_support.hpp"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace bip = boost::interprocess;

#if defined(FERRY_IPC_UDS)
constexpr const char* kImpl = "uds";
#elif defined(FERRY_IPC_BMQ)
constexpr const char* kImpl = "bmq";
#else
#error "build with FERRY_IPC_UDS or FERRY_IPC_BMQ"
#endif

constexpr std::size_t kBmqMaxMessage = std::size_t{4} << 20;
constexpr std::size_t kBmqSlots = 32;

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
};

[[noreturn]] [[maybe_unused]] void die(const std::string& what) {
  throw std::runtime_error(what + ": " + std::strerror(errno));
}

/// One message channel, both ways: a connected Unix socket, or two message queues.
class Channel {
 public:
#if defined(FERRY_IPC_UDS)
  /// Server: listens on a new socket path and prints it; accepts one client.
  static Channel serve(std::string& name) {
    name = "/tmp/ferry-uds-baseline-" + std::to_string(::getpid()) + ".sock";
    const int l = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = address(name);
    ::unlink(name.c_str());
    if (l < 0 || ::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l, 1) != 0) die("listen " + name);
    std::cout << "listening " << name << std::endl;
    const int fd = ::accept4(l, nullptr, nullptr, SOCK_CLOEXEC);
    ::close(l);
    ::unlink(name.c_str());
    if (fd < 0) die("accept");
    return Channel(fd);
  }
  static Channel connect(const std::string& name) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un a = address(name);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect " + name);
    return Channel(fd);
  }
  Channel(Channel&& o) noexcept : m_fd(std::exchange(o.m_fd, -1)) {}
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
  /// The next message into buf (grown when too small), its size in n; false at EOF.
  bool receive(std::vector<std::byte>& buf, std::size_t& n) {
    std::uint32_t len = 0;
    if (!read_all(reinterpret_cast<std::byte*>(&len), sizeof len)) return false;
    if (buf.size() < len) buf.resize(len);
    n = len;
    return n == 0 || read_all(buf.data(), n);
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
#else
  /// Server: creates the two queues and prints their base name.
  static Channel serve(std::string& name) {
    name = "ferry-bmq-baseline-" + std::to_string(::getpid());
    bip::message_queue::remove((name + "-up").c_str());
    bip::message_queue::remove((name + "-down").c_str());
    Channel c(name, true);
    std::cout << "listening " << name << std::endl;
    return c;
  }
  static Channel connect(const std::string& name) { return Channel(name, false); }
  Channel(Channel&&) noexcept = default;
  ~Channel() {
    if (m_owner) {
      bip::message_queue::remove((m_name + "-up").c_str());
      bip::message_queue::remove((m_name + "-down").c_str());
    }
  }
  void send(const std::byte* p, std::uint32_t n) { m_out->send(p, n, 0); }
  /// The next message into buf (made as large as a slot once), its size in n.
  bool receive(std::vector<std::byte>& buf, std::size_t& n) {
    if (buf.size() < kBmqMaxMessage) buf.resize(kBmqMaxMessage);
    bip::message_queue::size_type got = 0;
    unsigned priority = 0;
    m_in->receive(buf.data(), buf.size(), got, priority);
    n = got;
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
  std::string m_name;
  bool m_owner = false;
  std::unique_ptr<bip::message_queue> m_in, m_out;
#endif
};

json run_server(const Args& a) {
  ferry::baseline::Watchdog dog(kImpl, a.timeout_s);
  std::string name;
  Channel ch = Channel::serve(name);
  std::vector<std::byte> buf;
  std::size_t n = 0;
  std::uint64_t messages = 0, bytes = 0;
  std::optional<Clock::time_point> first;
  while (ch.receive(buf, n)) {
    if ((messages & 1023) == 0) dog.moved();  // a mutex and a wake-up: not per message
    if (n == 0) break;  // the end of the stream (or of the round trips)
    if (!first) first = Clock::now();
    ++messages;
    bytes += n;
    if (a.pingpong) ch.send(buf.data(), static_cast<std::uint32_t>(n));
  }
  const double seconds = first ? std::chrono::duration<double>(Clock::now() - *first).count() : 0.0;
  const std::uint64_t count = messages;
  ch.send(reinterpret_cast<const std::byte*>(&count), sizeof count);
  const double per_s = seconds > 0 ? 1.0 / seconds : 0.0;
  return json{{"impl", kImpl},
              {"role", "server"},
              {"messages", messages},
              {"bytes", bytes},
              {"seconds", seconds},
              {"msgs_per_s", static_cast<double>(messages) * per_s},
              {"bytes_per_s", static_cast<double>(bytes) * per_s},
              {"gbit_per_s", static_cast<double>(bytes) * 8e-9 * per_s}};
}

json run_client(const Args& a) {
  ferry::baseline::Watchdog dog(kImpl, a.timeout_s);
  const std::size_t size = ferry::baseline::parse_size(a.size_text);
  if (size == 0 || size + 4 > kBmqMaxMessage) throw std::runtime_error("--size must be in [1, 4 MiB - 4]");
  std::vector<std::byte> payload(size);
  for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<std::byte>(i * 31 + 7);
  Channel ch = Channel::connect(a.port);
  std::vector<std::byte> in;
  std::size_t n = 0;
  json r{{"impl", kImpl}, {"role", "client"}};
  std::uint64_t sent = 0;
  if (a.pingpong) {
    std::vector<std::int64_t> rtt;
    rtt.reserve(a.count);
    for (std::uint64_t i = 0; i < a.warmup + a.count; ++i) {
      const auto t0 = Clock::now();
      ch.send(payload.data(), static_cast<std::uint32_t>(size));
      if (!ch.receive(in, n) || n != size) throw std::runtime_error("a short echo");
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
  if (!ch.receive(in, n) || n != sizeof(std::uint64_t)) throw std::runtime_error("no count from the server");
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
  CLI::App app{std::string("ferry-") + kImpl + "-baseline: plain same-host IPC, measured beside Ferry"};
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
    std::fprintf(stderr, "ferry-%s-baseline: %s\n", kImpl, e.what());
    return 1;
  }
}
