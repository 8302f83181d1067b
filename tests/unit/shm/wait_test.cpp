// SPDX-License-Identifier: Apache-2.0
// Waiting: a sleeping consumer is woken by a push, an idle waiter burns ~no CPU, and a spin
// waiter still honours its deadline.
#include <gtest/gtest.h>
#include <time.h>

#include <thread>

#include "ferry/shm/ring.hpp"

namespace ferry::shm {
namespace {

std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

TEST(Wait, SleepingConsumerIsWokenByAPush) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  std::thread writer([&] {
    // Wait until the consumer has announced sleep, so the wake-up path is what is tested.
    while (seg.control().wait.consumer_sleeping.load(std::memory_order_acquire) == 0)  // acquire: test sync only
      std::this_thread::yield();
    producer.push(std::as_bytes(std::span("wake")));
  });
  const auto msg = consumer.peek(std::chrono::seconds(10));
  EXPECT_EQ(msg.size(), 5u);
  writer.join();
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
