// SPDX-License-Identifier: Apache-2.0
// ferry-kv: a small key-value service on ferry::rpc, and its client. The example of the
// README and of scripts/demo.sh: the same client code reaches the service over shared memory
// on this host (shm://name, or auto://host:port, which picks shm when it can) and over TCP.
//
//   ferry-kv serve [URL] [--workers N]     listen (default auto://127.0.0.1:0; a bare name is
//                                          shm://name); prints "listening <URL>"; SIGINT or
//                                          SIGTERM stops it gracefully
//   ferry-kv put URL KEY VALUE             store VALUE under KEY
//   ferry-kv get URL KEY                   print the value (exit 4 when KEY is not there)
//   ferry-kv del URL KEY                   remove KEY (exit 4 when it was not there)
//   ferry-kv bench URL [--count N]         time `get` calls: p50, p99, calls/s
//
// Methods: put (key, NUL, value -> nothing), get (key -> value, or Errc::not_found), del
// (key -> nothing, or Errc::not_found), size (nothing -> u64). Layer: tools/.
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include <ferry/ferry.hpp>

namespace {

using Clock = std::chrono::steady_clock;

class Store {
 public:
  void add_to(ferry::rpc::Server& server) {
    server.handle<std::string, std::string>("put", [this](const std::string& request) {
      const auto nul = request.find('\0');
      if (nul == std::string::npos || nul == 0) {
        throw ferry::Error(ferry::Errc::invalid_argument, "put wants a key, a NUL and the value");
      }
      const std::unique_lock lock(m_mutex);
      m_data.insert_or_assign(request.substr(0, nul), request.substr(nul + 1));
      return std::string();
    });
    server.handle<std::string, std::string>("get", [this](const std::string& key) {
      const std::shared_lock lock(m_mutex);
      const auto it = m_data.find(key);
      if (it == m_data.end()) throw ferry::Error(ferry::Errc::not_found, "no key '" + key + "'");
      return it->second;
    });
    server.handle<std::string, std::string>("del", [this](const std::string& key) {
      const std::unique_lock lock(m_mutex);
      if (m_data.erase(key) == 0) throw ferry::Error(ferry::Errc::not_found, "no key '" + key + "'");
      return std::string();
    });
    server.handle("size", [this](std::span<const std::byte>, const ferry::rpc::CallContext&) {
      const std::shared_lock lock(m_mutex);
      return ferry::Codec<std::uint64_t>::encode(m_data.size());
    });
  }

 private:
  std::shared_mutex m_mutex;
  std::map<std::string, std::string, std::less<>> m_data;
};

int serve(const std::string& url, unsigned workers) {
  // SIGINT/SIGTERM end the service through sigwait below: blocked in every thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ferry::Options options;
  options.endpoint = url;
  ferry::rpc::Server server(options, {.workers = workers});
  Store store;
  store.add_to(server);
  server.start();
  std::cout << "listening " << server.local_endpoint() << std::endl;
  int sig = 0;
  sigwait(&set, &sig);
  server.shutdown();
  const auto s = server.stats();
  std::cerr << "ferry-kv: stopped after " << s.calls << " calls (" << s.failed << " failed)" << std::endl;
  return 0;
}

int bench(ferry::rpc::Client& client, std::uint64_t count) {
  (void)client.call<std::string>("put", std::string("bench-key") + '\0' + std::string(64, 'v'));
  for (int i = 0; i < 1000; ++i) (void)client.call<std::string>("get", std::string("bench-key"));
  std::vector<std::int64_t> ns;
  ns.reserve(count);
  const auto start = Clock::now();
  for (std::uint64_t i = 0; i < count; ++i) {
    const auto t0 = Clock::now();
    (void)client.call<std::string>("get", std::string("bench-key"));
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  std::sort(ns.begin(), ns.end());
  const auto at = [&](double q) {
    const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(ns.size())));
    return static_cast<double>(ns[std::clamp<std::size_t>(rank, 1, ns.size()) - 1]) / 1e3;
  };
  std::printf("%llu get calls of a 64 B value: p50 %.2f us, p99 %.2f us, %.0f calls/s\n",
              static_cast<unsigned long long>(count), at(0.5), at(0.99), static_cast<double>(count) / seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry-kv: a key-value service on ferry::rpc, and its client"};
  app.require_subcommand(1);
  std::string url = "auto://127.0.0.1:0";
  std::string key, value;
  unsigned workers = 2;
  std::uint64_t count = 20'000;
  unsigned spin_us = 0;
  auto* serve_cmd = app.add_subcommand("serve", "run the service");
  serve_cmd->add_option("url", url, "where to listen")->capture_default_str();
  serve_cmd->add_option("--workers", workers, "handler threads")->capture_default_str();
  auto* put_cmd = app.add_subcommand("put", "store a value");
  auto* get_cmd = app.add_subcommand("get", "print a value");
  auto* del_cmd = app.add_subcommand("del", "remove a key");
  auto* bench_cmd = app.add_subcommand("bench", "time get calls");
  for (auto* c : {put_cmd, get_cmd, del_cmd, bench_cmd}) c->add_option("url", url, "the service")->required();
  for (auto* c : {put_cmd, get_cmd, del_cmd}) c->add_option("key", key)->required();
  put_cmd->add_option("value", value)->required();
  bench_cmd->add_option("--count", count, "timed calls")->check(CLI::PositiveNumber)->capture_default_str();
  bench_cmd->add_option("--spin", spin_us, "poll this long for a reply before sleeping (us)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    if (*serve_cmd) return serve(url, workers);
    ferry::Options options;
    options.endpoint = url;
    options.receive_spin = std::chrono::microseconds(spin_us);
    ferry::rpc::Client client(options);
    if (*put_cmd) {
      (void)client.call<std::string>("put", key + '\0' + value);
    } else if (*get_cmd) {
      std::cout << client.call<std::string>("get", key) << std::endl;
    } else if (*del_cmd) {
      (void)client.call<std::string>("del", key);
    } else if (*bench_cmd) {
      return bench(client, count);
    }
    return 0;
  } catch (const ferry::rpc::RemoteError& e) {  // the service's answer: 4 for a missing key
    std::cerr << "ferry-kv: " << e.what() << std::endl;
    return e.errc() == ferry::Errc::not_found ? 4 : 1;
  } catch (const ferry::Error& e) {  // no service there, a lost connection, ...
    std::cerr << "ferry-kv: " << e.what() << std::endl;
    return 1;
  }
}
