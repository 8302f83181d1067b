// SPDX-License-Identifier: Apache-2.0
// Ring<T>: slots, full/empty, batched publication, closing, slot-size validation.
#include <gtest/gtest.h>

#include <cstring>

#include "ferry/shm/typed_ring.hpp"

namespace ferry::shm {
namespace {

struct Tick {
  std::uint64_t seq;
  double price;
  std::uint32_t qty;
};

TEST(TypedRing, SlotsHoldValuesAndPositionsCountSlots) {
  auto seg = Segment::create_anonymous(Ring<Tick>::spec(8));
  Ring<Tick>::Producer producer(seg);
  Ring<Tick>::Consumer consumer(seg);
  ASSERT_EQ(producer.try_push(Tick{7, 1.5, 3}), Status::ok);
  Tick raw{};
  std::memcpy(&raw, seg.data(), sizeof raw);  // slot 0, raw bytes
  EXPECT_EQ(raw.seq, 7u);
  EXPECT_EQ(seg.control().producer.write_pos.load(std::memory_order_relaxed), 1u);  // relaxed: one thread
  Tick out{};
  ASSERT_EQ(consumer.try_pop(out), Status::ok);
  EXPECT_EQ(out.qty, 3u);
  EXPECT_EQ(seg.control().consumer.read_pos.load(std::memory_order_relaxed), 1u);  // relaxed: one thread
  EXPECT_EQ(consumer.try_pop(out), Status::would_block);
}

TEST(TypedRing, RejectsWriteWhenFull) {
  auto seg = Segment::create_anonymous(Ring<std::uint64_t>::spec(4));
  Ring<std::uint64_t>::Producer producer(seg);
  Ring<std::uint64_t>::Consumer consumer(seg);
  for (std::uint64_t i = 0; i < 4; ++i) ASSERT_EQ(producer.try_push(i), Status::ok);
  EXPECT_EQ(producer.try_push(4), Status::would_block);
  std::uint64_t v = 0;
  ASSERT_EQ(consumer.try_pop(v), Status::ok);
  EXPECT_EQ(v, 0u);
  EXPECT_EQ(producer.try_push(4), Status::ok);
  for (std::uint64_t i = 1; i <= 4; ++i) {
    ASSERT_EQ(consumer.try_pop(v), Status::ok);
    EXPECT_EQ(v, i);
  }
}

TEST(TypedRing, BatchedSlotsAppearAtFlush) {
  auto seg = Segment::create_anonymous(Ring<std::uint64_t>::spec(64));
  Ring<std::uint64_t>::Producer producer(seg, {.batch = 8});
  Ring<std::uint64_t>::Consumer consumer(seg);
  ASSERT_EQ(producer.try_push(1), Status::ok);
  std::uint64_t v = 0;
  EXPECT_EQ(consumer.try_pop(v), Status::would_block);
  producer.flush();
  ASSERT_EQ(consumer.try_pop(v), Status::ok);
  EXPECT_EQ(v, 1u);
}

TEST(TypedRing, ClosedAfterDrain) {
  auto seg = Segment::create_anonymous(Ring<std::uint64_t>::spec(8));
  Ring<std::uint64_t>::Consumer consumer(seg);
  {
    Ring<std::uint64_t>::Producer producer(seg, {.batch = 4});
    ASSERT_EQ(producer.try_push(42), Status::ok);
  }  // the destructor flushes and closes
  std::uint64_t v = 0;
  ASSERT_EQ(consumer.try_pop(v), Status::ok);
  EXPECT_EQ(v, 42u);
  EXPECT_EQ(consumer.try_pop(v), Status::closed);
}

TEST(TypedRing, RefusesASegmentOfAnotherSlotSize) {
  auto seg = Segment::create_anonymous(Ring<std::uint64_t>::spec(8));
  EXPECT_THROW(Ring<Tick>::Consumer{seg}, Error);
  auto bytes = Segment::create_anonymous(RingSpec{RingKind::byte_ring, 4096, 0});
  EXPECT_THROW(Ring<std::uint64_t>::Consumer{bytes}, Error);
}

}  // namespace
}  // namespace ferry::shm
