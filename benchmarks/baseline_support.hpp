// SPDX-License-Identifier: Apache-2.0
// What the plain baselines for the gRPC and MQTT transports share (ferry-grpc-baseline,
// ferry-paho-baseline): their --size parsing and the watchdog that ends a process that stopped
// making progress. Header-only, no Ferry code. Layer: benchmarks/.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

namespace ferry::baseline {

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
