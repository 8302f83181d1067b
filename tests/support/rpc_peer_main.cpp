// SPDX-License-Identifier: Apache-2.0
// ferry_rpc_peer: an rpc service or client in its own process, for tests that kill one.
//
//   ferry_rpc_peer server URL   serves "echo" (bytes back) and "sleep" (a u32 of milliseconds,
//                               answered "slept"); prints "listening <endpoint>"; runs until
//                               killed, or SIGTERM (a graceful shutdown, exit 0)
//   ferry_rpc_peer client URL   connects, prints "calling", calls "sleep" for 60 s (the test
//                               kills it mid-call)
// Exits 0 on a clean end, 10 + ferry::Errc on a ferry::Error.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include <ferry/rpc.hpp>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: ferry_rpc_peer server|client URL\n");
    return 2;
  }
  const std::string mode = argv[1];
  ferry::Options options;
  options.endpoint = argv[2];
  options.shm.huge_pages = false;  // the pool belongs to the hugepage tests
  try {
    if (mode == "server") {
      sigset_t set;  // SIGTERM: taken by sigwait below, so blocked in every thread
      sigemptyset(&set);
      sigaddset(&set, SIGTERM);
      pthread_sigmask(SIG_BLOCK, &set, nullptr);
      ferry::rpc::Server server(options);
      server.handle("echo", [](std::span<const std::byte> in, const ferry::rpc::CallContext&) {
        return ferry::Bytes::copy_of(in);
      });
      server.handle<std::uint32_t, std::string>("sleep", [](const std::uint32_t& ms) {
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        return std::string("slept");
      });
      server.start();
      std::printf("listening %s\n", server.local_endpoint().c_str());
      std::fflush(stdout);
      int sig = 0;
      sigwait(&set, &sig);
      server.shutdown();
      return 0;
    }
    if (mode == "client") {
      ferry::rpc::Client client(options);
      std::printf("calling\n");
      std::fflush(stdout);
      (void)client.call<std::string>("sleep", std::uint32_t{60'000}, std::chrono::seconds(120));
      return 0;
    }
  } catch (const ferry::Error& e) {
    std::fprintf(stderr, "ferry_rpc_peer: %s\n", e.what());
    return 10 + static_cast<int>(e.errc());
  }
  return 2;
}
