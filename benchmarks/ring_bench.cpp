// SPDX-License-Identifier: Apache-2.0
// Throughput of the byte ring and the typed ring between two threads of one process (copy and
// zero-copy paths, publication batch), and the cost of polling an empty / reserving on a full
// ring. Layer: benchmarks (shm/ only). One iteration = one message.
#include <benchmark/benchmark.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
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
#include "ferry/shm/typed_ring.hpp"
#include "ferry/shm/wait.hpp"

namespace ferry::shm {
namespace {

constexpr std::uint64_t kCapacity = std::uint64_t{4} << 20;  // bytes (byte ring)
constexpr std::int64_t kMiB = std::int64_t{1} << 20;

// ---- set-up shared by every benchmark ------------------------------------------------------

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

// The first two CPUs the process may use (producer, consumer), read once before any pinning.
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

// Pins the benchmark (producer) thread to the first CPU for one run; restores its mask after.
class PinProducer {
 public:
  PinProducer() {
    if (!cpu_pair()) return;
    CPU_ZERO(&m_saved);
    m_pinned = pthread_getaffinity_np(pthread_self(), sizeof(m_saved), &m_saved) == 0;
    if (m_pinned) pin_this_thread(cpu_pair()->first);
  }
  ~PinProducer() {
    if (m_pinned) (void)pthread_setaffinity_np(pthread_self(), sizeof(m_saved), &m_saved);
  }
  PinProducer(const PinProducer&) = delete;
  PinProducer& operator=(const PinProducer&) = delete;

 private:
  cpu_set_t m_saved{};
  bool m_pinned = false;
};

// The consumer thread, pinned to the second CPU. `body(stop)` returns "" or an error message;
// done() turns true once it returned. The constructor returns once the thread runs; joined
// (after a stop request) on destruction.
class ConsumerThread {
 public:
  template <class Body>
  explicit ConsumerThread(Body body)
      : m_thread([this, body = std::move(body)](std::stop_token stop) mutable {
          if (cpu_pair()) pin_this_thread(cpu_pair()->second);
          // relaxed: only tells the constructor to return; the body shares nothing with it.
          m_started.store(true, std::memory_order_relaxed);
          m_error = body(stop);
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

// Ends a run: closes the producer, waits until the consumer drained the ring (inside the
// timed region when called from the last iteration), so what is counted was delivered.
template <class Producer>
void close_and_drain(Producer& producer, ConsumerThread& consumer) {
  producer.close();
  consumer.wait_done();
}

// Runs after the timed loop: joins the consumer and reports its error, if any.
void finish(benchmark::State& state, ConsumerThread& consumer, const std::string& producer_error) {
  const std::string consumer_error = consumer.join();
  if (!consumer_error.empty())
    state.SkipWithError(("consumer: " + consumer_error).c_str());
  else if (!producer_error.empty())
    state.SkipWithError(("producer: " + producer_error).c_str());
}

std::string status_error(const char* what, Status s) {
  return std::string(what) + ": " + to_string(s);
}

void set_counts(benchmark::State& state, std::int64_t bytes_per_item) {
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * bytes_per_item);
}

// ---- 1 and 3: copy in (try_push), copy out (try_pop) ---------------------------------------

void copy_push_pop(benchmark::State& state, std::size_t size, std::uint32_t batch) {
  PinProducer pin;
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Consumer consumer(segment, {.mode = WaitMode::spin});
  ConsumerThread reader([&consumer, size](std::stop_token stop) -> std::string {
    std::vector<std::byte> dst(size);
    for (;;) {
      std::size_t n = 0;
      const Status s = consumer.try_pop(dst, n);
      if (s == Status::ok) {
        benchmark::DoNotOptimize(dst.data());
        if (n != size) {
          consumer.close();
          return "wrong message size " + std::to_string(n);
        }
        continue;
      }
      if (s == Status::would_block && !stop.stop_requested()) {
        cpu_relax();
        continue;
      }
      if (s == Status::closed || s == Status::would_block) return {};
      consumer.close();  // the producer's next full ring reports closed instead of hanging
      return status_error("try_pop", s);
    }
  });

  ByteRing::Producer producer(segment, {.wait = {.mode = WaitMode::spin}, .batch = batch});
  const std::vector<std::byte> src(size, std::byte{0x5a});
  std::string error;
  benchmark::IterationCount left = state.max_iterations;
  for (auto _ : state) {
    Status s;
    while ((s = producer.try_push(src)) == Status::would_block) cpu_relax();
    if (s != Status::ok) {
      error = status_error("try_push", s);
      state.SkipWithError(error.c_str());
      break;
    }
    if (--left == 0) close_and_drain(producer, reader);
  }
  producer.close();
  finish(state, reader, error);
  set_counts(state, static_cast<std::int64_t>(size));
}

void BM_CopyPushPop(benchmark::State& state) {
  copy_push_pop(state, static_cast<std::size_t>(state.range(0)), 1);
}

void BM_CopyPublication(benchmark::State& state) {
  copy_push_pop(state, static_cast<std::size_t>(state.range(0)),
                static_cast<std::uint32_t>(state.range(1)));
}

// ---- 2: zero-copy: reserve + 8-byte sequence number + commit; peek + read + release --------

void BM_ZeroCopy(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  PinProducer pin;
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Consumer consumer(segment, {.mode = WaitMode::spin});
  ConsumerThread reader([&consumer](std::stop_token stop) -> std::string {
    std::uint64_t expect = 0;
    for (;;) {
      std::span<const std::byte> msg;
      const Status s = consumer.try_peek(msg);
      if (s == Status::ok) {
        std::uint64_t seq = 0;
        std::memcpy(&seq, msg.data(), sizeof(seq));
        consumer.release();
        if (seq != expect) {
          consumer.close();
          return "sequence " + std::to_string(seq) + ", expected " + std::to_string(expect);
        }
        ++expect;
        continue;
      }
      if (s == Status::would_block && !stop.stop_requested()) {
        cpu_relax();
        continue;
      }
      if (s == Status::closed || s == Status::would_block) return {};
      consumer.close();
      return status_error("try_peek", s);
    }
  });

  ByteRing::Producer producer(segment, {.wait = {.mode = WaitMode::spin}});
  std::string error;
  std::uint64_t seq = 0;
  benchmark::IterationCount left = state.max_iterations;
  for (auto _ : state) {
    std::span<std::byte> out;
    Status s;
    while ((s = producer.try_reserve(size, out)) == Status::would_block) cpu_relax();
    if (s != Status::ok) {
      error = status_error("try_reserve", s);
      state.SkipWithError(error.c_str());
      break;
    }
    std::memcpy(out.data(), &seq, sizeof(seq));
    producer.commit(size);
    ++seq;
    if (--left == 0) close_and_drain(producer, reader);
  }
  producer.close();
  finish(state, reader, error);
  set_counts(state, static_cast<std::int64_t>(size));
}

// ---- 4: single-thread costs: try_peek on an empty ring, try_reserve on a full one ----------

void BM_EmptyPoll(benchmark::State& state) {
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Producer producer(segment);  // attached, silent
  ByteRing::Consumer consumer(segment, {.mode = WaitMode::spin});
  for (auto _ : state) {
    std::span<const std::byte> msg;
    const Status s = consumer.try_peek(msg);
    benchmark::DoNotOptimize(s);
    if (s != Status::would_block) {
      state.SkipWithError(status_error("try_peek on an empty ring", s).c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

void BM_FullReserve(benchmark::State& state) {
  constexpr std::size_t kSize = 64;
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Producer producer(segment);
  ByteRing::Consumer consumer(segment, {.mode = WaitMode::spin});  // attached, never reads
  const std::vector<std::byte> src(kSize, std::byte{0x5a});
  Status s;
  while ((s = producer.try_push(src)) == Status::ok) {
  }
  if (s != Status::would_block) {
    state.SkipWithError(status_error("filling the ring", s).c_str());
    return;
  }
  for (auto _ : state) {
    std::span<std::byte> out;
    s = producer.try_reserve(kSize, out);
    benchmark::DoNotOptimize(s);
    if (s != Status::would_block) {
      state.SkipWithError(status_error("try_reserve on a full ring", s).c_str());
      break;
    }
  }
  state.SetItemsProcessed(state.iterations());
}

// ---- 5: Ring<std::uint64_t> ----------------------------------------------------------------

void BM_TypedPushPop(benchmark::State& state) {
  using TypedRing = Ring<std::uint64_t>;
  const auto batch = static_cast<std::uint32_t>(state.range(0));
  PinProducer pin;
  auto segment = make_segment(TypedRing::spec(kCapacity / TypedRing::kSlotSize));
  TypedRing::Consumer consumer(segment, {.mode = WaitMode::spin});
  ConsumerThread reader([&consumer](std::stop_token stop) -> std::string {
    std::uint64_t expect = 0;
    for (;;) {
      std::uint64_t value = 0;
      const Status s = consumer.try_pop(value);
      if (s == Status::ok) {
        if (value != expect) {
          consumer.close();
          return "value " + std::to_string(value) + ", expected " + std::to_string(expect);
        }
        ++expect;
        continue;
      }
      if (s == Status::would_block && !stop.stop_requested()) {
        cpu_relax();
        continue;
      }
      if (s == Status::closed || s == Status::would_block) return {};
      consumer.close();
      return status_error("try_pop", s);
    }
  });

  TypedRing::Producer producer(segment, {.wait = {.mode = WaitMode::spin}, .batch = batch});
  std::string error;
  std::uint64_t value = 0;
  benchmark::IterationCount left = state.max_iterations;
  for (auto _ : state) {
    Status s;
    while ((s = producer.try_push(value)) == Status::would_block) cpu_relax();
    if (s != Status::ok) {
      error = status_error("try_push", s);
      state.SkipWithError(error.c_str());
      break;
    }
    ++value;
    if (--left == 0) close_and_drain(producer, reader);
  }
  producer.close();
  finish(state, reader, error);
  set_counts(state, static_cast<std::int64_t>(sizeof(std::uint64_t)));
}

void message_sizes(benchmark::internal::Benchmark* b) {
  for (const std::int64_t size : {std::int64_t{8}, std::int64_t{64}, std::int64_t{1264},
                                  std::int64_t{4096}, std::int64_t{65536}, 2 * kMiB})
    b->Arg(size);
  b->ArgName("size");
}

BENCHMARK(BM_CopyPushPop)->Apply(message_sizes)->UseRealTime();
BENCHMARK(BM_ZeroCopy)->Apply(message_sizes)->UseRealTime();
BENCHMARK(BM_CopyPublication)
    ->ArgsProduct({{8, 64, 1264}, {1, 64}})
    ->ArgNames({"size", "batch"})
    ->UseRealTime();
BENCHMARK(BM_EmptyPoll);
BENCHMARK(BM_FullReserve);
BENCHMARK(BM_TypedPushPop)->Arg(1)->Arg(64)->ArgName("batch")->UseRealTime();

// Machine facts the README numbers must state (STYLE.md §3.8).
void add_context() {
  const auto& cpus = cpu_pair();
  benchmark::AddCustomContext(
      "ferry_pinning", cpus ? "producer cpu " + std::to_string(cpus->first) + ", consumer cpu " +
                                  std::to_string(cpus->second)
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
