// SPDX-License-Identifier: Apache-2.0
// Waiting: a sleeping consumer is woken by a push, an idle waiter burns ~no CPU, and a spin
// waiter still honours its deadline.
#include <gtest/gtest.h>
#include <time.h>

#include <string>
#include <thread>
#include <vector>

#include "ferry/shm/overwrite_ring.hpp"
#include "ferry/shm/ring.hpp"
#include "ferry/shm/typed_ring.hpp"

namespace ferry::shm {
namespace {

std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// These tests use a 10 s liveness slice: only a real wake-up, not the timed re-check, can end
// a wait within the 5 s deadlines below. A lost wake-up fails them.
constexpr WaitOptions kLongSlice{.mode = WaitMode::block,
                                 .spin = std::chrono::microseconds(20),
                                 .liveness_interval = std::chrono::seconds(10)};
constexpr auto kDeadline = std::chrono::seconds(5);
// A woken waiter returns within milliseconds; one that missed its wake-up returns only at
// kDeadline (where a last poll still finds the data), so the elapsed time is what is checked.
constexpr auto kWokenWithin = std::chrono::seconds(2);

// Waits until a side has announced sleep, then long enough for it to be in futex_wait (its
// own re-check would otherwise often see the data, and a lost wake-up would go unnoticed).
void wait_until_asleep(const std::atomic<std::uint32_t>& flag) {
  while (flag.load(std::memory_order_acquire) == 0) std::this_thread::yield();  // acquire: test sync only
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

TEST(Wait, SleepingConsumerIsWokenByAPush) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));
  ByteRing::Producer producer(seg, {.wait = kLongSlice});
  ByteRing::Consumer consumer(seg, kLongSlice);
  std::thread writer([&] {
    wait_until_asleep(seg.control().wait.consumer_sleeping);
    producer.push(std::as_bytes(std::span("wake")));
  });
  const auto start = Clock::now();
  const auto msg = consumer.peek(kDeadline);
  EXPECT_LT(Clock::now() - start, kWokenWithin);
  EXPECT_EQ(msg.size(), 5u);
  writer.join();
}

TEST(Wait, BatchingProducerWakesAConsumerThatAnnouncedSleep) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));
  ByteRing::Producer producer(seg, {.wait = kLongSlice, .batch = 64});
  ByteRing::Consumer consumer(seg, kLongSlice);
  std::thread writer([&] {
    wait_until_asleep(seg.control().wait.consumer_sleeping);
    ASSERT_EQ(producer.try_push(std::as_bytes(std::span("one"))), Status::ok);  // no flush()
  });
  const auto start = Clock::now();
  EXPECT_EQ(consumer.peek(kDeadline).size(), 4u);
  EXPECT_LT(Clock::now() - start, kWokenWithin);
  writer.join();
}

TEST(Wait, SleepingProducerIsWokenWhenSpaceIsReleased) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));
  ByteRing::Producer producer(seg, {.wait = kLongSlice});
  ByteRing::Consumer consumer(seg, kLongSlice);
  const std::string msg(100, 'm');
  while (producer.try_push(std::as_bytes(std::span(msg))) == Status::ok) {
  }
  std::thread reader([&] {
    wait_until_asleep(seg.control().wait.producer_sleeping);
    std::vector<std::byte> out;
    consumer.pop(out, kDeadline);  // one release: below the read batch, but the producer sleeps
  });
  const auto start = Clock::now();
  producer.push(std::as_bytes(std::span(msg)), kDeadline);
  EXPECT_LT(Clock::now() - start, kWokenWithin);
  reader.join();
}

TEST(Wait, ConsumerFlushPublishesReleasedSpace) {
  auto seg = Segment::create_anonymous(Ring<std::uint64_t>::spec(64));  // read batch: 4 slots
  Ring<std::uint64_t>::Producer producer(seg);
  Ring<std::uint64_t>::Consumer consumer(seg);
  while (producer.try_push(1) == Status::ok) {
  }
  std::uint64_t v = 0;
  for (int i = 0; i < 3; ++i) ASSERT_EQ(consumer.try_pop(v), Status::ok);
  EXPECT_EQ(producer.try_push(2), Status::would_block);  // 3 slots released, not yet published
  consumer.flush();
  EXPECT_EQ(producer.try_push(2), Status::ok);
}

TEST(Wait, OverwriteReaderIsWokenByAWrite) {
  auto seg = Segment::create_anonymous(OverwriteRing<std::uint64_t>::spec(8));
  OverwriteRing<std::uint64_t>::Writer writer(seg);
  OverwriteRing<std::uint64_t>::Reader reader(seg, kLongSlice);
  std::thread w([&] {
    wait_until_asleep(seg.control().wait.readers_sleeping);
    writer.write(42);
  });
  std::uint64_t lost = 0;
  const auto start = Clock::now();
  EXPECT_EQ(reader.read(lost, kDeadline), 42u);
  EXPECT_LT(Clock::now() - start, kWokenWithin);
  w.join();
}

TEST(Wait, AReaderThatDiedAsleepCostsOneWakeNotOnePerWrite) {
  auto seg = Segment::create_anonymous(OverwriteRing<std::uint64_t>::spec(8));
  OverwriteRing<std::uint64_t>::Writer writer(seg);
  seg.control().wait.readers_sleeping.store(1, std::memory_order_relaxed);  // relaxed: one thread
  writer.write(1);
  EXPECT_EQ(seg.control().wait.readers_sleeping.load(std::memory_order_relaxed), 0u);  // relaxed: one thread
}

TEST(Wait, IdleWaiterSleepsInsteadOfSpinning) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  const auto cpu0 = thread_cpu_time();
  const auto wall0 = Clock::now();
  EXPECT_THROW(consumer.peek(std::chrono::milliseconds(300)), Error);
  const auto cpu = thread_cpu_time() - cpu0;
  const auto wall = Clock::now() - wall0;
  // Sleeping: a few wake-ups per liveness interval. Spinning would use ~all of the wall time.
  EXPECT_LT(cpu * 10, wall) << "cpu " << cpu.count() << " ns over " << wall.count() << " ns";
}

TEST(Wait, SpinModeHonoursTheDeadline) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg, {.mode = WaitMode::spin});
  try {
    consumer.peek(std::chrono::milliseconds(30));
    FAIL() << "expected timed_out";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::timed_out);
  }
  EXPECT_EQ(seg.control().wait.consumer_sleeping.load(std::memory_order_relaxed), 0u);  // relaxed: one thread
}

}  // namespace
}  // namespace ferry::shm
