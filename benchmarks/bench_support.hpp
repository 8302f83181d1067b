// SPDX-License-Identifier: Apache-2.0
// Set-up shared by the two-thread shm benchmarks (ring_bench.cpp, wait_bench.cpp): segments,
// CPU pinning, the helper thread, error and count reporting, machine context and main().
#pragma once

#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "ferry/error.hpp"
#include "ferry/shm/ring.hpp"
#include "ferry/shm/segment.hpp"
#include "ferry/shm/wait.hpp"

namespace ferry::shm::bench {

// FERRY_BENCH_HUGE_PAGES=off|prefer|require (default prefer: hugepages if reserved, else THP).
inline HugePages huge_pages_setting() {
  const char* s = std::getenv("FERRY_BENCH_HUGE_PAGES");
  const std::string_view v = s != nullptr ? s : "prefer";
  if (v == "off") return HugePages::off;
  if (v == "require") return HugePages::require;
  return HugePages::prefer;
}

inline Segment make_segment(const RingSpec& spec) {
  SegmentOptions options;
  options.huge_pages = huge_pages_setting();
  return Segment::create_anonymous(spec, options);
}

// The first two CPUs the process may use (benchmark thread, helper thread), read once before
// any pinning.
inline const std::optional<std::pair<int, int>>& cpu_pair() {
  static const std::optional<std::pair<int, int>> pair =
      []() -> std::optional<std::pair<int, int>> {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return std::nullopt;
    int found[2] = {-1, -1};
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < 2; ++cpu)
      if (CPU_ISSET(cpu, &set)) found[n++] = cpu;
    if (n < 2) return std::nullopt;
    return std::pair{found[0], found[1]};
  }();
  return pair;
}

inline void pin_this_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

// Pins the benchmark thread (the producer) to the first CPU for one run; restores its mask
// after.
class PinBenchmarkThread {
 public:
  PinBenchmarkThread() {
    if (!cpu_pair()) return;
    CPU_ZERO(&m_saved);
    m_pinned = pthread_getaffinity_np(pthread_self(), sizeof(m_saved), &m_saved) == 0;
    if (m_pinned) pin_this_thread(cpu_pair()->first);
  }
  ~PinBenchmarkThread() {
    if (m_pinned) (void)pthread_setaffinity_np(pthread_self(), sizeof(m_saved), &m_saved);
  }
  PinBenchmarkThread(const PinBenchmarkThread&) = delete;
  PinBenchmarkThread& operator=(const PinBenchmarkThread&) = delete;

 private:
  cpu_set_t m_saved{};
  bool m_pinned = false;
};

// The helper thread (a consumer, or the echo of a ping-pong), pinned to the second CPU.
// `body(stop)` returns "" or an error message (an exception it throws counts as one); done()
// turns true once it returned. The constructor returns once the thread runs; joined (after a
// stop request) on destruction.
class HelperThread {
 public:
  template <class Body>
  explicit HelperThread(Body body)
      : m_thread([this, body = std::move(body)](std::stop_token stop) mutable {
          if (cpu_pair()) pin_this_thread(cpu_pair()->second);
          // relaxed: only tells the constructor to return; the body shares nothing with it.
          m_started.store(true, std::memory_order_relaxed);
          try {
            m_error = body(stop);
          } catch (const std::exception& e) {
            m_error = e.what();
          }
          // sync(bench.done) release: m_error is written before done reads true.
          // Partner: acquire load in wait_done().
          m_done.store(true, std::memory_order_release);
        }) {
    // Running and pinned before the caller's timed loop starts: thread start-up is not timed.
    // relaxed: see the store above.
    while (!m_started.load(std::memory_order_relaxed)) std::this_thread::yield();
  }

  // Spins until the body returned (it drained the ring and saw it closed, or failed).
  void wait_done() const noexcept {
    // sync(bench.done) acquire: pairs with the release store after the body.
    while (!m_done.load(std::memory_order_acquire)) cpu_relax();
  }

  // Joins; returns the body's error ("" if none).
  std::string join() {
    if (m_thread.joinable()) m_thread.join();
    return m_error;
  }

 private:
  std::atomic<bool> m_started{false};
  std::atomic<bool> m_done{false};
  std::string m_error;
  std::jthread m_thread;  // last: starts once the members above exist
};

// Runs after the timed loop: joins the helper and reports the first error, if any: the
// helper's, else the benchmark thread's, each after its prefix.
inline void join_and_report(benchmark::State& state, HelperThread& helper,
                            const std::string& main_error, std::string_view helper_prefix,
                            std::string_view main_prefix) {
  const std::string helper_error = helper.join();
  if (!helper_error.empty())
    state.SkipWithError((std::string(helper_prefix) + helper_error).c_str());
  else if (!main_error.empty())
    state.SkipWithError((std::string(main_prefix) + main_error).c_str());
}

inline void set_counts(benchmark::State& state, std::int64_t bytes_per_item) {
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * bytes_per_item);
}

// Machine facts the README numbers must state (STYLE.md §3.8): the CPUs of the benchmark
// thread and the helper thread (named by the two roles), and how a ring segment of
// `ring_capacity` bytes is backed.
inline void add_context(std::string_view main_role, std::string_view helper_role,
                        std::uint64_t ring_capacity) {
  const auto& cpus = cpu_pair();
  benchmark::AddCustomContext(
      "ferry_pinning",
      cpus ? std::string(main_role) + " cpu " + std::to_string(cpus->first) + ", " +
                 std::string(helper_role) + " cpu " + std::to_string(cpus->second)
           : std::string("none (fewer than 2 CPUs)"));
  try {
    const auto segment = make_segment(ByteRing::spec(ring_capacity));
    const auto& info = segment.info();
    std::string pages = info.backing + ", page " + std::to_string(info.page_size) +
                        (info.thp_advised ? ", THP advised" : "");
    if (!info.fallback.empty()) pages += " (" + info.fallback + ")";
    benchmark::AddCustomContext("ferry_segment", pages);
  } catch (const Error& e) {
    benchmark::AddCustomContext("ferry_segment", std::string("unavailable: ") + e.what());
  }
}

// The body of main(): Google Benchmark's flags, add_context(...), every registered benchmark.
inline int run_benchmarks(int argc, char** argv, std::string_view main_role,
                          std::string_view helper_role, std::uint64_t ring_capacity) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  add_context(main_role, helper_role, ring_capacity);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace ferry::shm::bench
