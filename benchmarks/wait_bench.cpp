// SPDX-License-Identifier: Apache-2.0
// Wait strategies on the same byte ring: ping-pong latency (spin, spin-then-sleep, sleep at
// once), streaming throughput with blocking calls, and the cost of the seq_cst publication
// (one full barrier per publication, STYLE.md §3.5). Layer: benchmarks (shm/ only).
#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "ferry/shm/ring.hpp"
#include "ferry/shm/segment.hpp"
#include "ferry/shm/wait.hpp"

namespace ferry::shm {
namespace {

constexpr std::uint64_t kCapacity = std::uint64_t{4} << 20;  // bytes
// How long a blocking call in a helper thread waits before it looks at its stop token.
constexpr auto kPollSlice = std::chrono::milliseconds(200);

// ---- set-up shared by every benchmark (as in ring_bench.cpp) -------------------------------

// FERRY_BENCH_HUGE_PAGES=off|prefer|require (default prefer: hugepages if reserved, else THP).
HugePages huge_pages_setting() {
  const char* s = std::getenv("FERRY_BENCH_HUGE_PAGES");
  const std::string_view v = s != nullptr ? s : "prefer";
  if (v == "off") return HugePages::off;
  if (v == "require") return HugePages::require;
  return HugePages::prefer;
}

Segment make_segment(const RingSpec& spec) {
  SegmentOptions options;
  options.huge_pages = huge_pages_setting();
  return Segment::create_anonymous(spec, options);
}

// The first two CPUs the process may use (benchmark thread, helper thread), read once before
// any pinning.
const std::optional<std::pair<int, int>>& cpu_pair() {
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

void pin_this_thread(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

// Pins the benchmark thread to the first CPU for one run; restores its mask after.
class PinMain {
 public:
  PinMain() {
    if (!cpu_pair()) return;
    CPU_ZERO(&m_saved);
    m_pinned = pthread_getaffinity_np(pthread_self(), sizeof(m_saved), &m_saved) == 0;
    if (m_pinned) pin_this_thread(cpu_pair()->first);
  }
  ~PinMain() {
    if (m_pinned) (void)pthread_setaffinity_np(pthread_self(), sizeof(m_saved), &m_saved);
  }
  PinMain(const PinMain&) = delete;
  PinMain& operator=(const PinMain&) = delete;

 private:
  cpu_set_t m_saved{};
  bool m_pinned = false;
};

// The helper thread (consumer or echo), pinned to the second CPU. `body(stop)` returns "" or
// an error message; done() turns true once it returned. The constructor returns once the
// thread runs; joined (after a stop request) on destruction.
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

  // Waits until the body returned (it drained the ring and saw it closed, or failed).
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

// Blocking peek that gives up when `stop` is requested; nullopt once the producer closed.
std::optional<std::span<const std::byte>> peek_until_closed(ByteRing::Consumer& consumer,
                                                            const std::stop_token& stop) {
  for (;;) {
    try {
      return consumer.peek(kPollSlice);
    } catch (const Error& e) {
      if (e.errc() == Errc::closed) return std::nullopt;
      if (e.errc() != Errc::timed_out || stop.stop_requested()) throw;
    }
  }
}

// Runs after the timed loop: joins the helper and reports the first error, if any.
void finish(benchmark::State& state, HelperThread& helper, const std::string& main_error) {
  const std::string helper_error = helper.join();
  if (!helper_error.empty())
    state.SkipWithError(("helper thread: " + helper_error).c_str());
  else if (!main_error.empty())
    state.SkipWithError(main_error.c_str());
}

void set_counts(benchmark::State& state, std::int64_t bytes_per_item) {
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * bytes_per_item);
}

// ---- 1: ping-pong round trip, 64 B, one echo thread ----------------------------------------

void BM_PingPong(benchmark::State& state, WaitOptions wait) {
  constexpr std::size_t kSize = 64;
  PinMain pin;
  auto to_echo = make_segment(ByteRing::spec(kCapacity));
  auto to_main = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Consumer echo_in(to_echo, wait);
  ByteRing::Producer echo_out(to_main, {.wait = wait});
  HelperThread echo([&](std::stop_token stop) -> std::string {
    try {
      while (const auto msg = peek_until_closed(echo_in, stop)) {
        echo_out.push(*msg);
        echo_in.release();
      }
      echo_out.close();
      return {};
    } catch (const Error& e) {
      echo_in.close();
      echo_out.close();
      return e.what();
    }
  });

  ByteRing::Producer out(to_echo, {.wait = wait});
  ByteRing::Consumer in(to_main, wait);
  const std::array<std::byte, kSize> ping{};
  std::string error;
  try {
    for (auto _ : state) {
      const auto start = std::chrono::steady_clock::now();
      out.push(ping);
      const auto pong = in.peek();
      benchmark::DoNotOptimize(pong.data());
      in.release();
      const auto stop = std::chrono::steady_clock::now();
      state.SetIterationTime(std::chrono::duration<double>(stop - start).count());
    }
  } catch (const Error& e) {
    error = e.what();
  }
  out.close();
  finish(state, echo, error);
  state.SetItemsProcessed(state.iterations());
}

constexpr WaitOptions kSpin{.mode = WaitMode::spin};
constexpr WaitOptions kBlock{.mode = WaitMode::block};  // default spin budget
constexpr WaitOptions kSleep{.mode = WaitMode::block, .spin = std::chrono::nanoseconds(0)};

BENCHMARK_CAPTURE(BM_PingPong, spin, kSpin)->UseManualTime();
BENCHMARK_CAPTURE(BM_PingPong, block, kBlock)->UseManualTime();
BENCHMARK_CAPTURE(BM_PingPong, block_spin0, kSleep)->UseManualTime();

// ---- 2 and 3: streaming with blocking calls (push / peek + release) ------------------------

void stream(benchmark::State& state, std::size_t size, WaitOptions wait, std::uint32_t batch) {
  PinMain pin;
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Consumer consumer(segment, wait);
  HelperThread reader([&consumer, size](std::stop_token stop) -> std::string {
    std::vector<std::byte> dst(size);  // the reader copies each message out, as pop() would
    try {
      while (const auto msg = peek_until_closed(consumer, stop)) {
        if (msg->size() != size) throw Error(Errc::internal, "wrong message size");
        std::memcpy(dst.data(), msg->data(), msg->size());
        benchmark::DoNotOptimize(dst.data());
        consumer.release();
      }
      return {};
    } catch (const Error& e) {
      consumer.close();  // the producer's blocking push reports closed instead of hanging
      return e.what();
    }
  });

  ByteRing::Producer producer(segment, {.wait = wait, .batch = batch});
  const std::vector<std::byte> src(size, std::byte{0x5a});
  std::string error;
  benchmark::IterationCount left = state.max_iterations;
  try {
    for (auto _ : state) {
      producer.push(src);
      if (--left == 0) {  // count what was delivered: drain inside the timed region
        producer.close();
        reader.wait_done();
      }
    }
  } catch (const Error& e) {
    error = e.what();
  }
  producer.close();
  finish(state, reader, error);
  set_counts(state, static_cast<std::int64_t>(size));
}

void BM_Stream(benchmark::State& state, WaitOptions wait) {
  stream(state, static_cast<std::size_t>(state.range(0)), wait, 1);
}

BENCHMARK_CAPTURE(BM_Stream, spin, kSpin)->Arg(64)->Arg(65536)->ArgName("size")->UseRealTime();
BENCHMARK_CAPTURE(BM_Stream, block, kBlock)->Arg(64)->Arg(65536)->ArgName("size")->UseRealTime();

// 3: the seq_cst publication (store of write_pos + load of the sleep flag) every message vs
// every 64th, 8-byte messages, default (block) waits.
void BM_PublishStream(benchmark::State& state) {
  stream(state, 8, kBlock, static_cast<std::uint32_t>(state.range(0)));
}
BENCHMARK(BM_PublishStream)->Arg(1)->Arg(64)->ArgName("batch")->UseRealTime();

// The same barrier without the second core: one thread pushes 64 messages, then pops them,
// so the difference between batch 1 and 64 is the publication alone (no cache-line
// transfers). One iteration = one push and one pop.
void BM_PublishSingleThread(benchmark::State& state) {
  constexpr std::size_t kSize = 8;
  constexpr int kBurst = 64;
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Producer producer(segment, {.batch = static_cast<std::uint32_t>(state.range(0))});
  ByteRing::Consumer consumer(segment);
  const std::array<std::byte, kSize> src{};
  std::array<std::byte, kSize> dst{};
  int pending = 0;
  for (auto _ : state) {
    if (producer.try_push(src) != Status::ok) {
      state.SkipWithError("try_push failed");
      break;
    }
    if (++pending < kBurst) continue;
    for (; pending > 0; --pending) {
      std::size_t n = 0;
      if (consumer.try_pop(dst, n) != Status::ok) break;
      benchmark::DoNotOptimize(dst.data());
    }
    if (pending != 0) {
      state.SkipWithError("try_pop found fewer messages than were pushed");
      break;
    }
  }
  set_counts(state, static_cast<std::int64_t>(kSize));
}
BENCHMARK(BM_PublishSingleThread)->Arg(1)->Arg(64)->ArgName("batch");

// Machine facts the README numbers must state (STYLE.md §3.8).
void add_context() {
  const auto& cpus = cpu_pair();
  benchmark::AddCustomContext("ferry_pinning",
                              cpus ? "benchmark thread cpu " + std::to_string(cpus->first) +
                                         ", helper thread cpu " + std::to_string(cpus->second)
                                   : std::string("none (fewer than 2 CPUs)"));
  try {
    const auto segment = make_segment(ByteRing::spec(kCapacity));
    const auto& info = segment.info();
    std::string pages = info.backing + ", page " + std::to_string(info.page_size) +
                        (info.thp_advised ? ", THP advised" : "");
    if (!info.fallback.empty()) pages += " (" + info.fallback + ")";
    benchmark::AddCustomContext("ferry_segment", pages);
  } catch (const Error& e) {
    benchmark::AddCustomContext("ferry_segment", std::string("unavailable: ") + e.what());
  }
}

}  // namespace
}  // namespace ferry::shm

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  ferry::shm::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
