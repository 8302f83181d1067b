// SPDX-License-Identifier: Apache-2.0
// ferry-bench comm and iops: the Communicator over TCP/TLS between processes on loopback.
//   comm  streaming and round trips, run by run against the plain Asio baseline
//         (ferry-asio-baseline, next to this binary): medians and same-run ratios
//   iops  net-queue's test/iops.py: a shuffled list of messages both ways, sync or async
// Every process is this binary re-executed (hidden roles comm-server and comm-client; iops's
// server and client purposes) or the baseline; each role bounds its waits with a watchdog.
// Layer: tools/.
#include "bench_comm.hpp"
#include "bench_comm_runs.hpp"
#include "bench_process.hpp"
#include "bench_util.hpp"
#include "support/mosquitto.hpp"
#include "support/tls_certs.hpp"
#include "ferry/shm/wait.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <ferry/ferry.hpp>

extern char** environ;

namespace ferry::bench {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::nanoseconds;

// The client keeps at most this many puts, or this many bytes, outstanding while streaming:
// when either is reached it waits for the oldest handle.
constexpr std::size_t kWindowHandles = 4096;
constexpr std::size_t kWindowBytes = std::size_t{64} << 20;

// ---------------------------------------------------------------------------------------------
// Small helpers


/// Waits for a put to be ready within timeout (borrowed payloads: acknowledged).
void wait_ready(const PutHandle& h, nanoseconds timeout, Watchdog& watchdog) {
  if (!h.wait_for(timeout)) {
    throw std::runtime_error(
        "a put was not acknowledged within " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) +
        " s while " + watchdog.phase());
  }
  watchdog.kick();
}

Message get_within(Communicator& comm, nanoseconds timeout, Watchdog& watchdog) {
  std::optional<Message> m = comm.get_for(timeout);
  if (!m) {
    throw std::runtime_error(
        "no message within " +
        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) +
        " s while " + watchdog.phase());
  }
  watchdog.kick();
  return std::move(*m);
}

// ---------------------------------------------------------------------------------------------
// comm: the processes

struct CommRoleArgs {
  std::string transport = "tcp";
  std::string endpoint; // client: the server's URL
  std::string cert_dir;
  std::size_t size = 0;
  double seconds = 2;
  bool pingpong = false;
  std::uint64_t count = 0;
  std::uint64_t warmup = 0;
  unsigned workers = 1;
  unsigned receive_spin_us = 0;
  std::string payload = "borrowed";
  std::size_t ring_size = std::size_t{1} << 20;
  std::string host = "127.0.0.1";  // server: the address it listens on (tcp, tls, auto)
  int shm_spin_us = -1;            // ShmOptions::spin; -1: the default
  bool checksums = false;          // ConnectionOptions::checksums (the client asks)
  bool sleeping = false;           // server: sleep at once (no spin, no poll), whatever the above say
  std::string broker;              // mqtt, mqtts: the broker's URL (mqtt://host:port)
  int qos = 1;                     // mqtt, mqtts: MqttOptions::qos
  std::size_t mqtt_publish = 0;    // MqttOptions::publish_size (0: the default)
  std::size_t mqtt_window = 0;     // MqttOptions::window_bytes (0: the default)
  double interval_us = 0;          // client, pingpong: busy-waits this long before each round trip
  int timeout = 30;
};

// The options both roles set from their arguments.
/// Transports that need the test certificates.
bool needs_certs(const std::string& transport) { return transport == "tls" || transport == "grpcs" || transport == "mqtts"; }
bool is_mqtt(const std::string& transport) { return transport == "mqtt" || transport == "mqtts"; }

Options role_options(const CommRoleArgs& a) {
  Options o;
  o.workers = a.workers;
  o.mqtt.qos = a.qos;
  if (a.mqtt_publish > 0) o.mqtt.publish_size = a.mqtt_publish;
  if (a.mqtt_window > 0) o.mqtt.window_bytes = a.mqtt_window;
  o.receive_spin = std::chrono::microseconds(a.receive_spin_us);
  o.shm.ring_size = a.ring_size;
  if (a.shm_spin_us >= 0) o.shm.spin = std::chrono::microseconds(a.shm_spin_us);
  o.connection.checksums = a.checksums;
  if (a.sleeping) {
    o.receive_spin = std::chrono::microseconds(0);
    o.shm.spin = std::chrono::microseconds(0);
  }
  return o;
}

// Prints "listening <url>", then takes messages (streaming: counts them from the first to the
// zero-length end marker; pingpong: echoes each) and answers the end marker with one of its
// own, prints "result <json>" and closes once the answer is delivered.
int comm_server_role(const CommRoleArgs& a) {
  Watchdog watchdog("comm-server", std::chrono::seconds(a.timeout));
  const nanoseconds timeout = std::chrono::seconds(a.timeout);
  Options o = role_options(a);
  o.endpoint = a.transport == "shm" ? "shm://ferry-bench-" + std::to_string(::getpid())
               : is_mqtt(a.transport) ? a.broker + "/ferry-bench-" + std::to_string(::getpid())
                                      : a.transport + "://" + a.host + ":0";
  if (a.transport == "mqtts") {
    o.security.ca = fs::path(a.cert_dir) / "ca.pem";  // a client of the broker, as the client is
  } else if (needs_certs(a.transport)) {
    o.security.certificate = fs::path(a.cert_dir) / "server.pem";
    o.security.key = fs::path(a.cert_dir) / "server.key";
  }
  watchdog.phase("opening the server");
  Communicator server = ferry::open(Purpose::server, std::move(o));
  std::printf("listening %s\n", server.local_endpoint().c_str());
  std::fflush(stdout);

  json r{{"role", "server"}};
  PeerId peer;
  watchdog.phase("waiting for the client's messages");
  if (!a.pingpong) {
    std::uint64_t messages = 0, bytes = 0;
    Clock::time_point first{}, last{};
    for (;;) {
      Message m = get_within(server, timeout, watchdog);
      if (m.data.empty()) {
        last = Clock::now();
        peer = m.peer;
        break;
      }
      if (messages++ == 0)
        first = Clock::now(); // no clock read per message
      bytes += m.data.size();
    }
    const double secs = messages > 1 ? seconds_between(first, last) : 0.0;
    const double per_s = secs > 0 ? 1.0 / secs : 0.0;
    r["messages"] = messages;
    r["bytes"] = bytes;
    r["seconds"] = secs;
    r["msgs_per_s"] = static_cast<double>(messages) * per_s;
    r["bytes_per_s"] = static_cast<double>(bytes) * per_s;
    r["gbit_per_s"] = static_cast<double>(bytes) * 8e-9 * per_s;
  } else {
    std::uint64_t echoed = 0;
    for (;;) {
      Message m = get_within(server, timeout, watchdog);
      if (m.data.empty()) {
        peer = m.peer;
        break;
      }
      (void)server.put(std::move(m.data), m.peer); // the echo owns the received bytes: no copy
      ++echoed;
    }
    r["messages"] = echoed;
  }
  std::printf("result %s\n", r.dump().c_str());
  std::fflush(stdout);
  watchdog.phase("answering the end marker");
  const PutHandle done = server.put(Bytes{}, peer);
  if (!done.wait_delivered_for(timeout))
    throw std::runtime_error("comm-server: the end marker's answer was not delivered");
  watchdog.phase("closing");
  server.close();
  return 0;
}

// Streams --size messages for --seconds with a bounded window of outstanding puts (or does
// --warmup + --count round trips), sends the zero-length end marker, waits for the server's
// answer and every put, prints "result <json>" and closes.
int comm_client_role(const CommRoleArgs& a) {
  Watchdog watchdog("comm-client", std::chrono::seconds(a.timeout));
  const nanoseconds timeout = std::chrono::seconds(a.timeout);
  // Declared before the communicator, so borrowed bytes outlive it.
  std::vector<std::byte> buffer(a.size);
  for (std::size_t i = 0; i < buffer.size(); ++i)
    buffer[i] = static_cast<std::byte>(i * 31 + 7);
  const std::span<const std::byte> bytes(buffer);
  const bool owned = a.payload == "owned";
  const auto payload = [&]() -> Payload {
    return owned ? Payload(Bytes::copy_of(bytes)) : Payload::borrow(bytes);
  };

  Options o = role_options(a);
  o.endpoint = a.endpoint;
  if (needs_certs(a.transport)) {
    o.security.ca = fs::path(a.cert_dir) / "ca.pem";
    if (!is_mqtt(a.transport)) o.security.server_name = "localhost";
  }
  watchdog.phase("connecting");
  Communicator client = ferry::open(Purpose::client, std::move(o));

  json r{{"role", "client"}};
  // The transport the client ended up on, and how it runs.
  for (const PeerStats& p : client.stats().peers) {
    r["transport"] = p.transport;
    r["transport_detail"] = p.transport_detail;
  }
  std::deque<PutHandle> window;
  if (!a.pingpong) {
    const std::size_t max_handles =
        std::clamp<std::size_t>(kWindowBytes / a.size, 1, kWindowHandles);
    const int check_every = a.size >= (std::size_t{64} << 10) ? 1 : 16; // clock reads cost ~20 ns
    std::uint64_t sent = 0;
    watchdog.phase("streaming");
    const auto start = Clock::now();
    const auto deadline = start + seconds_to_duration(a.seconds);
    auto now = start;
    do {
      for (int i = 0; i < check_every; ++i) {
        if (window.size() >= max_handles) {
          // Full: wait until half the window is done, then drop every put done by then
          // (one wake-up per half window, not one per message, as a streaming user would).
          wait_ready(window[window.size() / 2], timeout, watchdog);
          while (!window.empty() && window.front().ready()) {
            wait_ready(window.front(), timeout, watchdog); // ready: reports a failed put
            window.pop_front();
          }
        }
        window.push_back(client.put(payload()));
      }
      sent += static_cast<std::uint64_t>(check_every);
      now = Clock::now();
    } while (now < deadline);
    const double secs = seconds_between(start, now);
    r["messages"] = sent;
    r["seconds"] = secs;
    r["window"] = max_handles;
    r["put_msgs_per_s"] = static_cast<double>(sent) / secs;
  } else {
    std::vector<std::int64_t> rtt;
    rtt.reserve(a.count);
    watchdog.phase("in round trips");
    const auto gap = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::micro>(a.interval_us));
    for (std::uint64_t i = 0; i < a.warmup + a.count; ++i) {
      if (gap.count() > 0) {  // busy: the peer goes to sleep, this side stays awake
        const auto until = Clock::now() + gap;
        while (Clock::now() < until) ferry::shm::cpu_relax();
      }
      const auto t0 = Clock::now();
      (void)client.put(payload());
      const Message reply = get_within(client, timeout, watchdog);
      const auto t1 = Clock::now();
      if (reply.data.size() != a.size) {
        throw std::runtime_error("echo of " + std::to_string(reply.data.size()) +
                                 " bytes, expected " + std::to_string(a.size));
      }
      if (i >= a.warmup)
        rtt.push_back(std::chrono::duration_cast<nanoseconds>(t1 - t0).count());
    }
    std::sort(rtt.begin(), rtt.end());
    double sum = 0;
    for (const auto v : rtt)
      sum += static_cast<double>(v);
    r["count"] = a.count;
    r["warmup"] = a.warmup;
    r["p50_ns"] = percentile(rtt, 0.50);
    r["p99_ns"] = percentile(rtt, 0.99);
    r["mean_ns"] = sum / static_cast<double>(rtt.size());
    r["min_ns"] = rtt.front();
    r["max_ns"] = rtt.back();
  }
  watchdog.phase("waiting for the server's answer to the end marker");
  window.push_back(client.put(Bytes{}));
  const Message answer = get_within(client, timeout, watchdog);
  if (!answer.data.empty())
    throw std::runtime_error("comm-client: unexpected message after the last echo");
  watchdog.phase("waiting for the last acknowledgements");
  for (const PutHandle& h : window)
    wait_ready(h, timeout, watchdog);
  std::printf("result %s\n", r.dump().c_str());
  std::fflush(stdout);
  watchdog.phase("closing");
  client.close();
  return 0;
}

// ---------------------------------------------------------------------------------------------
// comm: the driver

// How long a driver waits for a run's results: the run itself plus the processes' own
// stall timeouts (their watchdogs end them first).
Clock::time_point result_deadline(const CommArgs& a) {
  const double run = a.pingpong ? static_cast<double>(a.count + a.warmup) * (1e-3 + a.interval_us * 1e-6) : a.seconds;
  return Clock::now() + seconds_to_duration(run + 4.0 * a.timeout);
}

} // namespace

json run_ferry(const CommArgs& a, std::size_t size, const Pin& pin, const fs::path& cert_dir) {
  std::vector<std::string> common{"--transport", a.transport,
                                  "--size",      std::to_string(size),
                                  "--workers",   std::to_string(a.workers),
                                  "--receive-spin", std::to_string(a.receive_spin_us),
                                  "--ring-size", std::to_string(parse_size(a.ring_size)),
                                  "--shm-spin", std::to_string(a.shm_spin_us),
                                  "--checksums", a.checksums ? "1" : "0",
                                  "--qos",       std::to_string(a.qos),
                                  "--mqtt-publish", std::to_string(parse_size(a.mqtt_publish)),
                                  "--mqtt-window", std::to_string(parse_size(a.mqtt_window)),
                                  "--timeout",   std::to_string(a.timeout)};
  if (needs_certs(a.transport))
    common.insert(common.end(), {"--cert-dir", cert_dir.string()});
  if (is_mqtt(a.transport))
    common.insert(common.end(), {"--broker", a.broker});
  if (a.pingpong) {
    common.insert(common.end(), {"--pingpong", "--count", std::to_string(a.count), "--warmup",
                                 std::to_string(a.warmup)});
  }
  // --server-prefix: the server runs under that command (another network namespace, say).
  std::vector<std::string> server_args;
  std::istringstream prefix(a.server_prefix);
  for (std::string word; prefix >> word;)
    server_args.push_back(word);
  const std::string program = server_args.empty() ? self_exe().string() : server_args.front();
  if (!server_args.empty()) {
    server_args.erase(server_args.begin());
    server_args.push_back(self_exe().string());
  }
  server_args.insert(server_args.end(), {"comm-server", "--host", a.server_host});
  if (a.sleeping_server) server_args.push_back("--sleeping");
  server_args.insert(server_args.end(), common.begin(), common.end());
  Process server({.name = "the Ferry server process",
                  .program = program,
                  .args = server_args,
                  .cpu = pin.b,
                  .search_path = !a.server_prefix.empty()});
  const auto listening = server.read_line(Clock::now() + std::chrono::seconds(a.timeout));
  if (!listening || listening->rfind("listening ", 0) != 0) {
    throw std::runtime_error("the Ferry server process failed to start" +
                             (listening ? ": '" + *listening + "'" : std::string()));
  }
  std::vector<std::string> client_args{
      "comm-client", "--endpoint", listening->substr(10), "--seconds", std::to_string(a.seconds),
      "--payload",   a.payload, "--interval-us", std::to_string(a.interval_us)};
  client_args.insert(client_args.end(), common.begin(), common.end());
  Process client({.name = "the Ferry client process",
                  .program = self_exe(),
                  .args = client_args,
                  .cpu = pin.a});
  const auto deadline = result_deadline(a);
  const json c = read_result(client, deadline);
  const json s = read_result(server, deadline);
  expect_clean_exit(client);
  expect_clean_exit(server);
  json r;
  if (a.pingpong) {
    for (const char* k : {"p50_ns", "p99_ns", "mean_ns", "min_ns", "max_ns"})
      r[k] = c[k];
  } else {
    if (c["messages"] != s["messages"]) {
      throw std::runtime_error("the Ferry client sent " + c["messages"].dump() +
                               " messages, the server got " + s["messages"].dump());
    }
    for (const char* k : {"msgs_per_s", "bytes_per_s", "gbit_per_s", "messages", "seconds"})
      r[k] = s[k];
  }
  for (const char* k : {"transport", "transport_detail"}) {
    if (c.contains(k))
      r[k] = c[k];
  }
  return r;
}

// The raw byte ring between two processes (ferry-bench ring / ring-pingpong, this binary), at
// the Communicator's ring size: what the shm transport is measured against.
json run_ring(const CommArgs& a, std::size_t size, const Pin& pin) {
  const std::string pin_arg = pin.a < 0 ? "none" : std::to_string(pin.a) + "," + std::to_string(pin.b);
  // The Communicator's ring size, or the smallest ring that holds the message whole.
  std::size_t capacity = parse_size(a.ring_size);
  while (capacity < 2 * size) capacity *= 2;
  std::vector<std::string> args;
  if (a.pingpong) {
    args = {"ring-pingpong", "--size", std::to_string(size), "--count", std::to_string(a.count),
            "--wait", a.receive_spin_us > 0 ? "spin" : "block", "--pin", pin_arg, "--hugepages", "--json"};
  } else {
    args = {"ring", "--size", std::to_string(size), "--seconds", std::to_string(a.seconds),
            "--reps", "1", "--capacity", std::to_string(capacity), "--pin", pin_arg,
            "--hugepages", "--json"};
  }
  Process ring({.name = "the raw ring benchmark", .program = self_exe(), .args = args, .cpu = -1});
  const auto deadline = result_deadline(a);
  for (;;) {
    const auto line = ring.read_line(deadline);
    if (!line)
      throw std::runtime_error("the raw ring benchmark printed no result");
    if (!line->empty() && line->front() == '{') {
      const json j = json::parse(*line);
      expect_clean_exit(ring);
      json r{{"capacity", capacity}};
      for (const char* k : {"p50_ns", "p99_ns", "mean_ns", "msgs_per_s", "bytes_per_s", "page_size"}) {
        if (j.contains(k))
          r[k] = j[k];
      }
      if (r.contains("bytes_per_s"))
        r["gbit_per_s"] = r["bytes_per_s"].get<double>() * 8e-9;
      return r;
    }
  }
}

namespace {

// The baselines' programs, next to this binary: --impl name, program, the arguments that choose
// its variant, and the Debian package its library comes from.
struct BaselineProgram {
  const char* impl;
  const char* program;
  std::vector<std::string> args;
  const char* package;
};
const std::vector<BaselineProgram>& baseline_programs() {
  static const std::vector<BaselineProgram> programs{
      {"asio", "ferry-asio-baseline", {}, "libboost1.81-dev"},
      {"grpc", "ferry-grpc-baseline", {}, "libgrpc++-dev"},
      {"paho", "ferry-paho-baseline", {}, "libpaho-mqttpp-dev"},
      {"uds", "ferry-uds-baseline", {}, "libboost1.81-dev"},
      {"bmq", "ferry-bmq-baseline", {}, "libboost1.81-dev"},
      {"zmq-ipc", "ferry-zmq-baseline", {"--over", "ipc"}, "libzmq3-dev"},
      {"zmq-tcp", "ferry-zmq-baseline", {"--over", "tcp"}, "libzmq3-dev"},
      {"iox", "ferry-iox-baseline", {}, "libiceoryx-posh-dev"},
  };
  return programs;
}

} // namespace

bool is_baseline(const std::string& impl) {
  const auto& all = baseline_programs();
  return std::any_of(all.begin(), all.end(), [&](const BaselineProgram& p) { return impl == p.impl; });
}

std::optional<Baseline> find_baseline(const std::string& impl, std::string& why) {
  for (const BaselineProgram& p : baseline_programs()) {
    if (impl != p.impl)
      continue;
    const fs::path program = self_exe().parent_path() / p.program;
    if (::access(program.c_str(), X_OK) != 0) {
      why = program.string() + " was not built (its library, Debian's " + p.package +
            ", was missing when CMake ran: scripts/setup.sh installs it; then configure again)";
      return std::nullopt;
    }
    return Baseline{p.impl, program, p.args};
  }
  return std::nullopt;
}

/// A plain baseline as two processes (ferry-asio-baseline for tcp/tls, ferry-grpc-baseline,
/// ferry-paho-baseline, and the same-host ones of ipc_baseline.cpp), which share one command line
/// and JSON.
json run_baseline(const CommArgs& a, std::size_t size, const Pin& pin, const Baseline& baseline,
                  const fs::path& cert_dir) {
  std::vector<std::string> common{"--json", "--timeout", std::to_string(a.timeout)};
  common.insert(common.end(), baseline.args.begin(), baseline.args.end());
  if (needs_certs(a.transport))
    common.insert(common.end(), {"--tls", "--cert-dir", cert_dir.string()});
  if (a.pingpong)
    common.emplace_back("--pingpong");
  // ferry-paho-baseline: both sides connect to the broker (its port), on a topic of their own.
  std::string port = "0";
  if (is_mqtt(a.transport)) {
    const ferry::Endpoint broker = ferry::Endpoint::parse(a.broker);
    port = std::to_string(broker.port);
    common.insert(common.end(), {"--host", broker.host, "--qos", std::to_string(a.qos), "--topic",
                                 "ferry-paho-baseline-" + std::to_string(::getpid())});
  }
  std::vector<std::string> server_args{"server", "--port", port};
  server_args.insert(server_args.end(), common.begin(), common.end());
  const std::string name = baseline.program.filename().string();
  Process server({.name = "the " + name + " server", .program = baseline.program, .args = server_args, .cpu = pin.b});
  const auto listening = server.read_line(Clock::now() + std::chrono::seconds(a.timeout));
  if (!listening || listening->rfind("listening ", 0) != 0) {
    throw std::runtime_error("the " + name + " server failed to start" +
                             (listening ? ": '" + *listening + "'" : std::string()));
  }
  std::vector<std::string> client_args{"client", "--port", listening->substr(10), "--size",
                                       std::to_string(size)};
  if (a.pingpong) {
    client_args.insert(client_args.end(),
                       {"--count", std::to_string(a.count), "--warmup", std::to_string(a.warmup)});
  } else {
    client_args.insert(client_args.end(), {"--seconds", std::to_string(a.seconds), "--batch",
                                           std::to_string(a.asio_batch)});
  }
  client_args.insert(client_args.end(), common.begin(), common.end());
  Process client({.name = "the " + name + " client", .program = baseline.program, .args = client_args, .cpu = pin.a});
  const auto deadline = result_deadline(a);
  const json c = read_result(client, deadline);
  const json s = read_result(server, deadline);
  expect_clean_exit(client);
  expect_clean_exit(server);
  json r;
  if (a.pingpong) {
    for (const char* k : {"p50_ns", "p99_ns", "mean_ns", "min_ns", "max_ns"})
      r[k] = c[k];
  } else {
    for (const char* k : {"msgs_per_s", "bytes_per_s", "gbit_per_s", "messages", "seconds"})
      r[k] = s[k];
  }
  for (const char* k : {"tls_version", "tls_cipher"}) {
    if (s.contains(k))
      r[k] = s[k];
  }
  return r;
}

namespace {

// RouDi's mempools: a chunk is the payload and a 64-byte header; each size class holds a full
// subscriber queue (256) each way, or one way for the large classes (the bench streams one way
// and echoes one message at a time). About 670 MiB of /dev/shm, touched as the chunks are used.
constexpr const char* kRoudiConfig = R"([general]
version = 1

[[segment]]

[[segment.mempool]]
size = 128
count = 1024

[[segment.mempool]]
size = 1536
count = 512

[[segment.mempool]]
size = 67584
count = 512

[[segment.mempool]]
size = 2101248
count = 300
)";

// "iox-roudi" on PATH, or empty.
fs::path find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / program;
    if (::access(candidate.c_str(), X_OK) == 0)
      return candidate;
  }
  return {};
}

// A line of iceoryx's log without its colour escapes.
std::string without_escapes(const std::string& line) {
  std::string out;
  for (std::size_t i = 0; i < line.size(); ++i) {
    if (line[i] == '\x1b') {
      while (i < line.size() && line[i] != 'm')
        ++i;
      continue;
    }
    out += line[i];
  }
  return out;
}

} // namespace

Roudi::Roudi(int timeout_s) {
  const fs::path program = find_on_path("iox-roudi");
  if (program.empty())
    throw std::runtime_error("iox-roudi is not on PATH (Debian's iceoryx package: scripts/setup.sh installs it)");
  std::string dir = (fs::temp_directory_path() / "ferry-roudi-XXXXXX").string();
  if (::mkdtemp(dir.data()) == nullptr)
    throw std::runtime_error("mkdtemp " + dir + ": " + std::strerror(errno));
  m_dir = dir;
  std::ofstream(m_dir / "roudi.toml") << kRoudiConfig;
  m_process = std::make_unique<Process>(Process::Spec{.name = "iox-roudi",
                                                      .program = program,
                                                      .args = {"-c", (m_dir / "roudi.toml").string(), "-l", "warning"},
                                                      .merge_stderr = true});
  const auto deadline = Clock::now() + std::chrono::seconds(timeout_s);
  std::string last;
  for (;;) {
    const auto line = m_process->read_line(deadline);
    if (!line) {
      const int rc = m_process->wait(Clock::now() + std::chrono::seconds(10));
      m_process.reset();
      fs::remove_all(m_dir);
      throw std::runtime_error("iox-roudi did not start (exit code " + std::to_string(rc) + "): " + last);
    }
    if (line->find("RouDi is ready for clients") != std::string::npos)
      return;
    if (line->find("Error") != std::string::npos || line->find("Fatal") != std::string::npos || last.empty())
      last = without_escapes(*line);
  }
}

Roudi::~Roudi() {
  if (m_process) {
    m_process->signal(SIGTERM);
    try {
      (void)m_process->wait(Clock::now() + std::chrono::seconds(10));
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry-bench: %s\n", e.what());
    }
  }
  std::error_code ec;
  fs::remove_all(m_dir, ec);
  // What iceoryx's runtime leaves in /tmp when a baseline process dies (its socket and lock).
  for (const auto& entry : fs::directory_iterator("/tmp", ec)) {
    const std::string name = entry.path().filename().string();
    const std::string prefix = "ferry-iox-baseline-";
    if (name.rfind(prefix, 0) != 0)
      continue;
    const pid_t pid = static_cast<pid_t>(std::atoi(name.c_str() + prefix.size()));
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH)
      fs::remove(entry.path(), ec);
  }
}

namespace {

int comm_main(CommArgs a) {
  if (a.warmup == 0)
    a.warmup = std::max<std::uint64_t>(a.count / 10, 1000);
  std::vector<std::size_t> sizes;
  for (const auto& text : a.sizes) {
    const std::size_t size = parse_size(text);
    if (size == 0)
      throw CLI::ValidationError("--size", "sizes must be at least 1 byte (0 is the end marker)");
    if (size > (std::size_t{1} << 30))
      throw CLI::ValidationError("--size", "sizes are limited to 1 GiB");
    sizes.push_back(size);
  }
  const Pin pin = parse_pin(a.pin);
  std::vector<std::string> impls;
  for (const auto& impl : a.impls) {
    if (std::find(impls.begin(), impls.end(), impl) == impls.end())
      impls.push_back(impl);
  }
  // The plain baselines, next to this binary; skipped, saying why, when one was not built.
  std::map<std::string, Baseline> baselines;
  for (auto it = impls.begin(); it != impls.end();) {
    std::string why;
    if (const auto b = find_baseline(*it, why)) {
      baselines.emplace(*it, *b);
    } else if (!why.empty()) {
      std::fprintf(stderr, "ferry-bench comm: skipping %s: %s\n", it->c_str(), why.c_str());
      it = impls.erase(it);
      continue;
    }
    ++it;
  }
  std::unique_ptr<Roudi> roudi;  // iceoryx's daemon, while an iox run needs it
  if (baselines.count("iox") != 0) {
    try {
      roudi = std::make_unique<Roudi>(a.timeout);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry-bench comm: skipping iox: %s\n", e.what());
      impls.erase(std::find(impls.begin(), impls.end(), "iox"));
    }
  }
  if (impls.empty())
    throw std::runtime_error("comm: nothing left to run");
  const bool with_asio = std::find(impls.begin(), impls.end(), "asio") != impls.end();
  // mqtt, mqtts: a Mosquitto of our own unless --broker names one (its TLS listener has its own
  // certificates: the roles trust their CA).
  std::optional<ferry::testing::MosquittoBroker> own_broker;
  if (is_mqtt(a.transport) && a.broker.empty()) {
    ferry::testing::MosquittoBroker::Config bc;
    bc.tls = a.transport == "mqtts";
    bc.auth = false;
    own_broker.emplace(bc);
    a.broker = a.transport + "://127.0.0.1:" + std::to_string(bc.tls ? own_broker->tls_port() : own_broker->port());
  }
  std::optional<ferry::testing::TlsCerts> certs;
  if (needs_certs(a.transport) && !own_broker)
    certs.emplace();
  const fs::path cert_dir = own_broker && own_broker->certs() ? own_broker->certs()->dir()
                            : certs                            ? certs->dir()
                                                               : fs::path();

  if (!a.json_out) {
    if (a.pingpong) {
      std::printf("ferry-bench comm --pingpong: %s over loopback, %llu round trips timed after "
                  "%llu warm-up, pin %s "
                  "(client,server), %d run%s per size (median); Ferry: %s payloads, %u worker%s, "
                  "receive spin %u us\n",
                  a.transport.c_str(), static_cast<unsigned long long>(a.count),
                  static_cast<unsigned long long>(a.warmup), pin_text(pin).c_str(), a.reps,
                  a.reps == 1 ? "" : "s", a.payload.c_str(), a.workers, a.workers == 1 ? "" : "s",
                  a.receive_spin_us);
      std::printf("%10s %10s %10s %10s  %-6s %s\n", "size", "p50 us", "p99 us", "mean us", "impl",
                  "");
    } else {
      std::printf("ferry-bench comm: %s streaming over loopback, pin %s (client,server), %d x %.1f "
                  "s per size "
                  "(median); Ferry: %s payloads, %u worker%s, receive spin %u us%s\n",
                  a.transport.c_str(), pin_text(pin).c_str(), a.reps, a.seconds, a.payload.c_str(),
                  a.workers, a.workers == 1 ? "" : "s", a.receive_spin_us,
                  with_asio ? ("; asio: batch " + std::to_string(a.asio_batch)).c_str() : "");
      std::printf("%10s %14s %10s %10s %7s  %-6s %s\n", "size", "msgs/s", "GB/s", "Gbit/s",
                  "spread", "impl", "");
    }
    std::fflush(stdout);
  }

  for (const std::size_t size : sizes) {
    std::vector<std::vector<json>> runs(impls.size());
    for (int rep = 0; rep < a.reps; ++rep) {
      for (std::size_t i = 0; i < impls.size(); ++i) { // alternate run by run
        runs[i].push_back(impls[i] == "ferry" ? run_ferry(a, size, pin, cert_dir)
                          : impls[i] == "ring"  ? run_ring(a, size, pin)
                                                : run_baseline(a, size, pin, baselines.at(impls[i]), cert_dir));
      }
    }
    const auto med = [&](std::size_t i, const char* key) {
      std::vector<double> v;
      for (const json& r : runs[i])
        v.push_back(r[key].get<double>());
      return median(v);
    };
    const char* key = a.pingpong ? "p50_ns" : "msgs_per_s";
    // The baseline: plain Asio for tcp/tls, the raw ring (or a Unix socket, a Boost message
    // queue) for shm, plain gRPC for grpc/grpcs, plain paho for mqtt; the last one listed.
    double asio_value = 0;
    std::string baseline_name;
    for (std::size_t i = 0; i < impls.size(); ++i) {
      if (impls[i] != "ferry") {  // the last baseline listed
        asio_value = med(i, key);
        baseline_name = impls[i];
      }
    }
    for (std::size_t i = 0; i < impls.size(); ++i) {
      const bool ferry_impl = impls[i] == "ferry";
      const double ratio = ferry_impl && asio_value > 0 ? med(i, key) / asio_value : 0.0;
      if (a.json_out) {
        json j{{"bench", "comm"},
               {"mode", a.pingpong ? "pingpong" : "stream"},
               {"impl", impls[i]},
               {"transport", runs[i].front().value("transport", a.transport)},
               {"requested_transport", a.transport},
               {"size", size},
               {"reps", a.reps},
               {"pin", pin.a < 0 ? json(nullptr) : json::array({pin.a, pin.b})}};
        if (a.pingpong) {
          j["count"] = a.count;
          j["warmup"] = a.warmup;
          for (const char* k : {"p50_ns", "p99_ns", "mean_ns"})
            j[k] = med(i, k);
        } else {
          j["seconds"] = a.seconds;
          for (const char* k : {"msgs_per_s", "bytes_per_s", "gbit_per_s"})
            j[k] = med(i, k);
        }
        if (ferry_impl) {
          j["payload"] = a.payload;
          j["workers"] = a.workers;
          j["receive_spin_us"] = a.receive_spin_us;
          if (ratio > 0)
            j["ratio_to_" + baseline_name] = ratio;
          if (runs[i].front().contains("transport_detail"))
            j["transport_detail"] = runs[i].front()["transport_detail"];
        } else if (!a.pingpong && impls[i] == "asio") {
          j["batch"] = a.asio_batch;
        }
        if (runs[i].front().contains("tls_cipher")) {
          j["tls_version"] = runs[i].front()["tls_version"];
          j["tls_cipher"] = runs[i].front()["tls_cipher"];
        }
        j["runs"] = runs[i];
        std::printf("%s\n", j.dump().c_str());
      } else {
        char note[64] = "";
        if (a.pingpong) {
          if (ratio > 0)
            std::snprintf(note, sizeof note, "p50 %.2fx %s's", ratio, baseline_name.c_str());
          std::printf("%10s %10.1f %10.1f %10.1f  %-6s %s\n",
                      human_bytes(static_cast<double>(size)).c_str(), med(i, "p50_ns") / 1e3,
                      med(i, "p99_ns") / 1e3, med(i, "mean_ns") / 1e3, impls[i].c_str(), note);
        } else {
          if (ratio > 0)
            std::snprintf(note, sizeof note, "%.1f%% of %s", 100 * ratio, baseline_name.c_str());
          // (max - min) / median of the runs: how much to trust the median on a shared machine.
          double lo = runs[i].front()["msgs_per_s"].get<double>(), hi = lo;
          for (const json& r : runs[i]) {
            lo = std::min(lo, r["msgs_per_s"].get<double>());
            hi = std::max(hi, r["msgs_per_s"].get<double>());
          }
          std::printf("%10s %14.0f %10.3f %10.2f %6.0f%%  %-6s %s\n",
                      human_bytes(static_cast<double>(size)).c_str(), med(i, "msgs_per_s"),
                      med(i, "bytes_per_s") / 1e9, med(i, "gbit_per_s"),
                      100 * (hi - lo) / med(i, "msgs_per_s"), impls[i].c_str(), note);
        }
        // Which transport the client ended up on (auto://) and how it runs (shm: ring, pages).
        if (runs[i].front().contains("transport_detail") && !runs[i].front()["transport_detail"].get<std::string>().empty()) {
          std::printf("%10s client on %s (%s)\n", "", runs[i].front()["transport"].get<std::string>().c_str(),
                      runs[i].front()["transport_detail"].get<std::string>().c_str());
        }
      }
    }
    std::fflush(stdout);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// iops: net-queue's test/iops.py

struct IopsArgs {
  std::string transport;
  std::string purpose;
  std::string mode;
  int min_size = 8;
  int step_size = 2;
  double step_expo = 0.5;
  int max_size = 32;
  int reps = 1;
  int clients = 1;
  std::string host = "127.0.0.1";
  int port = 51966;
  bool port_given = false;
  bool secure = false;
  std::string cert_dir;
  unsigned workers = 1;
  int timeout = 60;
  bool json_out = false;
  bool announce = false; // hidden: a server prints "listening <url>" first (pair)
};

/// The scheme an iops run uses: --secure makes tcp tls, grpc grpcs and mqtt mqtts.
std::string iops_scheme(const IopsArgs& a) {
  if (a.transport == "grpc" || a.transport == "grpcs") return a.secure ? "grpcs" : "grpc";
  if (is_mqtt(a.transport)) return a.secure ? "mqtts" : "mqtt";
  if (a.transport == "shm" || a.transport == "auto") return a.transport;
  return a.secure ? "tls" : "tcp";
}


/// iops.py's generate(): views of one buffer of 2**max_size bytes (0, 1, ..., 255, 0, ...):
/// splits = round((2**max / 2**i) ** step_expo) messages of 2**i bytes for i in
/// range(min, max, step) when step > 0, then the whole buffer; the list times reps, shuffled
/// with a fixed seed (std::mt19937(0): both sides draw the same order).
struct MessageList {
  std::unique_ptr<std::byte[]> buffer;
  std::size_t buffer_size = 0;
  std::vector<std::size_t> sizes;
  [[nodiscard]] std::span<const std::byte> message(std::size_t i) const {
    return {buffer.get(), sizes[i]};
  }
  [[nodiscard]] std::uint64_t total() const {
    std::uint64_t t = 0;
    for (const auto s : sizes)
      t += s;
    return t;
  }
};

MessageList generate(const IopsArgs& a) {
  MessageList list;
  list.buffer_size = std::size_t{1} << a.max_size;
  list.buffer = std::make_unique_for_overwrite<std::byte[]>(list.buffer_size);
  for (std::size_t i = 0; i < list.buffer_size; ++i)
    list.buffer[i] = static_cast<std::byte>(i);
  std::vector<std::size_t> once;
  if (a.step_size > 0) {
    for (int i = a.min_size; i < a.max_size; i += a.step_size) {
      // Python's round(): to nearest, ties to even, as nearbyint in the default rounding mode.
      const double splits = std::nearbyint(std::pow(std::ldexp(1.0, a.max_size - i), a.step_expo));
      for (double j = 0; j < splits; ++j)
        once.push_back(std::size_t{1} << i);
    }
  }
  once.push_back(list.buffer_size);
  list.sizes.reserve(once.size() * static_cast<std::size_t>(a.reps));
  for (int r = 0; r < a.reps; ++r)
    list.sizes.insert(list.sizes.end(), once.begin(), once.end());
  std::mt19937 rng(0);
  std::shuffle(list.sizes.begin(), list.sizes.end(), rng);
  return list;
}

Options iops_options(const IopsArgs& a, Purpose purpose, std::size_t max_message) {
  Options o;
  const std::string host =
      a.host.find(':') != std::string::npos && a.host.front() != '[' ? "[" + a.host + "]" : a.host;
  if (a.transport == "shm") {
    o.endpoint = "shm://ferry-iops-" + std::to_string(a.port);  // the port number names the rendezvous
  } else {
    const std::string scheme = iops_scheme(a);
    // mqtt: host and port name the broker; the server and its clients meet under one prefix.
    o.endpoint = scheme + "://" + host + ":" + std::to_string(a.port) + (is_mqtt(a.transport) ? "/ferry-iops" : "");
  }
  o.workers = a.workers;
  o.connection.message_size = std::max(o.connection.message_size, max_message);
  o.connection.connect_timeout = std::chrono::seconds(a.timeout);
  if (a.secure && !a.cert_dir.empty()) {
    if (purpose == Purpose::server && !is_mqtt(a.transport)) {
      o.security.certificate = fs::path(a.cert_dir) / "server.pem";
      o.security.key = fs::path(a.cert_dir) / "server.key";
    } else {
      o.security.ca = fs::path(a.cert_dir) / "ca.pem";
    }
  }
  return o;
}

/// Puts borrowed views and keeps every handle. When a peer's send queue is full
/// (Errc::would_block: Ferry's queues are bounded, net-queue's are not) it waits for the oldest
/// pending put and retries for the peers that refused. Thread: one putting thread.
class Putter {
public:
  Putter(Communicator& comm, Watchdog& watchdog, nanoseconds timeout)
      : m_comm(comm), m_watchdog(watchdog), m_timeout(timeout) {}

  /// To the default peers (a client: its server; a server: every client).
  void put(std::span<const std::byte> bytes) {
    std::vector<PeerId> peers; // empty: the default peers
    for (;;) {
      PutHandle h = m_comm.put(Payload::borrow(bytes), peers);
      const std::vector<PeerError> errors = h.errors();
      if (errors.empty()) {
        m_handles.push_back({std::move(h), false});
        return;
      }
      std::vector<PeerId> refused;
      for (const PeerError& e : errors) {
        if (e.error != make_error_code(Errc::would_block)) {
          throw Error(Errc::system, "put to " + e.peer.to_string() + ": " + e.error.message());
        }
        refused.push_back(e.peer);
      }
      if (refused.size() < h.peers().size())
        m_handles.push_back({std::move(h), true}); // others took it
      peers = std::move(refused);
      if (!wait_next())
        throw Error(Errc::would_block, "put refused (queue full) with no put pending");
    }
  }

  /// Waits for every put (borrowed payloads: until acknowledged).
  void finish() {
    while (wait_next()) {
    }
  }

private:
  struct Entry {
    PutHandle handle;
    bool partial; // some peers refused it with would_block and got it again later
  };

  bool wait_next() {
    if (m_waited == m_handles.size())
      return false;
    const Entry& e = m_handles[m_waited++];
    try {
      wait_ready(e.handle, m_timeout, m_watchdog);
    } catch (const Error&) {
      if (!e.partial)
        throw;
      for (const PeerError& pe : e.handle.errors()) {
        if (pe.error != make_error_code(Errc::would_block))
          throw;
      }
    }
    return true;
  }

  Communicator& m_comm;
  Watchdog& m_watchdog;
  nanoseconds m_timeout;
  std::vector<Entry> m_handles;
  std::size_t m_waited = 0;
};

// Runs put_all and get_all in two threads (iops.py's async mode); rethrows the first failure.
void run_both(const std::function<void()>& put_all, const std::function<void()>& get_all) {
  std::exception_ptr put_error, get_error;
  std::thread getter([&] {
    try {
      get_all();
    } catch (...) {
      get_error = std::current_exception();
    }
  });
  try {
    put_all();
  } catch (...) {
    put_error = std::current_exception();
  }
  getter.join();
  if (put_error)
    std::rethrow_exception(put_error);
  if (get_error)
    std::rethrow_exception(get_error);
}

/// iops.py's print_stats over both directions: ops = 2 * messages, bytes = 2 * their sizes.
json iops_result(const IopsArgs& a, const char* purpose, std::uint64_t messages,
                 std::uint64_t bytes, double secs, double close_secs) {
  const std::uint64_t ops = 2 * messages;
  const std::uint64_t transfer = 2 * bytes;
  return json{{"bench", "iops"},
              {"purpose", purpose},
              {"mode", a.mode},
              {"transport", iops_scheme(a)},
              {"seconds", secs},
              {"close_seconds", close_secs},
              {"transfer_bytes", transfer},
              {"gbit_per_s", static_cast<double>(transfer) * 8e-9 / secs},
              {"ops", ops},
              {"iops", static_cast<double>(ops) / secs},
              {"peak_rss_mib", peak_rss_mib()},
              {"messages", messages},
              {"clients", a.clients},
              {"reps", a.reps},
              {"min_size", a.min_size},
              {"step_size", a.step_size},
              {"step_expo", a.step_expo},
              {"max_size", a.max_size},
              {"workers", a.workers}};
}

// iops.py's convert_size(): SI suffixes, the value rounded to 2 decimals and printed the way
// Python prints a float (17.18, 1.5, 2.0).
std::string si(double units) {
  static const char* names[] = {"", "K", "M", "G", "T", "P", "E", "Z", "Y"};
  if (units <= 0)
    return "0";
  const int i = std::clamp(static_cast<int>(std::log(units) / std::log(1000.0)), 0, 8);
  const double s = std::round(units / std::pow(1000.0, i) * 100) / 100;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", s);
  std::string text = buf;
  while (text.size() > 1 && text.back() == '0' && text[text.size() - 2] != '.')
    text.pop_back();
  return text + names[i];
}

void print_iops_human(const json& r) {
  const double secs = r["seconds"].get<double>();
  const auto ops = r["ops"].get<double>();
  const auto bytes = r["transfer_bytes"].get<double>();
  char rate[32];
  std::snprintf(rate, sizeof rate, "%5s", si(bytes * 8 / secs).c_str());
  std::printf("Time:       %.1fs\n", secs);
  std::printf("Data:       %s ~ %sB\n", si(ops).c_str(), si(bytes / ops).c_str());
  std::printf("Transfer:   %sB @ %sbps\n", si(bytes).c_str(), rate);
  std::printf("Operations: %s @ %sIOPS\n", si(ops).c_str(), si(ops / secs).c_str());
  std::printf("Peak memory: %.1f MiB\n", r["peak_rss_mib"].get<double>());
}

void emit_iops(const IopsArgs& a, const json& r) {
  if (a.json_out) {
    std::printf("%s\n", r.dump().c_str());
  } else {
    print_iops_human(r);
  }
  std::fflush(stdout);
}

int iops_server(const IopsArgs& a) {
  const MessageList list = generate(a);
  Watchdog watchdog("iops server", std::chrono::seconds(a.timeout));
  const nanoseconds timeout = std::chrono::seconds(a.timeout);
  watchdog.phase("opening the server");
  Communicator server =
      ferry::open(Purpose::server, iops_options(a, Purpose::server, list.buffer_size));
  if (a.announce) {
    std::printf("listening %s\n", server.local_endpoint().c_str());
    std::fflush(stdout);
  } else {
    std::fprintf(stderr, "ferry-bench iops: listening on %s for %d client%s\n",
                 server.local_endpoint().c_str(), a.clients, a.clients == 1 ? "" : "s");
  }
  watchdog.phase("waiting for every client's hello");
  for (int c = 0; c < a.clients; ++c)
    (void)get_within(server, timeout, watchdog);
  Putter putter(server, watchdog, timeout);
  putter.put({}); // the start signal, to every client
  const auto start = Clock::now();

  const std::uint64_t expected = list.sizes.size() * static_cast<std::uint64_t>(a.clients);
  std::uint64_t got_bytes = 0;
  const auto get_all = [&] {
    for (std::uint64_t i = 0; i < expected; ++i)
      got_bytes += get_within(server, timeout, watchdog).data.size();
  };
  const auto put_all = [&] {
    for (std::size_t i = 0; i < list.sizes.size(); ++i)
      putter.put(list.message(i));
    putter.finish();
  };
  if (a.mode == "sync") {
    watchdog.phase("getting every message");
    get_all();
    watchdog.phase("putting every message");
    put_all();
  } else {
    watchdog.phase("putting and getting");
    run_both(put_all, get_all);
  }
  const auto done = Clock::now();
  watchdog.phase("closing");
  server.close();
  const auto end = Clock::now();
  if (got_bytes != list.total() * static_cast<std::uint64_t>(a.clients)) {
    throw std::runtime_error("iops server: received " + std::to_string(got_bytes) +
                             " bytes, expected " +
                             std::to_string(list.total() * static_cast<std::uint64_t>(a.clients)) +
                             " (do both sides use the same options?)");
  }
  emit_iops(a,
            iops_result(a, "server", expected, list.total() * static_cast<std::uint64_t>(a.clients),
                        seconds_between(start, end), seconds_between(done, end)));
  return 0;
}

int iops_client(const IopsArgs& a) {
  const MessageList list = generate(a);
  Watchdog watchdog("iops client", std::chrono::seconds(a.timeout));
  const nanoseconds timeout = std::chrono::seconds(a.timeout);
  watchdog.phase("connecting");
  Communicator client =
      ferry::open(Purpose::client, iops_options(a, Purpose::client, list.buffer_size));
  Putter putter(client, watchdog, timeout);
  watchdog.phase("waiting for the server's start signal");
  putter.put({}); // hello
  (void)get_within(client, timeout, watchdog);
  const auto start = Clock::now();

  const auto get_all = [&] {
    for (std::size_t i = 0; i < list.sizes.size(); ++i) {
      const Message m = get_within(client, timeout, watchdog);
      if (m.data.size() != list.sizes[i]) {
        throw std::runtime_error("iops client: message " + std::to_string(i) + " has " +
                                 std::to_string(m.data.size()) + " bytes, expected " +
                                 std::to_string(list.sizes[i]) +
                                 " (do both sides use the same options?)");
      }
    }
  };
  const auto put_all = [&] {
    for (std::size_t i = 0; i < list.sizes.size(); ++i)
      putter.put(list.message(i));
  };
  if (a.mode == "sync") {
    watchdog.phase("putting every message");
    put_all();
    watchdog.phase("getting every message");
    get_all();
    watchdog.phase("waiting for the last acknowledgements");
    putter.finish();
  } else {
    watchdog.phase("putting and getting");
    run_both(
        [&] {
          put_all();
          putter.finish();
        },
        get_all);
  }
  const auto done = Clock::now();
  watchdog.phase("closing");
  client.close();
  const auto end = Clock::now();
  emit_iops(a, iops_result(a, "client", list.sizes.size(), list.total(),
                           seconds_between(start, end), seconds_between(done, end)));
  return 0;
}

std::vector<std::string> iops_role_args(const IopsArgs& a, const std::string& purpose, int port,
                                        const std::string& cert_dir) {
  char expo[32];
  std::snprintf(expo, sizeof expo, "%.17g", a.step_expo);
  std::vector<std::string> args{"iops",        a.transport == "tls" ? "tcp" : a.transport == "grpcs" ? "grpc" : a.transport == "mqtts" ? "mqtt" : a.transport,
                                purpose,       a.mode,
                                "--min-size",  std::to_string(a.min_size),
                                "--step-size", std::to_string(a.step_size),
                                "--step-expo", expo,
                                "--max-size",  std::to_string(a.max_size),
                                "--reps",      std::to_string(a.reps),
                                "--clients",   std::to_string(a.clients),
                                "--host",      a.host,
                                "--port",      std::to_string(port),
                                "--workers",   std::to_string(a.workers),
                                "--timeout",   std::to_string(a.timeout),
                                "--json"};
  if (a.secure)
    args.insert(args.end(), {"--secure", "--cert-dir", cert_dir});
  return args;
}

// pair: one server and --clients client processes of this binary; every side's result.
int iops_pair(const IopsArgs& a) {
  // mqtt without --port: a Mosquitto of our own (with TLS for --secure), whose memory is
  // reported after the run.
  std::optional<ferry::testing::MosquittoBroker> broker;
  if (is_mqtt(a.transport) && !a.port_given) {
    ferry::testing::MosquittoBroker::Config bc;
    bc.tls = a.secure;
    bc.auth = false;
    broker.emplace(bc);
  }
  std::optional<ferry::testing::TlsCerts> certs;
  std::string cert_dir = a.cert_dir;
  if (broker && a.secure && cert_dir.empty()) cert_dir = broker->certs()->dir().string();
  if (a.secure && cert_dir.empty()) {
    certs.emplace();
    cert_dir = certs->dir().string();
  }
  const int server_port = broker           ? (a.secure ? broker->tls_port() : broker->port())
                          : a.port_given   ? a.port
                          : a.transport == "shm" ? static_cast<int>(::getpid())
                                                 : 0;
  std::vector<std::string> server_args = iops_role_args(a, "server", server_port, cert_dir);
  server_args.emplace_back("--announce");
  Process server({.name = "the iops server process", .program = self_exe(), .args = server_args});
  // The server allocates and fills a buffer of 2**max_size bytes before it listens.
  const auto listening = server.read_line(Clock::now() + std::chrono::seconds(a.timeout) * 4);
  if (!listening || listening->rfind("listening ", 0) != 0) {
    throw std::runtime_error("the iops server process failed to start" +
                             (listening ? ": '" + *listening + "'" : std::string()));
  }
  // tcp/tls/auto: the bound port; shm: the number in the name (shm://ferry-iops-<n>).
  const int port = std::stoi(listening->substr(listening->find_last_of(a.transport == "shm" ? '-' : ':') + 1));
  std::vector<std::unique_ptr<Process>> clients;
  for (int c = 0; c < a.clients; ++c) {
    clients.push_back(std::make_unique<Process>(
        Process::Spec{.name = "iops client process " + std::to_string(c + 1),
                      .program = self_exe(),
                      .args = iops_role_args(a, "client", port, cert_dir)}));
  }
  // No deadline of our own: every side ends itself when nothing moves for --timeout seconds.
  std::vector<json> results;
  results.push_back(read_result(server, Clock::time_point::max()));
  results.back()["side"] = "server";
  for (int c = 0; c < a.clients; ++c) {
    results.push_back(read_result(*clients[static_cast<std::size_t>(c)], Clock::time_point::max()));
    results.back()["side"] = "client " + std::to_string(c + 1);
  }
  expect_clean_exit(server);
  for (auto& c : clients)
    expect_clean_exit(*c);
  const auto per_client = results.back()["messages"].get<unsigned long long>();
  if (broker) {
    // The broker's memory: its peak resident set over the run (VmHWM), and now.
    json b{{"side", "broker"}};
    std::ifstream status("/proc/" + std::to_string(broker->pid()) + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("VmHWM:", 0) == 0) b["peak_rss_kib"] = std::stoll(line.substr(6));
      if (line.rfind("VmRSS:", 0) == 0) b["rss_kib"] = std::stoll(line.substr(6));
    }
    results.push_back(b);
  }
  if (!a.json_out) {
    std::printf(
        "ferry-bench iops: %s pair %s, %d client%s, %llu messages per client and direction\n",
        iops_scheme(a).c_str(), a.mode.c_str(), a.clients, a.clients == 1 ? "" : "s",
        per_client);
  }
  for (const json& r : results) {
    if (a.json_out) {
      std::printf("%s\n", r.dump().c_str());
    } else {
      if (r["side"] == "broker") {
        std::printf("broker (Mosquitto): peak RSS %.1f MiB, now %.1f MiB\n", r.value("peak_rss_kib", 0) / 1024.0,
                    r.value("rss_kib", 0) / 1024.0);
        continue;
      }
      std::printf("%s:\n", r["side"].get<std::string>().c_str());
      print_iops_human(r);
    }
  }
  std::fflush(stdout);
  return 0;
}

int iops_main(IopsArgs a) {
  if (a.transport == "tls" || a.transport == "grpcs" || a.transport == "mqtts")
    a.secure = true;
  if (a.min_size < 0 || a.max_size < a.min_size || a.max_size > 40) {
    throw CLI::ValidationError("--max-size", "needs 0 <= --min-size <= --max-size <= 40");
  }
  if (a.step_size < 0)
    throw CLI::ValidationError("--step-size", "must be >= 0 (0: only the largest message)");
  if (a.secure && a.cert_dir.empty() && a.purpose != "pair") {
    throw CLI::ValidationError(
        "--cert-dir",
        "a secure server or client needs --cert-dir (ca.pem, server.pem, server.key)");
  }
  if (a.purpose == "pair")
    return iops_pair(a);
  if (a.purpose == "server")
    return iops_server(a);
  return iops_client(a);
}

// ---------------------------------------------------------------------------------------------
// idle: what a server with many connected, silent clients costs

struct IdleArgs {
  std::string transport = "shm";
  int clients = 50;
  double seconds = 10;
  bool json_out = false;
};

double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) * 1e-6;
}

// One process: a server and --clients clients, each having sent one message, then silent for
// --seconds; prints the CPU time the process used meanwhile (keep-alives and timers only).
int idle_main(const IdleArgs& a) {
  Options so;
  so.endpoint = a.transport == "shm" ? "shm://ferry-idle-" + std::to_string(::getpid()) : a.transport + "://127.0.0.1:0";
  Communicator server = ferry::open(Purpose::server, so);
  std::vector<Communicator> clients;
  for (int i = 0; i < a.clients; ++i) {
    Options co;
    co.endpoint = server.local_endpoint();
    clients.push_back(ferry::open(Purpose::client, co));
  }
  for (auto& c : clients)
    c.put(std::string("hello")).wait_delivered();
  for (int i = 0; i < a.clients; ++i)
    (void)server.get();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const double before = cpu_seconds();
  std::this_thread::sleep_for(seconds_to_duration(a.seconds));
  const double used = cpu_seconds() - before;
  const json r{{"bench", "idle"},
               {"transport", a.transport},
               {"clients", a.clients},
               {"seconds", a.seconds},
               {"cpu_seconds", used},
               {"cpu_percent_of_one_core", 100 * used / a.seconds},
               {"threads", 1 + a.clients}};
  if (a.json_out) {
    std::printf("%s\n", r.dump().c_str());
  } else {
    std::printf("ferry-bench idle: %s server + %d silent clients in one process (%d I/O threads), %.0f s: "
                "CPU %.1f ms (%.3f%% of one core)\n",
                a.transport.c_str(), a.clients, 1 + a.clients, a.seconds, used * 1e3, 100 * used / a.seconds);
  }
  return 0;
}

} // namespace

std::function<std::optional<int>()> add_comm_commands(CLI::App& app) {
  auto comm = std::make_shared<CommArgs>();
  auto* comm_cmd = app.add_subcommand("comm", "the Communicator over tcp/tls between two "
                                              "processes: streaming or round trips, vs plain Asio");
  comm_cmd->add_option("--transport", comm->transport, "tcp | tls | shm | auto | grpc | grpcs | mqtt | mqtts")
      ->check(CLI::IsMember({"tcp", "tls", "shm", "auto", "grpc", "grpcs", "mqtt", "mqtts"}))
      ->capture_default_str();
  comm_cmd->add_option("--broker", comm->broker,
                       "mqtt, mqtts: the broker (mqtt://host:port); default: start a Mosquitto on loopback");
  comm_cmd->add_option("--qos", comm->qos, "mqtt, mqtts: QoS of Ferry's publishes (and the paho baseline's)")
      ->check(CLI::Range(0, 1))
      ->capture_default_str();
  comm_cmd->add_option("--mqtt-publish", comm->mqtt_publish, "mqtt: MqttOptions::publish_size (0: its default)");
  comm_cmd->add_option("--mqtt-window", comm->mqtt_window, "mqtt: MqttOptions::window_bytes (0: its default)");
  comm_cmd->add_option("--size", comm->sizes, "message size(s), e.g. 64 or 64,1K,64K,2M")
      ->delimiter(',')
      ->capture_default_str();
  comm_cmd->add_option("--seconds", comm->seconds, "seconds of streaming per run")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  comm_cmd
      ->add_option("--impl", comm->impls,
                   "ferry | asio (ferry-asio-baseline, next to this binary, for tcp/tls) | ring (the raw byte "
                   "ring, for shm) | grpc (ferry-grpc-baseline, a plain gRPC stream, for grpc/grpcs) | paho "
                   "(ferry-paho-baseline, plain paho publish/subscribe, for mqtt/mqtts) | uds, bmq, "
                   "zmq-ipc, zmq-tcp, iox (a Unix socket, Boost.Interprocess message_queue, ZeroMQ, "
                   "Eclipse iceoryx with a RouDi of its own: for shm); a list runs "
                   "each, alternating run by run")
      ->delimiter(',')
      ->check(CLI::IsMember({"ferry", "asio", "ring", "grpc", "paho", "uds", "bmq", "zmq-ipc", "zmq-tcp", "iox"}))
      ->capture_default_str();
  comm_cmd->add_flag("--pingpong", comm->pingpong,
                     "round trips (the server echoes) instead of streaming");
  comm_cmd->add_option("--count", comm->count, "timed round trips (--pingpong)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  comm_cmd->add_option("--warmup", comm->warmup,
                       "untimed round trips first (default: count/10, at least 1000)");
  comm_cmd->add_option("--reps", comm->reps, "runs per size and impl; the median is reported")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  comm_cmd->add_option("--pin", comm->pin, "A,B: client process on CPU A, server on B; auto; none")
      ->capture_default_str();
  comm_cmd->add_option("--workers", comm->workers, "Ferry's I/O threads per process")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  comm_cmd
      ->add_option("--receive-spin", comm->receive_spin_us,
                   "Ferry's Options::receive_spin in microseconds (get() polls before it sleeps)")
      ->check(CLI::Range(0u, 10'000u))
      ->capture_default_str();
  comm_cmd
      ->add_option(
          "--payload", comm->payload,
          "borrowed (Payload::borrow of one buffer, zero-copy) | owned (a new Bytes copy per put)")
      ->check(CLI::IsMember({"borrowed", "owned"}))
      ->capture_default_str();
  comm_cmd
      ->add_option("--asio-batch", comm->asio_batch,
                   "messages per write of the Asio baseline client")
      ->check(CLI::Range(std::size_t{1}, std::size_t{4096}))
      ->capture_default_str();
  comm_cmd
      ->add_option("--timeout", comm->timeout,
                   "a process that makes no progress for this many seconds fails")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  comm_cmd->add_option("--ring-size", comm->ring_size, "shm: bytes of each ring (power of two)")
      ->capture_default_str();
  comm_cmd->add_option("--shm-spin", comm->shm_spin_us, "ShmOptions::spin in microseconds (0: sleep at once)")
      ->check(CLI::Range(-1, 10'000));
  comm_cmd->add_flag("--checksums", comm->checksums, "Ferry: ConnectionOptions::checksums (a CRC-32C per frame)");
  comm_cmd->add_option("--interval-us", comm->interval_us,
                       "--pingpong: the client busy-waits this long before each round trip (so a sleeping server sleeps)")
      ->check(CLI::NonNegativeNumber);
  comm_cmd->add_flag("--sleeping-server", comm->sleeping_server,
                     "the server sleeps at once (receive spin and shm spin 0); the client keeps its settings");
  comm_cmd->add_option("--server-host", comm->server_host, "address the Ferry server listens on (tcp, tls, auto)")
      ->capture_default_str();
  comm_cmd->add_option("--server-prefix", comm->server_prefix,
                       "run the Ferry server under this command, e.g. 'ip netns exec NS unshare --ipc'");
  comm_cmd->add_flag("--json", comm->json_out, "one JSON object per line (per size and impl)");

  auto role = std::make_shared<CommRoleArgs>();
  auto* server_cmd = app.add_subcommand("comm-server")->group("");
  auto* client_cmd = app.add_subcommand("comm-client")->group("");
  for (auto* cmd : {server_cmd, client_cmd}) {
    cmd->add_option("--transport", role->transport);
    cmd->add_option("--cert-dir", role->cert_dir);
    cmd->add_option("--size", role->size)->required();
    cmd->add_flag("--pingpong", role->pingpong);
    cmd->add_option("--count", role->count);
    cmd->add_option("--warmup", role->warmup);
    cmd->add_option("--workers", role->workers);
    cmd->add_option("--receive-spin", role->receive_spin_us);
    cmd->add_option("--ring-size", role->ring_size);
    cmd->add_option("--host", role->host);
    cmd->add_option("--shm-spin", role->shm_spin_us);
    cmd->add_option("--checksums", role->checksums);
    cmd->add_option("--qos", role->qos);
    cmd->add_option("--mqtt-publish", role->mqtt_publish);
    cmd->add_option("--mqtt-window", role->mqtt_window);
    cmd->add_option("--broker", role->broker);
    cmd->add_option("--timeout", role->timeout);
  }
  client_cmd->add_option("--endpoint", role->endpoint)->required();
  server_cmd->add_flag("--sleeping", role->sleeping);
  client_cmd->add_option("--interval-us", role->interval_us);
  client_cmd->add_option("--seconds", role->seconds);
  client_cmd->add_option("--payload", role->payload);

  auto iops = std::make_shared<IopsArgs>();
  auto* iops_cmd =
      app.add_subcommand("iops", "net-queue's IOPS test (test/iops.py) over the Communicator");
  iops_cmd->add_option("transport", iops->transport,
                       "tcp | tls (tls = tcp --secure) | shm | auto | grpc | grpcs (= grpc --secure) | mqtt | mqtts "
                       "(= mqtt --secure; --host and --port name the broker; pair without --port starts a Mosquitto)")
      ->required()
      ->check(CLI::IsMember({"tcp", "tls", "shm", "auto", "grpc", "grpcs", "mqtt", "mqtts"}));
  iops_cmd
      ->add_option("purpose", iops->purpose,
                   "server | client | pair (this tool starts one server and --clients clients, and "
                   "prints every side)")
      ->required()
      ->check(CLI::IsMember({"server", "client", "pair"}));
  iops_cmd
      ->add_option("mode", iops->mode,
                   "sync (put every message, then get) | async (put and get in two threads)")
      ->required()
      ->check(CLI::IsMember({"sync", "async"}));
  iops_cmd->add_option("--min-size", iops->min_size, "exponent of the smallest message size")
      ->capture_default_str();
  iops_cmd
      ->add_option("--step-size", iops->step_size,
                   "exponent step between message sizes (0: only the largest)")
      ->capture_default_str();
  iops_cmd
      ->add_option("--step-expo", iops->step_expo,
                   "exponent of the number of splits when stepping a size down")
      ->capture_default_str();
  iops_cmd
      ->add_option("--max-size", iops->max_size,
                   "exponent of the largest message (and of the buffer: 32 = 4 GiB)")
      ->capture_default_str();
  iops_cmd->add_option("--reps", iops->reps, "repetitions of the message list")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  iops_cmd->add_option("--clients", iops->clients, "clients the server expects (pair: starts)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  iops_cmd->add_option("--host", iops->host, "address to listen on / connect to")
      ->capture_default_str();
  auto* port_opt = iops_cmd->add_option("--port", iops->port, "TCP port (pair: default a free one)")
                       ->check(CLI::Range(0, 65535))
                       ->capture_default_str();
  iops_cmd->add_flag("--secure", iops->secure, "TLS (as transport tls)");
  iops_cmd
      ->add_option("--cert-dir", iops->cert_dir,
                   "TLS material: ca.pem (client), server.pem and server.key (server); pair: "
                   "generated if absent")
      ->check(CLI::ExistingDirectory);
  iops_cmd->add_option("--workers", iops->workers, "Ferry's I/O threads")
      ->check(CLI::Range(1u, 256u))
      ->capture_default_str();
  iops_cmd
      ->add_option("--timeout", iops->timeout,
                   "a side that makes no progress for this many seconds fails")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  iops_cmd->add_flag("--json", iops->json_out, "one JSON object per line (per side)");
  iops_cmd->add_flag("--announce", iops->announce)->group("");

  auto idle = std::make_shared<IdleArgs>();
  auto* idle_cmd = app.add_subcommand("idle", "CPU used by a server with many silent clients (keep-alives only)");
  idle_cmd->add_option("--transport", idle->transport, "shm | tcp | auto")
      ->check(CLI::IsMember({"shm", "tcp", "auto"}))
      ->capture_default_str();
  idle_cmd->add_option("--clients", idle->clients, "connected clients")->check(CLI::Range(1, 1000))->capture_default_str();
  idle_cmd->add_option("--seconds", idle->seconds, "quiet interval measured")->check(CLI::PositiveNumber)->capture_default_str();
  idle_cmd->add_flag("--json", idle->json_out, "one JSON object");

  return [=]() -> std::optional<int> {
    if (idle_cmd->parsed())
      return idle_main(*idle);
    if (comm_cmd->parsed())
      return comm_main(*comm);
    if (server_cmd->parsed())
      return comm_server_role(*role);
    if (client_cmd->parsed())
      return comm_client_role(*role);
    if (iops_cmd->parsed()) {
      IopsArgs a = *iops;
      a.port_given = port_opt->count() > 0;
      return iops_main(std::move(a));
    }
    return std::nullopt;
  };
}

} // namespace ferry::bench
