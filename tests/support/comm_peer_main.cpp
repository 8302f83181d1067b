// SPDX-License-Identifier: Apache-2.0
// ferry_comm_peer: a Communicator in its own process, for tests that kill a peer.
//
//   ferry_comm_peer server URL           prints "listening <endpoint>", echoes every message
//   ferry_comm_peer client URL [--id ID] prints "connected", then puts numbered 1 KiB
//                                        messages (at most 64 undelivered) until killed
//   ferry_comm_peer clients URL N COUNT SIZE
//                                        N clients, each putting COUNT numbered messages of
//                                        SIZE bytes (0: until SIGTERM) from a thread of its
//                                        own, at most 32 undelivered each; prints "connected N"
//                                        once all are, "done" when every put was delivered
// Exits 0 on a clean end, 10 + ferry::Errc on a ferry::Error.
#include <sys/resource.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include <ferry/ferry.hpp>

namespace {

std::atomic<bool> g_stop{false};

// One client's stream: message i carries i in its first 8 bytes.
void stream(ferry::Communicator& client, std::uint64_t count, std::size_t size) {
  std::deque<ferry::PutHandle> window;
  for (std::uint64_t i = 0; count == 0 ? !g_stop.load(std::memory_order_relaxed) : i < count; ++i) {
    ferry::Bytes b(std::max(size, sizeof i));
    std::memset(b.data(), static_cast<int>(i & 0xff), b.size());
    std::memcpy(b.data(), &i, sizeof i);
    window.push_back(client.put(std::move(b)));
    if (window.size() >= 32) {
      window.front().wait_delivered();
      window.pop_front();
    }
  }
  for (auto& h : window) h.wait_delivered();
}

int clients_main(const ferry::Options& options, int n, std::uint64_t count, std::size_t size) {
  // A descriptor or two per client and its threads': raise the soft limit to the hard one.
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
  std::signal(SIGTERM, [](int) { g_stop.store(true, std::memory_order_relaxed); });  // relaxed: a flag the loops poll
  std::vector<ferry::Communicator> clients;
  clients.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    ferry::Options o = options;
    o.id = ferry::PeerId::random();  // an id of its own: the same id would resume one session
    clients.push_back(ferry::open(ferry::Purpose::client, o));
  }
  std::printf("connected %d\n", n);
  std::fflush(stdout);
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (auto& c : clients) {
    threads.emplace_back([&c, &failed, count, size] {
      try {
        stream(c, count, size);
      } catch (const ferry::Error& e) {
        std::fprintf(stderr, "ferry_comm_peer: %s\n", e.what());
        failed.store(10 + static_cast<int>(e.errc()), std::memory_order_relaxed);  // relaxed: read after join
      }
    });
  }
  for (auto& t : threads) t.join();
  if (failed.load(std::memory_order_relaxed) != 0) return failed.load(std::memory_order_relaxed);  // relaxed: after join
  std::printf("done\n");
  std::fflush(stdout);
  for (auto& c : clients) c.close();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ferry_comm_peer server|client URL [--id ID]\n");
    return 2;
  }
  const std::string mode = argv[1];
  ferry::Options options;
  options.endpoint = argv[2];
  options.shm.huge_pages = false;  // the pool belongs to the hugepage tests
  if (argc >= 5 && std::string(argv[3]) == "--id") options.id = ferry::PeerId::parse(argv[4]);
  try {
    if (mode == "clients") {
      if (argc != 6) {
        std::fprintf(stderr, "usage: ferry_comm_peer clients URL N COUNT SIZE\n");
        return 2;
      }
      return clients_main(options, std::atoi(argv[3]), std::strtoull(argv[4], nullptr, 10),
                          std::strtoull(argv[5], nullptr, 10));
    }
    if (mode == "server") {
      auto server = ferry::open(ferry::Purpose::server, options);
      std::printf("listening %s\n", server.local_endpoint().c_str());
      std::fflush(stdout);
      for (;;) {
        ferry::Message m = server.get();
        (void)server.put(std::move(m.data), m.peer);
      }
    }
    if (mode == "client") {
      auto client = ferry::open(ferry::Purpose::client, options);
      std::printf("connected\n");
      std::fflush(stdout);
      std::deque<ferry::PutHandle> window;
      for (std::uint64_t i = 0;; ++i) {
        ferry::Bytes b(1024);
        std::memcpy(b.data(), &i, sizeof i);
        window.push_back(client.put(std::move(b)));
        if (window.size() >= 64) {
          window.front().wait_delivered();
          window.pop_front();
        }
      }
    }
  } catch (const ferry::Error& e) {
    std::fprintf(stderr, "ferry_comm_peer: %s\n", e.what());
    return 10 + static_cast<int>(e.errc());
  }
  return 2;
}
