// SPDX-License-Identifier: Apache-2.0
// Wait strategies on the same byte ring: ping-pong latency (spin, spin-then-sleep, sleep at
// once), streaming throughput with blocking calls, and the cost of the seq_cst publication
// (one full barrier per publication, STYLE.md §3.5). Layer: benchmarks (shm/ only).
#include <benchmark/benchmark.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <vector>

#include "bench_support.hpp"
#include "ferry/shm/ring.hpp"
#include "ferry/shm/segment.hpp"
#include "ferry/shm/wait.hpp"

namespace ferry::shm {
namespace {

constexpr std::uint64_t kCapacity = std::uint64_t{4} << 20;  // bytes
// How long a blocking call in a helper thread waits before it looks at its stop token.
constexpr auto kPollSlice = std::chrono::milliseconds(200);

using namespace bench;  // the set-up shared with ring_bench.cpp

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
  join_and_report(state, helper, main_error, "helper thread: ", "");
}

// ---- 1: ping-pong round trip, 64 B, one echo thread ----------------------------------------

void BM_PingPong(benchmark::State& state, WaitOptions wait) {
  constexpr std::size_t kSize = 64;
  PinBenchmarkThread pin;
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
  PinBenchmarkThread pin;
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

}  // namespace
}  // namespace ferry::shm

int main(int argc, char** argv) {
  return ferry::shm::bench::run_benchmarks(argc, argv, "benchmark thread", "helper thread",
                                           ferry::shm::kCapacity);
}
