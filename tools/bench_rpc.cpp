// SPDX-License-Identifier: Apache-2.0
// ferry-bench rpc: ferry::rpc calls between two processes on this host, and plain gRPC unary
// calls (ferry-grpc-baseline --unary, next to this binary) run by run beside them.
//
//   ferry-bench rpc --transport shm|tcp|grpc|auto [--size 64] [--pipeline N] [--clients N]
//                   [--impl ferry,grpc] [--spin US] [--sleeping-server] [--json]
//
// The service (hidden role rpc-server) answers "echo" with a copy of the request; the callers
// (hidden role rpc-client) are N threads with one rpc::Client (one connection) each, keeping
// P calls outstanding. A call's latency runs from its start to the moment its caller has the
// reply. Layer: tools/.
#include "bench_comm.hpp"
#include "bench_process.hpp"
#include "bench_util.hpp"

#include <barrier>
#include <csignal>
#include <deque>
#include <iostream>

#include <ferry/ferry.hpp>

namespace ferry::bench {
namespace {

struct RpcArgs {
  std::string transport = "shm";
  std::vector<std::string> impls{"ferry"};
  std::string size = "64";
  unsigned pipeline = 1;
  unsigned clients = 1;
  std::uint64_t count = 20'000;  // timed calls, in total
  std::uint64_t warmup = 2'000;  // per client
  int reps = 3;
  std::string pin = "auto";
  unsigned spin_us = 50;
  bool sleeping_server = false;
  double interval_us = 0;
  unsigned workers = 1;
  int timeout = 30;
  bool json_out = false;
  std::string endpoint;  // roles: the server's URL
};

const std::vector<std::string> kTransports{"shm", "tcp", "grpc", "auto"};

Options rpc_options(const RpcArgs& a, bool server) {
  Options o;
  const bool sleeps = server && a.sleeping_server;
  o.shm.spin = std::chrono::microseconds(sleeps ? 0 : a.spin_us);
  o.receive_spin = std::chrono::microseconds(sleeps ? 0 : a.spin_us);
  o.shm.huge_pages = true;
  return o;
}

/// The role's stall guard: the process ends itself (exit 3) when nothing moves for timeout s.
int rpc_server_role(const RpcArgs& a) {
  // SIGTERM ends the service: taken by sigwait below, so blocked in every thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  Options o = rpc_options(a, true);
  if (a.transport == "shm") {
    o.endpoint = "shm://ferry-bench-rpc-" + std::to_string(::getpid());
  } else {
    o.endpoint = a.transport + "://127.0.0.1:0";
  }
  rpc::Server server(o, {.workers = a.workers});
  server.handle("echo", [](std::span<const std::byte> in, const rpc::CallContext&) { return Bytes::copy_of(in); });
  server.start();
  std::cout << "listening " << server.local_endpoint() << std::endl;
  int sig = 0;
  sigwait(&set, &sig);
  const rpc::ServerStats s = server.stats();
  server.shutdown(std::chrono::seconds(a.timeout));
  std::cout << "result " << json{{"calls", s.calls}, {"failed", s.failed}}.dump() << std::endl;
  return 0;
}

int rpc_client_role(const RpcArgs& a) {
  const std::size_t size = parse_size(a.size);
  Watchdog dog("rpc-client", std::chrono::seconds(a.timeout));
  Options o = rpc_options(a, false);
  o.endpoint = a.endpoint;
  std::vector<std::unique_ptr<rpc::Client>> clients;
  for (unsigned i = 0; i < a.clients; ++i) {
    o.id = PeerId::random();  // one session each
    clients.push_back(std::make_unique<rpc::Client>(o));
  }
  const std::vector<std::byte> request(size, std::byte{0x5a});
  const std::uint64_t per_client = std::max<std::uint64_t>(1, a.count / a.clients);
  std::vector<std::vector<std::int64_t>> latencies(a.clients);
  std::barrier start(static_cast<std::ptrdiff_t>(a.clients) + 1);
  std::atomic<bool> failed{false};
  std::string error;
  std::mutex error_mutex;
  const auto timeout = std::chrono::seconds(a.timeout);
  const auto interval = std::chrono::duration<double, std::micro>(a.interval_us);
  const auto run = [&](unsigned c) {
    rpc::Client& client = *clients[c];
    std::vector<std::int64_t>& lat = latencies[c];
    lat.reserve(per_client);
    try {
      const auto calls = [&](std::uint64_t n, bool timed) {
        struct Pending {
          rpc::Call call;
          Clock::time_point started;
        };
        std::deque<Pending> window;
        std::uint64_t started = 0;
        while (started < n || !window.empty()) {
          while (started < n && window.size() < a.pipeline) {
            if (a.interval_us > 0) {
              const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(interval);
              while (Clock::now() < until) {
              }
            }
            const auto t0 = Clock::now();
            window.push_back({client.async_call("echo", request, timeout), t0});
            ++started;
          }
          Bytes reply = window.front().call.get();
          const auto t1 = Clock::now();
          if (reply.size() != size) throw std::runtime_error("an echo of " + std::to_string(reply.size()) + " bytes");
          if (timed) lat.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - window.front().started).count());
          window.pop_front();
          dog.kick();
        }
      };
      calls(a.warmup, false);
      start.arrive_and_wait();
      calls(per_client, true);
    } catch (const std::exception& e) {
      const std::lock_guard lock(error_mutex);
      error = e.what();
      // relaxed: read after the threads are joined.
      failed.store(true, std::memory_order_relaxed);
      start.arrive_and_drop();
    }
  };
  std::vector<std::thread> threads;
  for (unsigned c = 0; c < a.clients; ++c) threads.emplace_back(run, c);
  dog.phase("warming up");
  start.arrive_and_wait();
  dog.phase("timing calls");
  const auto t0 = Clock::now();
  for (auto& t : threads) t.join();
  const double seconds = seconds_between(t0, Clock::now());
  // relaxed: the threads were joined.
  if (failed.load(std::memory_order_relaxed)) throw std::runtime_error("a call failed: " + error);
  std::vector<std::int64_t> all;
  for (const auto& v : latencies) all.insert(all.end(), v.begin(), v.end());
  if (const char* dump = std::getenv("FERRY_RPC_DUMP")) {  // each latency in call order, for a look at the tail
    std::FILE* f = std::fopen(dump, "w");
    if (f != nullptr) {
      for (const auto v : all) std::fprintf(f, "%lld\n", static_cast<long long>(v));
      std::fclose(f);
    }
  }
  std::sort(all.begin(), all.end());
  double mean = 0;
  for (const auto v : all) mean += static_cast<double>(v);
  mean /= static_cast<double>(all.size());
  json r{{"p50_ns", percentile(all, 0.50)}, {"p90_ns", percentile(all, 0.90)}, {"p99_ns", percentile(all, 0.99)},
         {"p999_ns", percentile(all, 0.999)}, {"mean_ns", mean},
         {"min_ns", all.front()},         {"max_ns", all.back()},             {"calls", all.size()},
         {"seconds", seconds},            {"calls_per_s", static_cast<double>(all.size()) / seconds}};
  dog.phase("closing");
  clients.clear();
  std::cout << "result " << r.dump() << std::endl;
  return 0;
}

json run_ferry_rpc(const RpcArgs& a, const Pin& pin) {
  const std::vector<std::string> common{"--transport", a.transport,  "--spin", std::to_string(a.spin_us),
                                        "--timeout",   std::to_string(a.timeout)};
  std::vector<std::string> server_args{"rpc-server", "--workers", std::to_string(a.workers)};
  if (a.sleeping_server) server_args.push_back("--sleeping-server");
  server_args.insert(server_args.end(), common.begin(), common.end());
  Process server({.name = "the rpc server process", .program = self_exe(), .args = server_args, .cpu = pin.b});
  const auto listening = server.read_line(Clock::now() + std::chrono::seconds(a.timeout));
  if (!listening || listening->rfind("listening ", 0) != 0) {
    throw std::runtime_error("the rpc server process failed to start" +
                             (listening ? ": '" + *listening + "'" : std::string()));
  }
  std::vector<std::string> client_args{"rpc-client", "--endpoint", listening->substr(10), "--size", a.size,
                                       "--pipeline", std::to_string(a.pipeline), "--clients",
                                       std::to_string(a.clients), "--count", std::to_string(a.count),
                                       "--warmup", std::to_string(a.warmup), "--interval-us",
                                       std::to_string(a.interval_us)};
  client_args.insert(client_args.end(), common.begin(), common.end());
  Process client({.name = "the rpc client process", .program = self_exe(), .args = client_args, .cpu = pin.a});
  const auto deadline = Clock::now() + std::chrono::seconds(4 * a.timeout);
  json r = read_result(client, deadline);
  expect_clean_exit(client);
  server.signal(SIGTERM);
  const json s = read_result(server, deadline);
  expect_clean_exit(server);
  r["server_calls"] = s["calls"];
  return r;
}

json run_grpc_unary(const RpcArgs& a, const Pin& pin) {
  const fs::path program = self_exe().parent_path() / "ferry-grpc-baseline";
  Process server({.name = "the gRPC unary server",
                  .program = program,
                  .args = {"server", "--port", "0", "--unary", "--json", "--timeout", std::to_string(a.timeout)},
                  .cpu = pin.b});
  const auto listening = server.read_line(Clock::now() + std::chrono::seconds(a.timeout));
  if (!listening || listening->rfind("listening ", 0) != 0) throw std::runtime_error("the gRPC unary server failed to start");
  Process client({.name = "the gRPC unary client",
                  .program = program,
                  .args = {"client", "--port", listening->substr(10), "--unary", "--json", "--size",
                           std::to_string(parse_size(a.size)), "--clients", std::to_string(a.clients),
                           "--pipeline", std::to_string(a.pipeline), "--count", std::to_string(a.count),
                           "--warmup", std::to_string(a.warmup), "--timeout", std::to_string(a.timeout)},
                  .cpu = pin.a});
  const auto deadline = Clock::now() + std::chrono::seconds(4 * a.timeout);
  json r = read_result(client, deadline);
  expect_clean_exit(client);
  server.signal(SIGTERM);
  (void)read_result(server, deadline);
  expect_clean_exit(server);
  return r;
}

int rpc_main(const RpcArgs& a) {
  const Pin pin = parse_pin(a.pin);
  for (const auto& impl : a.impls) {
    if (impl != "ferry" && impl != "grpc") throw CLI::ValidationError("--impl", "ferry or grpc, not '" + impl + "'");
  }
  std::map<std::string, std::vector<json>> runs;
  const bool progress = !a.json_out && ::isatty(STDERR_FILENO) == 1;
  for (int rep = 0; rep < a.reps; ++rep) {  // the implementations alternate run by run
    for (const auto& impl : a.impls) {
      if (progress) std::fprintf(stderr, "\rrpc %s %s: run %d of %d ", impl.c_str(), a.transport.c_str(), rep + 1, a.reps);
      runs[impl].push_back(impl == "ferry" ? run_ferry_rpc(a, pin) : run_grpc_unary(a, pin));
    }
  }
  if (progress) std::fprintf(stderr, "\r%40s\r", "");
  if (!a.json_out) {
    std::printf(
        "ferry-bench rpc: %s, %s requests, %u client(s) x pipeline %u, %llu timed calls after %llu warm-up per "
        "client, pin %s, spin %u us%s, %u worker(s); median of %d runs\n",
        a.transport.c_str(), human_bytes(static_cast<double>(parse_size(a.size))).c_str(), a.clients, a.pipeline,
        static_cast<unsigned long long>(a.count), static_cast<unsigned long long>(a.warmup), pin_text(pin).c_str(),
        a.spin_us, a.sleeping_server ? " (the server sleeps)" : "", a.workers, a.reps);
    std::printf("%8s %10s %10s %12s\n", "impl", "p50 us", "p99 us", "calls/s");
  }
  std::map<std::string, json> med;
  for (const auto& impl : a.impls) {
    const auto& v = runs[impl];
    const auto pick = [&](const char* k) {
      std::vector<double> xs;
      for (const auto& r : v) xs.push_back(r[k].get<double>());
      return median(xs);
    };
    json m{{"impl", impl},
           {"transport", impl == "ferry" ? a.transport : "grpc-unary"},
           {"size", parse_size(a.size)},
           {"clients", a.clients},
           {"pipeline", a.pipeline},
           {"p50_ns", pick("p50_ns")},
           {"p90_ns", v.front().contains("p90_ns") ? pick("p90_ns") : 0.0},
           {"p99_ns", pick("p99_ns")},
           {"p999_ns", v.front().contains("p999_ns") ? pick("p999_ns") : 0.0},
           {"calls_per_s", pick("calls_per_s")},
           {"runs", v.size()}};
    med[impl] = m;
  }
  if (med.count("ferry") && med.count("grpc")) {
    med["ferry"]["p50_vs_grpc"] = med["grpc"]["p50_ns"].get<double>() / med["ferry"]["p50_ns"].get<double>();
  }
  for (const auto& impl : a.impls) {
    const json& m = med[impl];
    if (a.json_out) {
      std::cout << m.dump() << std::endl;
    } else {
      std::printf("%8s %10.2f %10.2f %12.0f", impl.c_str(), m["p50_ns"].get<double>() / 1e3,
                  m["p99_ns"].get<double>() / 1e3, m["calls_per_s"].get<double>());
      if (m.contains("p50_vs_grpc")) std::printf("  speed-up over gRPC unary (p50): %.1fx", m["p50_vs_grpc"].get<double>());
      std::printf("\n");
    }
  }
  return 0;
}

}  // namespace

std::function<std::optional<int>()> add_rpc_commands(CLI::App& app) {
  auto a = std::make_shared<RpcArgs>();
  auto* cmd = app.add_subcommand("rpc", "ferry::rpc calls between two processes (and plain gRPC unary calls)");
  auto* server = app.add_subcommand("rpc-server")->group("");
  auto* client = app.add_subcommand("rpc-client")->group("");
  for (auto* c : {cmd, server, client}) {
    c->add_option("--transport", a->transport, "shm, tcp, grpc or auto")
        ->check(CLI::IsMember(kTransports))
        ->capture_default_str();
    c->add_option("--spin", a->spin_us, "both sides poll this long before they sleep (us)")->capture_default_str();
    c->add_option("--timeout", a->timeout, "a process that sees nothing happen for this long ends (s)")
        ->capture_default_str();
  }
  for (auto* c : {cmd, client}) {
    c->add_option("--size", a->size, "request (and reply) bytes; suffix K or M allowed")->capture_default_str();
    c->add_option("--pipeline", a->pipeline, "calls outstanding per client")
        ->check(CLI::Range(1U, 4096U))
        ->capture_default_str();
    c->add_option("--clients", a->clients, "client threads, one connection each")
        ->check(CLI::Range(1U, 256U))
        ->capture_default_str();
    c->add_option("--count", a->count, "timed calls in total")->capture_default_str();
    c->add_option("--warmup", a->warmup, "untimed calls per client first")->capture_default_str();
    c->add_option("--interval-us", a->interval_us, "a pause before each call (lets a sleeping server fall asleep)");
  }
  for (auto* c : {cmd, server}) {
    c->add_option("--workers", a->workers, "the service's worker threads")->capture_default_str();
    c->add_flag("--sleeping-server", a->sleeping_server, "the service sleeps at once instead of polling");
  }
  cmd->add_option("--impl", a->impls, "ferry, grpc (plain gRPC unary, ferry-grpc-baseline)")->delimiter(',');
  cmd->add_option("--reps", a->reps, "runs per implementation (the median is reported)")->capture_default_str();
  cmd->add_option("--pin", a->pin, "CPUs of the client and the server: A,B, auto or none")->capture_default_str();
  cmd->add_flag("--json", a->json_out, "one JSON object per implementation");
  client->add_option("--endpoint", a->endpoint)->required();
  return [a, cmd, server, client]() -> std::optional<int> {
    if (*cmd) return rpc_main(*a);
    if (*server) return rpc_server_role(*a);
    if (*client) return rpc_client_role(*a);
    return std::nullopt;
  };
}

}  // namespace ferry::bench
