// SPDX-License-Identifier: Apache-2.0
// Throughput of the byte ring and the typed ring between two threads of one process (copy and
// zero-copy paths, publication batch), and the cost of polling an empty / reserving on a full
// ring. Layer: benchmarks (shm/ only). One iteration = one message.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <stop_token>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "ferry/shm/ring.hpp"
#include "ferry/shm/segment.hpp"
#include "ferry/shm/typed_ring.hpp"
#include "ferry/shm/wait.hpp"

namespace ferry::shm {
namespace {

constexpr std::uint64_t kCapacity = std::uint64_t{4} << 20;  // bytes (byte ring)
constexpr std::int64_t kMiB = std::int64_t{1} << 20;

using namespace bench;  // the set-up shared with wait_bench.cpp

// Ends a run: closes the producer, waits until the consumer drained the ring (inside the
// timed region when called from the last iteration), so what is counted was delivered.
template <class Producer>
void close_and_drain(Producer& producer, HelperThread& consumer) {
  producer.close();
  consumer.wait_done();
}

// Runs after the timed loop: joins the consumer and reports its error, if any.
void finish(benchmark::State& state, HelperThread& consumer, const std::string& producer_error) {
  join_and_report(state, consumer, producer_error, "consumer: ", "producer: ");
}

std::string status_error(const char* what, Status s) {
  return std::string(what) + ": " + to_string(s);
}

// ---- 1 and 3: copy in (try_push), copy out (try_pop) ---------------------------------------

void copy_push_pop(benchmark::State& state, std::size_t size, std::uint32_t batch) {
  PinBenchmarkThread pin;
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Consumer consumer(segment, {.mode = WaitMode::spin});
  HelperThread reader([&consumer, size](std::stop_token stop) -> std::string {
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
  PinBenchmarkThread pin;
  auto segment = make_segment(ByteRing::spec(kCapacity));
  ByteRing::Consumer consumer(segment, {.mode = WaitMode::spin});
  HelperThread reader([&consumer](std::stop_token stop) -> std::string {
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
  PinBenchmarkThread pin;
  auto segment = make_segment(TypedRing::spec(kCapacity / TypedRing::kSlotSize));
  TypedRing::Consumer consumer(segment, {.mode = WaitMode::spin});
  HelperThread reader([&consumer](std::stop_token stop) -> std::string {
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

}  // namespace
}  // namespace ferry::shm

int main(int argc, char** argv) {
  return ferry::shm::bench::run_benchmarks(argc, argv, "producer", "consumer",
                                           ferry::shm::kCapacity);
}
