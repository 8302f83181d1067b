// SPDX-License-Identifier: Apache-2.0
// What the plain baselines for the gRPC and MQTT transports share (ferry-grpc-baseline,
// ferry-paho-baseline): their --size parsing, the watchdog that ends a process that stopped
// making progress, and the round-trip statistics they print. Header-only, no Ferry code.
// Layer: benchmarks/.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::baseline {

/// p50/p99 (nearest rank), mean, min and max of round-trip times in ns; sorts `v`, not empty.
inline nlohmann::json latency_json(std::vector<std::int64_t>& v) {
  std::sort(v.begin(), v.end());
  const auto rank = [&](double q) {
    const auto i = static_cast<std::size_t>(std::max(0.0, std::ceil(q * static_cast<double>(v.size())) - 1));
    return v.at(std::min(i, v.size() - 1));
  };
  double mean = 0;
  for (const auto x : v) mean += static_cast<double>(x);
  mean /= static_cast<double>(v.size());
  return nlohmann::json{{"p50_ns", rank(0.5)}, {"p99_ns", rank(0.99)}, {"mean_ns", mean},
                        {"min_ns", v.front()}, {"max_ns", v.back()}};
}

/// "64", "64K", "2M".
inline std::size_t parse_size(const std::string& t) {
  std::size_t n = std::stoull(t);
  if (t.back() == 'K' || t.back() == 'k') n <<= 10;
  if (t.back() == 'M' || t.back() == 'm') n <<= 20;
  return n;
}

/// Ends the process (exit code 3, a line on stderr naming `program`) when moved() was not
/// called for the timeout: every wait in a baseline is otherwise unbounded.
class Watchdog {
 public:
  Watchdog(const char* program, int seconds) : m_program(program), m_limit(std::chrono::seconds(seconds)) {
    m_thread = std::thread([this] {
      std::unique_lock lock(m_mutex);
      while (!m_done) {
        if (m_cv.wait_for(lock, m_limit, [&] { return m_done || m_moved; })) {
          m_moved = false;
          continue;
        }
        std::fprintf(stderr, "%s: no progress for %lld s\n", m_program, static_cast<long long>(m_limit.count()));
        std::_Exit(3);
      }
    });
  }
  ~Watchdog() {
    {
      const std::lock_guard lock(m_mutex);
      m_done = true;
    }
    m_cv.notify_all();
    m_thread.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  void moved() {
    const std::lock_guard lock(m_mutex);
    m_moved = true;
    m_cv.notify_all();
  }

 private:
  const char* m_program;
  std::chrono::seconds m_limit;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  bool m_done = false;
  bool m_moved = false;
  std::thread m_thread;
};

}  // namespace ferry::baseline
