// SPDX-License-Identifier: Apache-2.0
// TcpProxy (test support): forwarding is lossless both ways, and each fault (cut, refuse, cut
// after n bytes, split, delay, drop, corrupt) does what it says; plain blocking sockets with
// poll() deadlines on the test side.
#include "support/tcp_proxy.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace ferry::testing {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using Bytes = std::vector<std::uint8_t>;

constexpr auto kIoDeadline = std::chrono::milliseconds(20'000);  // any single transfer
constexpr auto kPromptly = std::chrono::milliseconds(1'000);     // a cut is seen within this

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : m_fd(fd) {}
  Fd(Fd&& o) noexcept : m_fd(std::exchange(o.m_fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      m_fd = std::exchange(o.m_fd, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }
  int get() const { return m_fd; }
  void reset() {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = -1;
  }

 private:
  int m_fd = -1;
};

// Send and receive timeouts bound every blocking send() (and connect()) in these tests.
void set_socket_timeouts(int fd) {
  const timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

Fd connect_to(std::uint16_t port) {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) throw std::runtime_error("socket failed");
  set_socket_timeouts(fd.get());
  const int one = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const sockaddr_in a = loopback(port);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0)
    throw std::runtime_error(std::string("connect failed: ") + std::strerror(errno));
  return fd;
}

// A port nothing listens on (bound, then released).
std::uint16_t unused_port() {
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a = loopback(0);
  ::bind(fd.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

bool send_all(int fd, const std::uint8_t* p, std::size_t n) {
  while (n > 0) {
    const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}
bool send_all(int fd, const Bytes& b) { return send_all(fd, b.data(), b.size()); }
bool send_all(int fd, const std::string& s) {
  return send_all(fd, reinterpret_cast<const std::uint8_t*>(s.data()), s.size());
}

enum class End { eof, reset, timeout, stopped, other };

// One recv() of at most `cap` bytes, waiting at most until `deadline` (or until `stop`).
// Returns the bytes read; sets `end` when the stream ended instead.
std::size_t recv_some(int fd, std::uint8_t* buf, std::size_t cap, Clock::time_point deadline,
                      std::optional<End>& end, const std::atomic<bool>* stop = nullptr) {
  for (;;) {
    // relaxed: a stop request; nothing is published with it.
    if (stop != nullptr && stop->load(std::memory_order_relaxed)) {
      end = End::stopped;
      return 0;
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      end = End::timeout;
      return 0;
    }
    pollfd pfd{fd, POLLIN, 0};
    const int slice = static_cast<int>(std::min<std::int64_t>(left.count(), 50));
    const int ready = ::poll(&pfd, 1, slice);
    if (ready == 0 || (ready < 0 && errno == EINTR)) continue;
    const ssize_t n = ::recv(fd, buf, cap, 0);
    if (n > 0) return static_cast<std::size_t>(n);
    if (n == 0) {
      end = End::eof;
    } else if (errno == EINTR || errno == EAGAIN) {
      continue;
    } else {
      end = errno == ECONNRESET ? End::reset : End::other;
    }
    return 0;
  }
}

struct ReadResult {
  Bytes data;
  End end = End::other;
};

// Reads until EOF, reset or the deadline.
ReadResult read_until_closed(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  ReadResult r;
  std::uint8_t buf[65536];
  for (;;) {
    std::optional<End> end;
    const std::size_t n = recv_some(fd, buf, sizeof buf, deadline, end);
    if (end) {
      r.end = *end;
      return r;
    }
    r.data.insert(r.data.end(), buf, buf + n);
  }
}

// Reads exactly n bytes (fewer if the stream ends or the deadline passes).
Bytes read_exactly(int fd, std::size_t n, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  Bytes out(n);
  std::size_t got = 0;
  while (got < n) {
    std::optional<End> end;
    const std::size_t k = recv_some(fd, out.data() + got, n - got, deadline, end);
    if (end) break;
    got += k;
  }
  out.resize(got);
  return out;
}

bool closed_by_cut(End e) { return e == End::eof || e == End::reset; }

Bytes random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<std::uint8_t>(rng());
  return b;
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds timeout = kPromptly * 5) {
  const auto deadline = Clock::now() + timeout;
  while (!pred()) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// A loopback server on port 0 running `handler` for each connection on its own thread. The
// handler must return soon after `stopping` is set (recv_some() with the flag does that).
class TestServer {
 public:
  using Handler = std::function<void(int fd, std::size_t index, const std::atomic<bool>& stopping)>;

  explicit TestServer(Handler handler) : m_handler(std::move(handler)) {
    m_listen = Fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a = loopback(0);
    if (::bind(m_listen.get(), reinterpret_cast<const sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(m_listen.get(), 64) != 0)
      throw std::runtime_error("test server: bind/listen failed");
    socklen_t len = sizeof a;
    ::getsockname(m_listen.get(), reinterpret_cast<sockaddr*>(&a), &len);
    m_port = ntohs(a.sin_port);
    m_accept_thread = std::thread([this] { accept_loop(); });
  }
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;
  ~TestServer() {
    // relaxed: the threads only poll the flag; joins synchronise.
    m_stopping.store(true, std::memory_order_relaxed);
    m_accept_thread.join();
    for (auto& t : m_threads) t.join();
  }

  std::uint16_t port() const { return m_port; }
  std::size_t accepted() const {
    // relaxed: a statistic.
    return m_accepted.load(std::memory_order_relaxed);
  }

 private:
  void accept_loop() {
    // relaxed: see the destructor.
    while (!m_stopping.load(std::memory_order_relaxed)) {
      pollfd pfd{m_listen.get(), POLLIN, 0};
      if (::poll(&pfd, 1, 20) <= 0) continue;
      const int fd = ::accept4(m_listen.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      set_socket_timeouts(fd);
      // relaxed: a statistic.
      const std::size_t index = m_accepted.fetch_add(1, std::memory_order_relaxed);
      m_threads.emplace_back([this, fd, index] {
        m_handler(fd, index, m_stopping);
        ::close(fd);
      });
    }
  }

  Handler m_handler;
  Fd m_listen;
  std::uint16_t m_port = 0;
  std::atomic<bool> m_stopping{false};
  std::atomic<std::size_t> m_accepted{0};
  std::thread m_accept_thread;
  std::vector<std::thread> m_threads;  // accept thread only, then the destructor
};

void echo(int fd, std::size_t, const std::atomic<bool>& stopping) {
  std::uint8_t buf[65536];
  const auto deadline = Clock::now() + kIoDeadline * 2;
  for (;;) {
    std::optional<End> end;
    const std::size_t n = recv_some(fd, buf, sizeof buf, deadline, end, &stopping);
    if (end || !send_all(fd, buf, n)) return;
  }
}

// Records what each connection received and how it ended.
class Sink {
 public:
  Sink()
      : m_server([this](int fd, std::size_t index, const std::atomic<bool>& stopping) {
          run(fd, index, stopping);
        }) {}

  std::uint16_t port() const { return m_server.port(); }

  // Waits until connection `index` has ended; what it received and how it ended.
  ReadResult wait_end(std::size_t index, std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    if (!m_changed.wait_for(lock, timeout, [&] { return index < m_records.size() && m_records[index].ended; }))
      return {index < m_records.size() ? m_records[index].data : Bytes{}, End::timeout};
    return {m_records[index].data, m_records[index].end};
  }

  // Waits until connection `index` has received at least n bytes.
  bool wait_bytes(std::size_t index, std::size_t n, std::chrono::milliseconds timeout) {
    std::unique_lock lock(m_mutex);
    return m_changed.wait_for(lock, timeout, [&] {
      return index < m_records.size() && m_records[index].data.size() >= n;
    });
  }

 private:
  struct Record {
    Bytes data;
    End end = End::other;
    bool ended = false;
  };

  Record& record(std::size_t index) {
    if (m_records.size() <= index) m_records.resize(index + 1);
    return m_records[index];
  }

  void run(int fd, std::size_t index, const std::atomic<bool>& stopping) {
    std::uint8_t buf[65536];
    const auto deadline = Clock::now() + kIoDeadline * 2;
    for (;;) {
      std::optional<End> end;
      const std::size_t n = recv_some(fd, buf, sizeof buf, deadline, end, &stopping);
      const std::lock_guard lock(m_mutex);
      Record& r = record(index);
      if (end) {
        r.end = *end;
        r.ended = true;
        m_changed.notify_all();
        return;
      }
      r.data.insert(r.data.end(), buf, buf + n);
      m_changed.notify_all();
    }
  }

  std::mutex m_mutex;
  std::condition_variable m_changed;
  std::vector<Record> m_records;  // by connection index
  TestServer m_server;            // last: its threads stop before the records go
};

constexpr auto c2s = Direction::client_to_server;
constexpr auto s2c = Direction::server_to_client;

TEST(TcpProxy, ForwardsEightMebibytesBothWaysIntact) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  const Bytes data = random_bytes(8 << 20, 1);
  Fd client = connect_to(proxy.port());
  std::thread writer([&] {
    for (std::size_t off = 0; off < data.size(); off += 65536)
      if (!send_all(client.get(), data.data() + off, std::min<std::size_t>(65536, data.size() - off))) return;
    ::shutdown(client.get(), SHUT_WR);
  });
  const Bytes echoed = read_exactly(client.get(), data.size(), kIoDeadline);
  writer.join();
  ASSERT_EQ(echoed.size(), data.size());
  EXPECT_TRUE(echoed == data);
  // The client's half-close reached the server, whose close came back as EOF.
  const ReadResult rest = read_until_closed(client.get(), kPromptly * 5);
  EXPECT_EQ(rest.end, End::eof);
  EXPECT_TRUE(rest.data.empty());
  EXPECT_EQ(proxy.bytes_forwarded(c2s), data.size());
  EXPECT_EQ(proxy.bytes_forwarded(s2c), data.size());
  EXPECT_EQ(proxy.connections_accepted(), 1u);
  EXPECT_TRUE(eventually([&] { return proxy.active_connections() == 0; }));
}

TEST(TcpProxy, ForwardsConcurrentConnectionsIndependently) {
  TestServer server(echo);
  TcpProxy proxy("localhost", server.port());
  constexpr int kClients = 4;
  std::vector<char> ok(kClients, 0);  // not vector<bool>: one element per thread
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      const Bytes data = random_bytes(256 << 10, static_cast<std::uint64_t>(100 + i));
      Fd c = connect_to(proxy.port());
      std::thread writer([&] { send_all(c.get(), data); });
      const Bytes echoed = read_exactly(c.get(), data.size(), kIoDeadline);
      writer.join();
      ok[static_cast<std::size_t>(i)] = echoed == data ? 1 : 0;
    });
  }
  for (auto& t : clients) t.join();
  for (int i = 0; i < kClients; ++i) EXPECT_EQ(ok[static_cast<std::size_t>(i)], 1) << "client " << i;
  EXPECT_EQ(proxy.connections_accepted(), static_cast<std::uint64_t>(kClients));
}

TEST(TcpProxy, HalfCloseReachesTheServerWhichCanStillAnswer) {
  TestServer server([](int fd, std::size_t, const std::atomic<bool>&) {
    const ReadResult r = read_until_closed(fd, kIoDeadline);
    if (r.end == End::eof) send_all(fd, "got " + std::to_string(r.data.size()));
  });
  TcpProxy proxy("127.0.0.1", server.port());
  Fd client = connect_to(proxy.port());
  ASSERT_TRUE(send_all(client.get(), random_bytes(1000, 2)));
  ::shutdown(client.get(), SHUT_WR);
  const ReadResult r = read_until_closed(client.get(), kIoDeadline);
  EXPECT_EQ(std::string(r.data.begin(), r.data.end()), "got 1000");
  EXPECT_EQ(r.end, End::eof);
}

TEST(TcpProxy, CutAllResetsBothSidesPromptlyAndKeepsAccepting) {
  Sink sink;
  TcpProxy proxy("127.0.0.1", sink.port());
  Fd client = connect_to(proxy.port());
  ASSERT_TRUE(send_all(client.get(), std::string("hello")));
  ASSERT_TRUE(sink.wait_bytes(0, 5, kIoDeadline));

  const auto start = Clock::now();
  proxy.cut_all();
  const ReadResult at_client = read_until_closed(client.get(), kPromptly);
  const ReadResult at_server = sink.wait_end(0, kPromptly);
  EXPECT_LT(Clock::now() - start, kPromptly * 2);
  EXPECT_TRUE(closed_by_cut(at_client.end)) << static_cast<int>(at_client.end);
  EXPECT_TRUE(closed_by_cut(at_server.end)) << static_cast<int>(at_server.end);
  EXPECT_EQ(at_server.data.size(), 5u);
  EXPECT_EQ(proxy.connections_cut(), 1u);
  EXPECT_EQ(proxy.active_connections(), 0u);

  Fd again = connect_to(proxy.port());
  ASSERT_TRUE(send_all(again.get(), std::string("again")));
  EXPECT_TRUE(sink.wait_bytes(1, 5, kIoDeadline));
}

TEST(TcpProxy, CutAllRightAfterConnectCutsTheNewConnection) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  for (int i = 0; i < 20; ++i) {
    Fd client = connect_to(proxy.port());
    proxy.cut_all();
    const ReadResult r = read_until_closed(client.get(), kPromptly);
    EXPECT_TRUE(closed_by_cut(r.end)) << "round " << i << ": " << static_cast<int>(r.end);
  }
  EXPECT_EQ(proxy.connections_cut(), 20u);
}

TEST(TcpProxy, RefuseResetsNewConnectionsUntilCleared) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  Fd before = connect_to(proxy.port());
  ASSERT_TRUE(send_all(before.get(), std::string("x")));
  ASSERT_EQ(read_exactly(before.get(), 1, kIoDeadline).size(), 1u);

  proxy.set_refuse(true);
  Fd refused = connect_to(proxy.port());
  const ReadResult r = read_until_closed(refused.get(), kPromptly);
  EXPECT_TRUE(closed_by_cut(r.end)) << static_cast<int>(r.end);
  EXPECT_TRUE(r.data.empty());
  EXPECT_EQ(proxy.connections_refused(), 1u);
  EXPECT_EQ(server.accepted(), 1u);  // the refused client never reached the server
  // An existing connection is unaffected.
  ASSERT_TRUE(send_all(before.get(), std::string("y")));
  EXPECT_EQ(read_exactly(before.get(), 1, kIoDeadline).size(), 1u);

  proxy.set_refuse(false);
  Fd after = connect_to(proxy.port());
  ASSERT_TRUE(send_all(after.get(), std::string("z")));
  EXPECT_EQ(read_exactly(after.get(), 1, kIoDeadline).size(), 1u);
  EXPECT_EQ(proxy.connections_accepted(), 3u);
}

TEST(TcpProxy, CutAfterBytesClientToServerDeliversExactlyN) {
  Sink sink;
  TcpProxy proxy("127.0.0.1", sink.port());
  constexpr std::size_t kCut = 300'001;  // not a multiple of any read size
  const Bytes data = random_bytes(1 << 20, 3);
  Fd client = connect_to(proxy.port());
  proxy.cut_after_bytes(kCut, c2s);
  std::thread writer([&] { send_all(client.get(), data); });
  const ReadResult at_server = sink.wait_end(0, kIoDeadline);
  const ReadResult at_client = read_until_closed(client.get(), kIoDeadline);
  writer.join();
  EXPECT_TRUE(closed_by_cut(at_server.end)) << static_cast<int>(at_server.end);
  ASSERT_EQ(at_server.data.size(), kCut);
  EXPECT_TRUE(std::equal(at_server.data.begin(), at_server.data.end(), data.begin()));
  EXPECT_TRUE(closed_by_cut(at_client.end)) << static_cast<int>(at_client.end);
  EXPECT_EQ(proxy.bytes_forwarded(c2s), kCut);
  EXPECT_EQ(proxy.connections_cut(), 1u);
}

TEST(TcpProxy, CutAfterBytesServerToClientFiresOnceOnALaterConnection) {
  const Bytes data = random_bytes(1 << 20, 4);
  TestServer server([&](int fd, std::size_t, const std::atomic<bool>&) {
    if (send_all(fd, data)) ::shutdown(fd, SHUT_WR);
  });
  TcpProxy proxy("127.0.0.1", server.port());
  constexpr std::size_t kCut = 123'457;
  proxy.cut_after_bytes(kCut, s2c);  // before the connection exists

  Fd first = connect_to(proxy.port());
  const ReadResult cut = read_until_closed(first.get(), kIoDeadline);
  EXPECT_TRUE(closed_by_cut(cut.end)) << static_cast<int>(cut.end);
  ASSERT_EQ(cut.data.size(), kCut);
  EXPECT_TRUE(std::equal(cut.data.begin(), cut.data.end(), data.begin()));

  // One-shot: the next connection is not cut.
  Fd second = connect_to(proxy.port());
  const ReadResult whole = read_until_closed(second.get(), kIoDeadline);
  EXPECT_EQ(whole.end, End::eof);
  EXPECT_TRUE(whole.data == data);
  EXPECT_EQ(proxy.connections_cut(), 1u);
}

TEST(TcpProxy, CutAfterBytesCountsFromWhenItIsArmed) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  Fd client = connect_to(proxy.port());
  const Bytes first = random_bytes(100, 5);
  ASSERT_TRUE(send_all(client.get(), first));
  ASSERT_EQ(read_exactly(client.get(), first.size(), kIoDeadline), first);

  proxy.cut_after_bytes(50, s2c);
  const Bytes second = random_bytes(100, 6);
  ASSERT_TRUE(send_all(client.get(), second));
  const ReadResult r = read_until_closed(client.get(), kIoDeadline);
  EXPECT_TRUE(closed_by_cut(r.end)) << static_cast<int>(r.end);
  EXPECT_EQ(r.data, Bytes(second.begin(), second.begin() + 50));
}

TEST(TcpProxy, CutAfterZeroBytesCutsAtTheNextChunkAndCancelDisarms) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  proxy.cut_after_bytes(0, c2s);
  proxy.cancel_cut_after_bytes();
  Fd kept = connect_to(proxy.port());
  ASSERT_TRUE(send_all(kept.get(), std::string("abc")));
  EXPECT_EQ(read_exactly(kept.get(), 3, kIoDeadline).size(), 3u);

  proxy.cut_after_bytes(0, c2s);
  ASSERT_TRUE(send_all(kept.get(), std::string("def")));
  const ReadResult r = read_until_closed(kept.get(), kIoDeadline);
  EXPECT_TRUE(closed_by_cut(r.end)) << static_cast<int>(r.end);
  EXPECT_TRUE(r.data.empty());
  EXPECT_EQ(proxy.bytes_forwarded(c2s), 3u);
}

TEST(TcpProxy, SplitsIntoPiecesOfAtMostMaxChunk) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  proxy.set_max_chunk(c2s, 7);
  Fd client = connect_to(proxy.port());
  const Bytes data = random_bytes(1000, 7);
  ASSERT_TRUE(send_all(client.get(), data));
  EXPECT_EQ(read_exactly(client.get(), data.size(), kIoDeadline), data);
  EXPECT_GE(proxy.chunks_forwarded(c2s), (1000u + 6) / 7);
  EXPECT_EQ(proxy.bytes_forwarded(c2s), 1000u);
}

TEST(TcpProxy, DelaysEachPiece) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  proxy.set_delay(c2s, 50ms);
  proxy.set_max_chunk(c2s, 5);
  Fd client = connect_to(proxy.port());
  const Bytes data = random_bytes(20, 8);
  const auto start = Clock::now();
  ASSERT_TRUE(send_all(client.get(), data));
  EXPECT_EQ(read_exactly(client.get(), data.size(), kIoDeadline), data);
  EXPECT_GE(Clock::now() - start, 4 * 50ms);  // four pieces, one delay each

  proxy.clear_faults();
  const auto quick = Clock::now();
  ASSERT_TRUE(send_all(client.get(), data));
  EXPECT_EQ(read_exactly(client.get(), data.size(), kIoDeadline), data);
  EXPECT_LT(Clock::now() - quick, 50ms * 4);
}

TEST(TcpProxy, CorruptFlipsOneBitPerPiece) {
  Sink sink;
  TcpProxy proxy("127.0.0.1", sink.port());
  proxy.set_corrupt_probability(c2s, 1.0);
  proxy.set_max_chunk(c2s, 512);
  Fd client = connect_to(proxy.port());
  const Bytes data = random_bytes(4096, 9);
  ASSERT_TRUE(send_all(client.get(), data));
  ::shutdown(client.get(), SHUT_WR);
  const ReadResult r = sink.wait_end(0, kIoDeadline);
  EXPECT_EQ(r.end, End::eof);
  ASSERT_EQ(r.data.size(), data.size());
  int flipped = 0;
  for (std::size_t i = 0; i < data.size(); ++i)
    flipped += std::popcount(static_cast<unsigned>(data[i] ^ r.data[i]));
  EXPECT_GE(proxy.chunks_corrupted(c2s), 8u);
  EXPECT_EQ(static_cast<std::uint64_t>(flipped), proxy.chunks_corrupted(c2s));
  EXPECT_EQ(proxy.chunks_corrupted(c2s), proxy.chunks_forwarded(c2s));
}

TEST(TcpProxy, DropDiscardsPiecesAndKeepsTheConnection) {
  Sink sink;
  TcpProxy proxy("127.0.0.1", sink.port());
  proxy.set_drop_probability(c2s, 1.0);
  Fd client = connect_to(proxy.port());
  ASSERT_TRUE(send_all(client.get(), random_bytes(100, 10)));
  ASSERT_TRUE(eventually([&] { return proxy.chunks_dropped(c2s) >= 1; }));

  proxy.set_drop_probability(c2s, 0.0);
  const Bytes kept = random_bytes(100, 11);
  ASSERT_TRUE(send_all(client.get(), kept));
  ::shutdown(client.get(), SHUT_WR);
  const ReadResult r = sink.wait_end(0, kIoDeadline);
  EXPECT_EQ(r.end, End::eof);
  EXPECT_EQ(r.data, kept);
  EXPECT_EQ(proxy.bytes_forwarded(c2s), 100u);
}

// What a sink receives of 1000 bytes sent through byte-sized pieces dropped with p = 0.5.
Bytes survivors(std::uint64_t seed) {
  Sink sink;
  TcpProxy proxy("127.0.0.1", sink.port());
  proxy.set_seed(seed);
  proxy.set_max_chunk(c2s, 1);
  proxy.set_drop_probability(c2s, 0.5);
  Fd client = connect_to(proxy.port());
  EXPECT_TRUE(send_all(client.get(), random_bytes(1000, 12)));
  ::shutdown(client.get(), SHUT_WR);
  const ReadResult r = sink.wait_end(0, kIoDeadline);
  EXPECT_EQ(r.end, End::eof);
  EXPECT_EQ(proxy.bytes_forwarded(c2s), r.data.size());
  EXPECT_EQ(proxy.chunks_dropped(c2s) + r.data.size(), 1000u);
  return r.data;
}

TEST(TcpProxy, TheSameSeedDropsTheSamePieces) {
  const Bytes a = survivors(42);
  const Bytes b = survivors(42);
  const Bytes c = survivors(43);
  EXPECT_GT(a.size(), 300u);
  EXPECT_LT(a.size(), 700u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
}

TEST(TcpProxy, FaultSettingsChangeSafelyWhileDataFlows) {
  TestServer server(echo);
  TcpProxy proxy("127.0.0.1", server.port());
  std::atomic<bool> done{false};
  std::thread changer([&] {
    std::size_t k = 1;
    // relaxed: a stop request; the join synchronises.
    while (!done.load(std::memory_order_relaxed)) {
      proxy.set_max_chunk(c2s, k % 3 == 0 ? 0 : 1000 + k % 5000);
      proxy.set_delay(s2c, std::chrono::microseconds(k % 2));
      proxy.set_corrupt_probability(s2c, 0.0);
      proxy.set_seed(k);
      ++k;
      std::this_thread::sleep_for(100us);
    }
  });
  const Bytes data = random_bytes(1 << 20, 13);
  Fd client = connect_to(proxy.port());
  std::thread writer([&] { send_all(client.get(), data); });
  const Bytes echoed = read_exactly(client.get(), data.size(), kIoDeadline);
  writer.join();
  // relaxed: see above.
  done.store(true, std::memory_order_relaxed);
  changer.join();
  EXPECT_TRUE(echoed == data);
}

TEST(TcpProxy, UnreachableTargetResetsTheClient) {
  TcpProxy proxy("127.0.0.1", unused_port());
  Fd client = connect_to(proxy.port());
  const ReadResult r = read_until_closed(client.get(), kPromptly);
  EXPECT_TRUE(closed_by_cut(r.end)) << static_cast<int>(r.end);
  EXPECT_TRUE(eventually([&] { return proxy.active_connections() == 0; }));
}

TEST(TcpProxy, DestructorResetsConnectionsAndReturnsPromptly) {
  TestServer server(echo);
  auto proxy = std::make_unique<TcpProxy>("127.0.0.1", server.port());
  Fd client = connect_to(proxy->port());
  ASSERT_TRUE(send_all(client.get(), std::string("ping")));
  ASSERT_EQ(read_exactly(client.get(), 4, kIoDeadline).size(), 4u);
  proxy->set_delay(s2c, 10s);  // a pending timer must not hold the destructor up
  ASSERT_TRUE(send_all(client.get(), std::string("pong")));
  std::this_thread::sleep_for(20ms);
  const auto start = Clock::now();
  proxy.reset();
  EXPECT_LT(Clock::now() - start, kPromptly);
  const ReadResult r = read_until_closed(client.get(), kPromptly);
  EXPECT_TRUE(closed_by_cut(r.end)) << static_cast<int>(r.end);
  EXPECT_TRUE(r.data.empty());
}

TEST(TcpProxy, RejectsProbabilitiesOutsideZeroToOne) {
  TcpProxy proxy("127.0.0.1", unused_port());
  EXPECT_THROW(proxy.set_drop_probability(c2s, 1.5), std::invalid_argument);
  EXPECT_THROW(proxy.set_corrupt_probability(s2c, -0.1), std::invalid_argument);
  EXPECT_THROW(proxy.set_drop_probability(c2s, std::nan("")), std::invalid_argument);
  EXPECT_NE(proxy.port(), 0u);
}

}  // namespace
}  // namespace ferry::testing
