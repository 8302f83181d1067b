// SPDX-License-Identifier: Apache-2.0
// What only the shm transport has: peer credentials, the rendezvous directory and socket,
// the rings' description in stats(), and bad input written straight into a ring by a client
// that speaks the handshake but not the framing.
#include <gtest/gtest.h>

#include <ferry/ferry.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include "ferry/shm/ring.hpp"
#include "framing/frame.hpp"
#include "support/errors.hpp"
#include "support/spawn.hpp"
#include "transport/shm/shm_transport.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
constexpr auto kWait = 20s;

std::string unique_name(const char* what) {
  static std::atomic<int> counter{0};
  return std::string("shmtest-") + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter);
}

/// A directory under /tmp removed at the end, with the given mode.
class TempDir {
 public:
  explicit TempDir(unsigned mode = 0700) {
    std::string tmpl = "/tmp/ferry-shmtest-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp");
    m_path = tmpl;
    ::chmod(m_path.c_str(), mode);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(m_path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return m_path; }

 private:
  fs::path m_path;
};

Options shm_options(const std::string& name, const fs::path& dir = {}) {
  Options o;
  o.endpoint = "shm://" + name;
  o.shm.directory = dir;
  o.shm.huge_pages = false;  // the pool belongs to the hugepage tests (RESOURCE_LOCK hugepage_pool)
  return o;
}

/// An auto:// server's options, without hugepages (as shm_options()).
Options auto_server(const std::string& endpoint) {
  Options o;
  o.endpoint = endpoint;
  o.shm.huge_pages = false;
  return o;
}

TEST(ShmTransport, StatsNameTheTransportRingAndPageSize) {
  Options so = shm_options(unique_name("stats"));
  so.shm.ring_size = 256 << 10;
  auto server = open(Purpose::server, so);
  Options co;
  co.endpoint = server.local_endpoint();
  auto client = open(Purpose::client, co);
  client.put(std::string("x")).wait_delivered();
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_EQ(s.peers[0].transport, "shm");
  EXPECT_NE(s.peers[0].transport_detail.find("ring 256 KiB"), std::string::npos) << s.peers[0].transport_detail;
  EXPECT_NE(s.peers[0].transport_detail.find("pages"), std::string::npos) << s.peers[0].transport_detail;
  EXPECT_NE(s.peers[0].remote.find("pid " + std::to_string(::getpid())), std::string::npos) << s.peers[0].remote;
  // The client maps the rings the server made: it reports the same geometry.
  EXPECT_EQ(client.stats().peers.at(0).transport_detail.substr(0, 12), "ring 256 KiB");
}

TEST(ShmTransport, ASecondServerIsRefusedAndAStaleSocketIsReclaimed) {
  TempDir dir;
  const std::string name = unique_name("twice");
  {
    auto first = open(Purpose::server, shm_options(name, dir.path()));
    EXPECT_EQ(test::error_of([&] { (void)open(Purpose::server, shm_options(name, dir.path())); }), Errc::address_in_use);
  }
  // A socket file left by a server that died (bound, never unlinked, nobody listening).
  const fs::path path = dir.path() / (name + ".sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ::close(fd);
  ASSERT_TRUE(fs::exists(path));
  auto server = open(Purpose::server, shm_options(name, dir.path()));
  Options co = shm_options(name, dir.path());
  auto client = open(Purpose::client, co);
  client.put(std::string("after reclaim")).wait_delivered();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the socket of a server without allow-lists is owner-only";
  server.close();
  EXPECT_FALSE(fs::exists(path)) << "a closed server removes its socket";
}

TEST(ShmTransport, NoServerIsNotFoundWithThePath) {
  TempDir dir;
  Options co = shm_options(unique_name("nobody-home"), dir.path());
  co.connection.connect_timeout = 200ms;
  try {
    (void)open(Purpose::client, co);
    FAIL() << "connected to nothing";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::not_found);
    EXPECT_NE(std::string(e.what()).find(dir.path().string()), std::string::npos) << e.what();
  }
}

TEST(ShmTransport, TheDefaultDirectoryIsOwnerOnlyAndAnUnsafeOneIsRefused) {
  TempDir runtime;
  const char* old_xdg = std::getenv("XDG_RUNTIME_DIR");
  const std::string saved = old_xdg ? old_xdg : "";
  const char* old_dir = std::getenv("FERRY_SHM_DIR");
  const std::string saved_dir = old_dir ? old_dir : "";
  ::unsetenv("FERRY_SHM_DIR");
  ::setenv("XDG_RUNTIME_DIR", runtime.path().c_str(), 1);
  const fs::path path = detail::shm_link::rendezvous_path(ShmOptions{}, "x", true);
  EXPECT_EQ(path, runtime.path() / "ferry" / "x.sock");
  struct stat st {};
  ASSERT_EQ(::stat((runtime.path() / "ferry").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  // Writable by others: anyone could put a socket there that clients would trust.
  ::chmod((runtime.path() / "ferry").c_str(), 0777);
  EXPECT_EQ(test::error_of([] { (void)detail::shm_link::rendezvous_path(ShmOptions{}, "x", true); }), Errc::permission_denied);
  // Too long for a Unix socket address: refused up front with the reason.
  ShmOptions deep;
  deep.directory = "/tmp/" + std::string(100, 'd');
  EXPECT_EQ(test::error_of([&] { (void)detail::shm_link::rendezvous_path(deep, "x", false); }), Errc::invalid_argument);
  if (old_xdg) {
    ::setenv("XDG_RUNTIME_DIR", saved.c_str(), 1);
  } else {
    ::unsetenv("XDG_RUNTIME_DIR");
  }
  if (old_dir) ::setenv("FERRY_SHM_DIR", saved_dir.c_str(), 1);
}

TEST(ShmTransport, ManyClientsComingAndGoingAreAllServedPromptly) {
  // More clients than get() polls itself (16), while others connect and leave: every message
  // must still arrive at once (a link dropped from get()'s polling must not be left unwoken).
  TempDir dir;
  const std::string name = unique_name("many");
  Options so = shm_options(name, dir.path());
  so.shm.spin = std::chrono::milliseconds(2);
  so.connection.keepalive_timeout = std::chrono::seconds(5);
  std::mutex mu;
  std::vector<PeerId> persistent;  // the 24 clients that stay
  int dropped = 0;                 // of those, disconnected
  so.on_disconnect = [&](const PeerId& peer, std::error_code) {
    const std::lock_guard lock(mu);
    if (std::find(persistent.begin(), persistent.end(), peer) != persistent.end()) ++dropped;
  };
  auto server = open(Purpose::server, so);
  std::vector<Communicator> clients;
  for (int i = 0; i < 24; ++i) {
    Options co = shm_options(name, dir.path());
    {
      const std::lock_guard lock(mu);
      persistent.push_back(co.id);
    }
    clients.push_back(open(Purpose::client, co));
  }
  std::atomic<bool> stop{false};
  std::thread churn([&] {
    while (!stop.load()) {
      auto c = open(Purpose::client, shm_options(name, dir.path()));
      c.put(std::string("churn")).wait();
      c.close();
    }
  });
  using Clock = std::chrono::steady_clock;
  Clock::duration worst{};
  const auto end = Clock::now() + 2s;
  while (Clock::now() < end) {
    for (auto& c : clients) {
      const std::int64_t sent = Clock::now().time_since_epoch().count();
      c.put(Bytes::copy_of(std::string_view(reinterpret_cast<const char*>(&sent), sizeof sent)));
    }
    for (std::size_t got = 0; got < clients.size();) {
      const auto m = server.get_for(kWait);
      ASSERT_TRUE(m.has_value());
      if (m->data.size() != sizeof(std::int64_t)) continue;  // a churning client's
      std::int64_t sent = 0;
      std::memcpy(&sent, m->data.data(), sizeof sent);
      worst = std::max(worst, Clock::now().time_since_epoch() - Clock::duration(sent));
      ++got;
    }
    std::this_thread::sleep_for(3ms);
  }
  stop = true;
  churn.join();
  std::printf("worst delivery %.1f ms\n", std::chrono::duration<double, std::milli>(worst).count());
  EXPECT_LT(worst, 500ms);
  // The last churning client's session ends on the server a moment after its close().
  const auto deadline = Clock::now() + kWait;
  while (server.peers().size() != clients.size() && Clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(server.peers().size(), clients.size());
  const std::lock_guard lock(mu);
  EXPECT_EQ(dropped, 0) << "a persistent client was dropped (a link left unwoken times out)";
}

TEST(ShmTransport, AGetThatStopsWaitingHandsTheRingsWakeUpBack) {
  // A get() about to sleep has the peer wake it directly, not Ferry's thread. Once it stops
  // waiting (here: timeouts), a message must reach the receive queue with nobody in get().
  const std::string name = unique_name("handback");
  Options so = shm_options(name);
  so.shm.spin = 0us;  // sleep at once: the wake-up handshake is all there is
  auto server = open(Purpose::server, so);
  Options co = shm_options(name);
  co.shm.spin = 0us;
  auto client = open(Purpose::client, co);
  client.put(std::string("hello")).wait_delivered();
  ASSERT_TRUE(server.get_for(kWait).has_value());
  for (int round = 0; round < 20; ++round) {
    for (int i = 0; i < 3; ++i) EXPECT_FALSE(server.get_for(1ms).has_value());
    // Acknowledged: in the receive queue. Left on a wake-up nobody waits for, it would sit in
    // the ring until the next get().
    ASSERT_TRUE(client.put(std::string("later")).wait_delivered_for(5s)) << "round " << round;
    EXPECT_EQ(server.stats().receive_queue_messages, 1u) << "round " << round;
    const auto m = server.get_for(kWait);
    ASSERT_TRUE(m.has_value());
    EXPECT_EQ(m->data.text(), "later");
  }
}

TEST(ShmTransport, ManyThreadsSleepingInGetLoseAndDuplicateNothing) {
  // Several threads sleep in get() / get_for() on the same rings and on each other's wake-ups
  // while three clients send in bursts: every message arrives exactly once.
  const std::string name = unique_name("getters");
  Options so = shm_options(name);
  so.shm.spin = 0us;
  auto server = open(Purpose::server, so);
  constexpr int kClients = 3;
  constexpr std::uint32_t kPerClient = 4000;
  std::vector<Communicator> clients;
  for (int i = 0; i < kClients; ++i) {
    Options co = shm_options(name);
    co.shm.spin = 0us;
    clients.push_back(open(Purpose::client, co));
  }
  std::mutex mu;
  std::vector<std::vector<int>> seen(kClients, std::vector<int>(kPerClient, 0));
  std::atomic<std::uint32_t> total{0};
  std::vector<std::thread> getters;
  for (int t = 0; t < 4; ++t) {
    getters.emplace_back([&, t] {
      const auto deadline = std::chrono::steady_clock::now() + kWait;
      while (total.load() < kClients * kPerClient && std::chrono::steady_clock::now() < deadline) {
        const auto m = t % 2 == 0 ? server.get_for(std::chrono::microseconds(200 * (t + 1))) : server.get_for(50ms);
        if (!m) continue;
        std::uint32_t id = 0;
        ASSERT_EQ(m->data.size(), sizeof id);
        std::memcpy(&id, m->data.data(), sizeof id);
        const std::lock_guard lock(mu);
        ++seen.at(id / kPerClient).at(id % kPerClient);
        ++total;
      }
    });
  }
  std::vector<std::thread> senders;
  for (int c = 0; c < kClients; ++c) {
    senders.emplace_back([&, c] {
      for (std::uint32_t i = 0; i < kPerClient; ++i) {
        const std::uint32_t id = static_cast<std::uint32_t>(c) * kPerClient + i;
        clients[c].put(Bytes::copy_of(std::span(reinterpret_cast<const std::byte*>(&id), sizeof id)));
        if (i % (7 + c) == 0) std::this_thread::sleep_for(std::chrono::microseconds(50 * (c + 1)));
      }
    });
  }
  for (auto& t : senders) t.join();
  for (auto& t : getters) t.join();
  EXPECT_EQ(total.load(), kClients * kPerClient);
  for (int c = 0; c < kClients; ++c) {
    for (std::uint32_t i = 0; i < kPerClient; ++i) ASSERT_EQ(seen[c][i], 1) << "client " << c << " message " << i;
  }
}

TEST(ShmTransport, DisconnectCallbacksNeverRunInTheCallersGet) {
  // get()/try_get() read the ring themselves; the peer's answer to our close frame ends the
  // session, whose callbacks must still run on Ferry's own threads.
  for (int i = 0; i < 30; ++i) {
    const std::string name = unique_name("close");
    Options so = shm_options(name);
    std::atomic<std::thread::id> callback_thread{};
    std::atomic<bool> called{false};
    so.on_disconnect = [&](const PeerId&, std::error_code) {
      callback_thread = std::this_thread::get_id();
      called = true;
    };
    auto server = open(Purpose::server, so);
    auto client = open(Purpose::client, shm_options(name));
    client.put(std::string("bye")).wait_delivered();
    std::thread closer([&] { server.close(); });
    const auto deadline = std::chrono::steady_clock::now() + kWait;
    while (!called.load() && std::chrono::steady_clock::now() < deadline) (void)server.try_get();
    closer.join();
    ASSERT_TRUE(called.load());
    EXPECT_NE(callback_thread.load(), std::this_thread::get_id()) << "on_disconnect ran inside try_get()";
  }
}

TEST(ShmTransport, APeerThatDiesWhileItsMessagesWaitIsSeenAtOnce) {
  // The server's receive queue from the client is full (it never calls get()): the client is
  // SIGKILLed then. Its death must still be seen promptly, or the server's puts to it would
  // wait for a ring that nobody frees.
  Options so = shm_options(unique_name("paused"));
  so.connection.receive_queue_messages = 16;
  std::atomic<std::int64_t> lost_at{0};
  so.on_disconnect = [&](const PeerId&, std::error_code) {
    lost_at = std::chrono::steady_clock::now().time_since_epoch().count();
  };
  auto server = open(Purpose::server, so);
  const std::string peer = (fs::path(test::peer_path()).parent_path() / "ferry_comm_peer").string();
  test::Child child({peer, "client", server.local_endpoint()}, -1, true);
  ASSERT_EQ(child.read_line(), "connected");
  const auto deadline = std::chrono::steady_clock::now() + kWait;
  while (server.stats().receive_queue_messages < 16) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the client's messages never filled the queue";
    std::this_thread::sleep_for(1ms);
  }
  const auto killed = std::chrono::steady_clock::now();
  child.kill(SIGKILL);
  child.wait(5s);
  while (lost_at.load() == 0) {
    ASSERT_LT(std::chrono::steady_clock::now() - killed, 5s) << "the death of a paused peer was not noticed";
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_LT(std::chrono::nanoseconds(lost_at.load()) - killed.time_since_epoch(), std::chrono::nanoseconds(100ms));
}

// --- another user ---

class OtherUser : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another user (CI runs as root)";
    // The helper, where the other user can run it (the build tree may be closed to it).
    const fs::path peer = fs::path(test::peer_path()).parent_path() / "ferry_comm_peer";
    m_peer = m_dir.path() / "ferry_comm_peer";
    fs::copy_file(peer, m_peer);
    ::chmod(m_dir.path().c_str(), 0755);
  }
  /// ferry_comm_peer as uid/gid 65534 (nobody), connecting to shm://name in our directory.
  std::vector<std::string> client_as_nobody(const std::string& name) const {
    return {"/usr/bin/env", "FERRY_SHM_DIR=" + m_dir.path().string(), "/usr/bin/setpriv", "--reuid=65534",
            "--regid=65534", "--clear-groups", m_peer.string(), "client", "shm://" + name};
  }
  TempDir m_dir{0755};
  fs::path m_peer;
};

TEST_F(OtherUser, IsRefusedUnlessAllowed) {
  constexpr int kPermissionDenied = 10 + static_cast<int>(Errc::permission_denied);
  // Not allowed: the socket is owner-only; the connection itself is refused.
  {
    const std::string name = unique_name("closed");
    auto server = open(Purpose::server, shm_options(name, m_dir.path()));
    test::Child child(client_as_nobody(name), -1, true);
    EXPECT_EQ(child.wait(kWait), kPermissionDenied);
    EXPECT_TRUE(server.peers().empty());
  }
  // Another user is allowed, not this one: the socket is open to all, the server's
  // credential check refuses it.
  {
    const std::string name = unique_name("others");
    Options so = shm_options(name, m_dir.path());
    so.shm.allow_uids = {12345};
    auto server = open(Purpose::server, so);
    test::Child child(client_as_nobody(name), -1, true);
    EXPECT_EQ(child.wait(kWait), kPermissionDenied);
    EXPECT_TRUE(server.peers().empty());
  }
  // Allowed by uid, and by gid: served.
  for (const bool by_gid : {false, true}) {
    const std::string name = unique_name("allowed");
    Options so = shm_options(name, m_dir.path());
    (by_gid ? so.shm.allow_gids : so.shm.allow_uids) = {65534};
    auto server = open(Purpose::server, so);
    test::Child child(client_as_nobody(name), -1, true);
    ASSERT_EQ(child.read_line(), "connected");
    const auto m = server.get_for(kWait);
    ASSERT_TRUE(m.has_value());
    const Stats s = server.stats();
    ASSERT_EQ(s.peers.size(), 1u);
    EXPECT_NE(s.peers[0].remote.find("uid 65534"), std::string::npos) << s.peers[0].remote;
    child.kill(SIGKILL);
    child.wait(5s);
  }
}

TEST_F(OtherUser, AnAutoClientThatMayNotUseSharedMemoryIsServedOverTcp) {
  // The server's rendezvous directory is its own (0700): shared memory fails for nobody, who
  // falls back to TCP, which serves any user.
  Options so = auto_server("auto://127.0.0.1:0");
  auto server = open(Purpose::server, so);
  const std::vector<std::string> args{"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                      m_peer.string(), "client", server.local_endpoint()};
  test::Child child(args, -1, true);
  ASSERT_EQ(child.read_line(), "connected");
  ASSERT_TRUE(server.get_for(kWait).has_value());
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_EQ(s.peers[0].transport, "tcp");
  child.kill(SIGKILL);
  child.wait(5s);
}

// --- auto:// ---

TEST(Auto, ALocalClientUsesSharedMemoryAndSaysWhy) {
  Options so = auto_server("auto://127.0.0.1:0");
  auto server = open(Purpose::server, so);
  EXPECT_EQ(server.local_endpoint().rfind("auto://127.0.0.1:", 0), 0u) << server.local_endpoint();
  Options co;
  co.endpoint = server.local_endpoint();
  auto client = open(Purpose::client, co);
  client.put(std::string("local")).wait_delivered();
  const Stats c = client.stats();
  ASSERT_EQ(c.peers.size(), 1u);
  EXPECT_EQ(c.peers[0].transport, "shm");
  EXPECT_NE(c.peers[0].transport_detail.find("same host"), std::string::npos) << c.peers[0].transport_detail;
  EXPECT_EQ(server.stats().transport_of(client.id()), "shm");
  // A tcp:// client of the same server is served over TCP, side by side.
  Options tco;
  tco.endpoint = "tcp://127.0.0.1:" + std::to_string(Endpoint::parse(server.local_endpoint()).port);
  auto tcp_client = open(Purpose::client, tco);
  tcp_client.put(std::string("remote")).wait_delivered();
  EXPECT_EQ(server.stats().transport_of(tcp_client.id()), "tcp");
  // Broadcast reaches both, whatever their transport.
  ASSERT_TRUE(server.put(std::string("all")).wait_delivered_for(kWait));
  EXPECT_EQ(client.get_for(kWait)->text(), "all");
  EXPECT_EQ(tcp_client.get_for(kWait)->text(), "all");
}

TEST(Auto, AClientOfAPlainTcpServerStaysOnTcpAndSaysWhy) {
  Options so;
  so.endpoint = "tcp://127.0.0.1:0";
  auto server = open(Purpose::server, so);
  Options co;
  co.endpoint = "auto://127.0.0.1:" + std::to_string(Endpoint::parse(server.local_endpoint()).port);
  auto client = open(Purpose::client, co);
  client.put(std::string("x")).wait_delivered();
  const Stats c = client.stats();
  ASSERT_EQ(c.peers.size(), 1u);
  EXPECT_EQ(c.peers[0].transport, "tcp");
  EXPECT_NE(c.peers[0].transport_detail.find("offers no shared memory"), std::string::npos) << c.peers[0].transport_detail;
}

/// A network namespace joined to this one by a veth pair (root only): a second "host" for the
/// network, with its own IPC namespace for the processes started in it.
class OtherNamespace : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root for ip netns (CI runs as root)";
    if (::access("/usr/sbin/ip", X_OK) != 0) GTEST_SKIP() << "iproute2 is not installed (scripts/setup.sh installs it)";
    const std::string id = std::to_string(::getpid() % 100000);
    m_ns = "ferry-t" + id;
    m_host_if = "fa" + id;
    m_ns_if = "fb" + id;
    const unsigned octet = 1 + static_cast<unsigned>(::getpid()) % 250;
    m_host_ip = "10.213." + std::to_string(octet) + ".1";
    m_ns_ip = "10.213." + std::to_string(octet) + ".2";
    for (const std::string& cmd :
         {"ip netns add " + m_ns, "ip link add " + m_host_if + " type veth peer name " + m_ns_if,
          "ip link set " + m_ns_if + " netns " + m_ns, "ip addr add " + m_host_ip + "/24 dev " + m_host_if,
          "ip link set " + m_host_if + " up", "ip netns exec " + m_ns + " ip addr add " + m_ns_ip + "/24 dev " + m_ns_if,
          "ip netns exec " + m_ns + " ip link set " + m_ns_if + " up", "ip netns exec " + m_ns + " ip link set lo up"}) {
      ASSERT_EQ(std::system((cmd + " 2>&1").c_str()), 0) << cmd;
    }
    m_made = true;
  }
  void TearDown() override {
    if (!m_made) return;
    (void)std::system(("ip link del " + m_host_if + " 2>/dev/null").c_str());
    (void)std::system(("ip netns del " + m_ns + " 2>/dev/null").c_str());
  }
  std::string m_ns, m_host_if, m_ns_if, m_host_ip, m_ns_ip;
  bool m_made = false;
};

TEST_F(OtherNamespace, ItsClientIsServedOverTcpWhileALocalOneUsesSharedMemory) {
  Options so = auto_server("auto://" + m_host_ip + ":0");
  auto server = open(Purpose::server, so);
  const std::string url = server.local_endpoint();
  Options co;
  co.endpoint = url;
  auto local = open(Purpose::client, co);
  local.put(std::string("from here")).wait_delivered();
  const std::string peer = (fs::path(test::peer_path()).parent_path() / "ferry_comm_peer").string();
  // As in a container: another network namespace and another IPC namespace. (In this IPC
  // namespace the client would use shared memory: the rendezvous socket is a file, reachable
  // from any network namespace.)
  test::Child child({"/usr/sbin/ip", "netns", "exec", m_ns, "/usr/bin/unshare", "--ipc", peer, "client", url}, -1, true);
  ASSERT_EQ(child.read_line(), "connected");
  bool remote_seen = false;
  for (int i = 0; i < 100 && !remote_seen; ++i) {
    const auto m = server.get_for(kWait);
    ASSERT_TRUE(m.has_value());
    remote_seen = m->peer != local.id();
  }
  ASSERT_TRUE(remote_seen);
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 2u);
  for (const PeerStats& p : s.peers) {
    if (p.id == local.id()) {
      EXPECT_EQ(p.transport, "shm");
    } else {
      EXPECT_EQ(p.transport, "tcp");
      EXPECT_EQ(p.remote.rfind(m_ns_ip + ":", 0), 0u) << p.remote;
    }
  }
  child.kill(SIGKILL);
  child.wait(5s);
}

// --- bad input through the ring ---

/// Connects to an shm server, handshakes by hand and maps the client-to-server ring, to write
/// what a buggy or hostile client might.
class RawShmClient {
 public:
  /// The server hands over two rings and four wake-up sockets: [2] and [4] wake the server
  /// (its event loop, its get()), [3] and [5] are this client's to wait on.
  static constexpr int kFds = 6;
  explicit RawShmClient(const fs::path& path) : m_fd(::socket(AF_UNIX, SOCK_STREAM, 0)) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    if (::connect(m_fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) throw std::runtime_error("connect");
    framing::Hello hello;
    hello.id = PeerId::random();
    hello.max_message = 16 << 20;
    hello.max_chunk = 1 << 20;
    std::array<std::byte, framing::kHelloSize> h{};
    framing::encode_hello(hello, h);
    if (::send(m_fd, h.data(), h.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(h.size())) throw std::runtime_error("send");
    std::array<std::byte, framing::kHelloSize> reply{};
    iovec iov{reply.data(), reply.size()};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    if (::recvmsg(m_fd, &msg, MSG_CMSG_CLOEXEC) != static_cast<ssize_t>(reply.size())) throw std::runtime_error("recvmsg");
    const cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (c == nullptr || c->cmsg_len != CMSG_LEN(sizeof(int) * kFds)) throw std::runtime_error("no descriptors");
    std::memcpy(m_fds, CMSG_DATA(c), sizeof m_fds);
    m_segment.emplace(shm::Segment::open_fd(m_fds[0], shm::ByteRing::spec(0)));
  }
  ~RawShmClient() {
    m_producer.reset();
    m_segment.reset();
    for (const int fd : m_fds) ::close(fd);
    ::close(m_fd);
  }
  RawShmClient(const RawShmClient&) = delete;
  RawShmClient& operator=(const RawShmClient&) = delete;

  /// Pushes one record through the ring and wakes the server.
  void push(std::span<const std::byte> bytes) {
    if (!m_producer) {
      m_producer.emplace(*m_segment);
      m_producer->set_peer_wake_fd(m_fds[2]);
    }
    m_producer->push(bytes, 5s);
  }
  /// Overwrites the next record's header word in the segment, then publishes a position past
  /// it: the record format itself is corrupt.
  void corrupt_record() {
    auto& ctl = m_segment->control();
    std::uint64_t bad = 0xdeadbeefcafef00dULL;
    std::memcpy(m_segment->data(), &bad, sizeof bad);
    ctl.producer.write_pos.store(64, std::memory_order_seq_cst);  // sync(test): the server reads it
    const std::uint64_t one = 1;
    (void)::write(m_fds[2], &one, sizeof one);
  }
  /// A hostile peer's tricks on the descriptors it shares with the server: clears O_NONBLOCK
  /// on each, floods the server's wake-up sockets, and reads from its own.
  void meddle() {
    for (const int fd : m_fds) (void)::fcntl(fd, F_SETFL, 0);
    const std::array<std::byte, 8> b{};
    for (int i = 0; i < 100; ++i) {
      (void)::send(m_fds[2], b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
      (void)::send(m_fds[4], b.data(), b.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
    std::array<std::byte, 64> sink{};
    for (const int fd : {m_fds[2], m_fds[3], m_fds[4], m_fds[5]}) (void)::recv(fd, sink.data(), sink.size(), MSG_DONTWAIT);
  }
  /// True when the server closed the socket within 5 s.
  bool closed_by_server() const {
    timeval tv{5, 0};
    ::setsockopt(m_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char b = 0;
    return ::recv(m_fd, &b, 1, 0) == 0;
  }

 private:
  int m_fd;
  int m_fds[kFds] = {-1, -1, -1, -1, -1, -1};
  std::optional<shm::Segment> m_segment;
  std::optional<shm::ByteRing::Producer> m_producer;
};

TEST(ShmBadInput, AClientMeddlingWithItsWakeUpDescriptorsCannotStallTheServer) {
  // The descriptors a client shares with the server are not the server's to trust: a blocking
  // flag it sets or a flood of wake-ups must not make a server thread (or a get()) block.
  TempDir dir;
  const std::string name = unique_name("meddle");
  Options so = shm_options(name, dir.path());
  so.shm.spin = 0us;  // every get() sleeps on its rings' wake-ups
  so.connection.close_timeout = 500ms;  // the raw client never answers the close
  auto server = open(Purpose::server, so);
  Options co = shm_options(name, dir.path());
  co.shm.spin = 0us;
  auto good = open(Purpose::client, co);
  const fs::path path = dir.path() / (name + ".sock");
  RawShmClient raw(path);
  std::atomic<bool> stop{false};
  std::thread meddler([&] {
    while (!stop.load()) {
      raw.meddle();
      std::this_thread::sleep_for(100us);
    }
  });
  std::thread echo([&] {
    for (int i = 0; i < 300; ++i) {
      auto m = server.get_for(kWait);
      if (!m) return;
      (void)server.put(std::move(m->data), m->peer);
    }
  });
  for (int i = 0; i < 300; ++i) {
    good.put(std::string("ping"));
    const auto reply = good.get_for(kWait);
    ASSERT_TRUE(reply.has_value()) << "round trip " << i;
    EXPECT_EQ(reply->text(), "ping");
  }
  echo.join();
  // A get() that times out returns on time with the wake-ups flooded.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(server.get_for(50ms).has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, kWait);
  stop = true;
  meddler.join();
  // Wake-ups nobody asked for, queued on the descriptors a get() sleeps on: the get() reads
  // them as they wake it and sleeps again. It must not spin (a ready descriptor never read
  // kept ppoll returning at once: a whole core for the length of the get()).
  raw.meddle();
  const auto thread_cpu = [] {
    timespec ts{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
  };
  const auto cpu0 = thread_cpu();
  EXPECT_FALSE(server.get_for(300ms).has_value());
  const auto cpu = thread_cpu() - cpu0;
  EXPECT_LT(cpu, 100ms) << std::chrono::duration_cast<std::chrono::milliseconds>(cpu).count()
                        << " ms of CPU in a get() of 300 ms with nothing to read";
  server.close();
}

TEST(ShmBadInput, GarbageInTheRingDropsThatClientOnly) {
  TempDir dir;
  const std::string name = unique_name("bad");
  Options so = shm_options(name, dir.path());
  std::mutex mu;
  std::vector<std::error_code> why;
  so.on_disconnect = [&](const PeerId&, std::error_code ec) {
    const std::lock_guard lock(mu);
    why.push_back(ec);
  };
  auto server = open(Purpose::server, so);
  auto good = open(Purpose::client, shm_options(name, dir.path()));
  const fs::path path = dir.path() / (name + ".sock");
  {
    // A record that is not a frame: a header with an unknown type.
    RawShmClient raw(path);
    std::vector<std::byte> junk(32, std::byte{0x7f});
    raw.push(junk);
    EXPECT_TRUE(raw.closed_by_server());
  }
  {
    // A record header that the ring format does not allow.
    RawShmClient raw(path);
    raw.corrupt_record();
    EXPECT_TRUE(raw.closed_by_server());
  }
  good.put(std::string("still served")).wait_delivered();
  const auto m = server.get_for(kWait);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->text(), "still served");
  const std::lock_guard lock(mu);
  ASSERT_EQ(why.size(), 2u);
  for (const auto& ec : why) EXPECT_EQ(ec, make_error_code(Errc::protocol_error));
}

}  // namespace
}  // namespace ferry
