// SPDX-License-Identifier: Apache-2.0
// One run of one system between two processes, as ferry-bench comm makes it (tools/bench_comm.cpp),
// for the drivers that share it: comm itself and compare (tools/bench_compare.cpp). Each run
// starts its processes, checks that every message arrived (counted on both sides) and returns
// the rates (streaming: msgs_per_s, bytes_per_s, gbit_per_s) or the round-trip times
// (ping-pong: p50_ns, p99_ns, mean_ns) as JSON. Layer: tools/.
#pragma once

#include "bench_process.hpp"

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace ferry::bench {

struct CommArgs {
  std::string transport = "tcp";
  std::vector<std::string> sizes{"64"};
  double seconds = 2;
  std::vector<std::string> impls{"ferry"};
  bool pingpong = false;
  std::uint64_t count = 20'000;
  std::uint64_t warmup = 0; // 0: count / 10, at least 1000
  int reps = 3;
  std::string pin = "auto";
  unsigned workers = 1;
  unsigned receive_spin_us = 0;
  std::string payload = "borrowed";
  std::string ring_size = "1M";
  std::string server_host = "127.0.0.1";
  std::string server_prefix;  // a command the server process runs under (ip netns exec ...)
  int shm_spin_us = -1;
  bool checksums = false;  // Ferry: ConnectionOptions::checksums
  bool sleeping_server = false;
  double interval_us = 0;
  std::size_t asio_batch = 1;
  std::string broker;  // mqtt, mqtts: the broker's URL; empty: this tool starts a Mosquitto
  int qos = 1;
  std::string mqtt_publish = "0";
  std::string mqtt_window = "0";
  int timeout = 30;
  bool json_out = false;
};

/// Ferry's Communicator (this binary's comm-server and comm-client roles) over a.transport.
nlohmann::json run_ferry(const CommArgs& a, std::size_t size, const Pin& pin, const std::filesystem::path& cert_dir);

/// The raw byte ring between two processes (this binary's ring and ring-pingpong), at the
/// Communicator's ring size.
nlohmann::json run_ring(const CommArgs& a, std::size_t size, const Pin& pin);

/// A plain baseline program next to this binary and the arguments that choose its variant.
struct Baseline {
  std::string impl;  // as --impl names it: asio, grpc, paho, uds, bmq, zmq-ipc, zmq-tcp, iox
  std::filesystem::path program;
  std::vector<std::string> args;  // for both roles, e.g. --over ipc
};

/// The baseline --impl names, or nullopt when impl is not one (ferry, ring). `why` is set when
/// it is one whose program was not built (its library was missing when CMake ran).
std::optional<Baseline> find_baseline(const std::string& impl, std::string& why);
[[nodiscard]] bool is_baseline(const std::string& impl);

/// A baseline's server and client, the client on pin.a.
nlohmann::json run_baseline(const CommArgs& a, std::size_t size, const Pin& pin, const Baseline& baseline,
                            const std::filesystem::path& cert_dir);

/// Eclipse iceoryx's RouDi daemon for the iox baseline: started from PATH with mempools for
/// messages up to 2 MiB each way (a config file of its own), stopped with SIGTERM by pid.
/// Throws when iox-roudi is missing or does not start (another RouDi runs, say), with why.
class Roudi {
 public:
  explicit Roudi(int timeout_s);
  ~Roudi();
  Roudi(const Roudi&) = delete;
  Roudi& operator=(const Roudi&) = delete;

 private:
  std::filesystem::path m_dir;
  std::unique_ptr<Process> m_process;
};

} // namespace ferry::bench
