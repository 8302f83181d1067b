// SPDX-License-Identifier: Apache-2.0
// Two threads, one ring: sequence-numbered variable-size messages (hitting wrap and padding),
// checked for order and content. FERRY_STRESS_ITERS scales the count (short in CI).
#include <gtest/gtest.h>

#include <cstdlib>
#include <latch>
#include <thread>

#include "ferry/shm/ring.hpp"
#include "ferry/shm/typed_ring.hpp"
#include "support/pattern.hpp"

namespace ferry::shm {
namespace {

std::uint64_t iterations(std::uint64_t fallback) {
  const char* s = std::getenv("FERRY_STRESS_ITERS");
  return s != nullptr ? std::strtoull(s, nullptr, 10) : fallback;
}

struct Case {
  std::uint64_t capacity;
  std::uint32_t batch;
  WaitMode mode;
};

class ByteRingStress : public ::testing::TestWithParam<Case> {};

TEST_P(ByteRingStress, OrderedLosslessTransfer) {
  const auto [capacity, batch, mode] = GetParam();
  const std::uint64_t count = iterations(200'000);
  const std::uint64_t seed = capacity ^ batch;
  auto seg = Segment::create_anonymous(ByteRing::spec(capacity));
  ByteRing::Producer producer(seg, {.wait = {.mode = mode}, .batch = batch});
  ByteRing::Consumer consumer(seg, {.mode = mode});
  const std::size_t max = std::min<std::size_t>(producer.max_message_size(), test::kMaxMessage);
  std::latch start(2);
  std::thread writer([&] {
    start.arrive_and_wait();
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::size_t n = std::min(test::message_size(seed, i), max);
      auto out = producer.reserve(n, std::chrono::seconds(30));
      test::fill(out, seed, i);
      producer.commit(n);
    }
    producer.close();
  });
  start.arrive_and_wait();
  std::uint64_t received = 0;
  for (;;) {
    std::span<const std::byte> msg;
    Status s = consumer.try_peek(msg);
    if (s == Status::would_block) {
      try {
        msg = consumer.peek(std::chrono::seconds(30));
        s = Status::ok;
      } catch (const Error& e) {
        ASSERT_EQ(e.errc(), Errc::closed) << e.what();
        s = Status::closed;
      }
    }
    if (s == Status::closed) break;
    ASSERT_EQ(s, Status::ok);
    const std::size_t want = std::min(test::message_size(seed, received), max);
    ASSERT_EQ(msg.size(), want) << "message " << received;
    if (want == test::message_size(seed, received)) {
      ASSERT_TRUE(test::check(msg, seed, received)) << "message " << received;
    }
    consumer.release();
    ++received;
  }
  writer.join();
  EXPECT_EQ(received, count);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ByteRingStress,
    ::testing::Values(Case{1 << 12, 1, WaitMode::block},   // tiny ring: constant wrap/padding
                      Case{1 << 20, 1, WaitMode::block},   // room for the largest messages
                      Case{1 << 20, 16, WaitMode::block},  // batched publication
                      Case{1 << 16, 8, WaitMode::spin}));

TEST(TypedRingStress, OrderedLosslessTransfer) {
  const std::uint64_t count = iterations(200'000) * 5;
  auto seg = Segment::create_anonymous(Ring<std::uint64_t>::spec(256));
  Ring<std::uint64_t>::Producer producer(seg, {.batch = 4});
  Ring<std::uint64_t>::Consumer consumer(seg);
  std::latch start(2);
  std::thread writer([&] {
    start.arrive_and_wait();
    for (std::uint64_t i = 0; i < count; ++i) producer.push(i, std::chrono::seconds(30));
    producer.close();
  });
  start.arrive_and_wait();
  for (std::uint64_t i = 0; i < count; ++i) ASSERT_EQ(consumer.pop(std::chrono::seconds(30)), i);
  try {
    consumer.pop(std::chrono::seconds(5));
    FAIL() << "expected closed";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::closed);
  }
  writer.join();
}

}  // namespace
}  // namespace ferry::shm
