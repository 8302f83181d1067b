// SPDX-License-Identifier: Apache-2.0
// ferry_comm_peer: a Communicator in its own process, for tests that kill a peer.
//
//   ferry_comm_peer server URL           prints "listening <endpoint>", echoes every message
//   ferry_comm_peer client URL [--id ID] prints "connected", then puts numbered 1 KiB
//                                        messages (at most 64 undelivered) until killed
// Exits 0 on a clean end, 10 + ferry::Errc on a ferry::Error.
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>

#include <ferry/ferry.hpp>

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
