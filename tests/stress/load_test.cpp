// SPDX-License-Identifier: Apache-2.0
// Load and soak: many TCP clients (helper processes, ferry_comm_peer clients) streaming
// numbered messages into one server in this process, which checks each client's order and
// watches its own memory.
//   Load.AThousandTcpClientsStreamInOrder... : 4 processes x 250 clients, FERRY_LOAD_MESSAGES
//     (200) messages of 1 KiB each; every message arrives once, in order; the server's resident
//     memory grows by less than a bound set by its queue limits, not by what was streamed.
//   Load.SoakMemoryStaysFlat: FERRY_SOAK_SECONDS (unset: skipped; the README's soak mode is
//     600) of 100 clients streaming without end; the server's memory in the second half stays
//     within 10% (+16 MiB) of the first half's peak.
#include <sys/resource.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <ferry/ferry.hpp>

#include "core/sanitizers.hpp"
#include "support/numbered.hpp"
#include "support/spawn.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::string comm_peer() {
  return (std::filesystem::path(test::peer_path()).parent_path() / "ferry_comm_peer").string();
}

/// This process's resident memory (VmRSS) in MiB.
double rss_mib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  }
  return 0;
}

/// The descriptor limit raised to what the server needs (root may raise the hard limit too).
void raise_fd_limit(rlim_t want) {
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_cur >= want) return;
  lim.rlim_cur = want;
  if (lim.rlim_max < want) lim.rlim_max = want;
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0) << "cannot raise the descriptor limit to " << want;
}

std::uint64_t env_or(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtoull(v, nullptr, 10) : fallback;
}

/// Each client's next expected number; a message out of order fails the test.
class OrderCheck {
 public:
  void take(const Message& m) {
    std::uint64_t& next = m_next[m.peer];
    ASSERT_EQ(test::number_of(m), next) << "a message from a client lost, repeated or out of order";
    ++next;
    ++m_total;
  }
  [[nodiscard]] std::size_t clients() const { return m_next.size(); }
  [[nodiscard]] std::uint64_t total() const { return m_total; }

 private:
  std::unordered_map<PeerId, std::uint64_t> m_next;
  std::uint64_t m_total = 0;
};

TEST(Load, AThousandTcpClientsStreamInOrderWithBoundedServerMemory) {
  constexpr int kProcesses = 4, kPerProcess = 250, kSize = 1024;
  const std::uint64_t count = env_or("FERRY_LOAD_MESSAGES", 200);
  raise_fd_limit(4096);
  Options so;
  so.endpoint = "tcp://127.0.0.1:0";
  auto server = open(Purpose::server, so);
  const double rss_before = rss_mib();
  std::vector<std::unique_ptr<test::Child>> children;
  for (int p = 0; p < kProcesses; ++p) {
    children.push_back(std::make_unique<test::Child>(
        std::vector<std::string>{comm_peer(), "clients", server.local_endpoint(), std::to_string(kPerProcess),
                                 std::to_string(count), std::to_string(kSize)},
        -1, true));
  }
  const std::uint64_t expected = count * kProcesses * kPerProcess;
  OrderCheck order;
  double rss_peak = rss_before;
  std::size_t peers_peak = 0;
  const auto start = Clock::now();
  while (order.total() < expected) {
    auto m = server.get_for(30s);
    ASSERT_TRUE(m.has_value()) << "nothing for 30 s after " << order.total() << " of " << expected << " messages";
    order.take(*m);
    if (HasFatalFailure()) return;
    if (order.total() % 4096 == 0) {
      rss_peak = std::max(rss_peak, rss_mib());
      peers_peak = std::max(peers_peak, server.stats().peers.size());
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_EQ(order.clients(), static_cast<std::size_t>(kProcesses * kPerProcess));
  for (auto& c : children) {
    EXPECT_EQ(c->read_line(), "connected " + std::to_string(kPerProcess));
    EXPECT_EQ(c->read_line(), "done");
    EXPECT_EQ(c->wait(60s), 0);
  }
  EXPECT_FALSE(server.get_for(100ms).has_value()) << "more messages than were sent";
  rss_peak = std::max(rss_peak, rss_mib());
  const double streamed_mib = static_cast<double>(expected * kSize) / (1 << 20);
  std::printf("%d clients, %llu messages of %d B (%.0f MiB) in %.2f s (%.0f msgs/s); up to %zu sessions at once; "
              "server RSS %.1f MiB before, peak %.1f MiB (+%.1f)\n",
              kProcesses * kPerProcess, static_cast<unsigned long long>(expected), kSize, streamed_mib, seconds,
              static_cast<double>(expected) / seconds, peers_peak, rss_before, rss_peak, rss_peak - rss_before);
  // The receive queue is bounded (Options::receive_queue_bytes, 32 MiB) and so is each
  // connection's read buffer: the growth must not follow what was streamed. (ASan keeps freed
  // memory in quarantine: its resident size says nothing about ours.)
  if (!detail::kSanitized) {
    EXPECT_LT(rss_peak - rss_before, 256.0) << "server memory grew by " << rss_peak - rss_before << " MiB";
  }
}

TEST(Load, SoakMemoryStaysFlat) {
  const std::uint64_t soak_seconds = env_or("FERRY_SOAK_SECONDS", 0);
  if (soak_seconds == 0) GTEST_SKIP() << "a soak run: set FERRY_SOAK_SECONDS (scripts/test.sh soak runs 600)";
  constexpr int kProcesses = 2, kPerProcess = 50, kSize = 1024;
  raise_fd_limit(4096);
  Options so;
  so.endpoint = "tcp://127.0.0.1:0";
  auto server = open(Purpose::server, so);
  std::vector<std::unique_ptr<test::Child>> children;
  for (int p = 0; p < kProcesses; ++p) {
    children.push_back(std::make_unique<test::Child>(
        std::vector<std::string>{comm_peer(), "clients", server.local_endpoint(), std::to_string(kPerProcess), "0",
                                 std::to_string(kSize)},
        -1, true));
  }
  OrderCheck order;
  const auto start = Clock::now();
  const auto end = start + std::chrono::seconds(soak_seconds);
  auto next_sample = start + 10s;
  std::vector<double> samples;
  while (Clock::now() < end) {
    auto m = server.get_for(30s);
    ASSERT_TRUE(m.has_value()) << "nothing for 30 s after " << order.total() << " messages";
    order.take(*m);
    if (HasFatalFailure()) return;
    if (Clock::now() >= next_sample) {
      samples.push_back(rss_mib());
      std::printf("%4.0f s: %llu messages, server RSS %.1f MiB\n",
                  std::chrono::duration<double>(Clock::now() - start).count(),
                  static_cast<unsigned long long>(order.total()), samples.back());
      std::fflush(stdout);
      next_sample += 10s;
    }
  }
  for (auto& c : children) c->kill(SIGTERM);
  for (auto& c : children) EXPECT_NE(c->wait(60s), -1);
  ASSERT_GE(samples.size(), 4u);
  const auto half = samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2);
  const double first = *std::max_element(samples.begin(), half);
  const double second = *std::max_element(half, samples.end());
  std::printf("soak: %llu messages from %zu clients in %llu s; RSS peak %.1f MiB in the first half, %.1f in the second\n",
              static_cast<unsigned long long>(order.total()), order.clients(),
              static_cast<unsigned long long>(soak_seconds), first, second);
  EXPECT_LE(second, first * 1.10 + 16.0) << "server memory kept growing";
}

}  // namespace
}  // namespace ferry
