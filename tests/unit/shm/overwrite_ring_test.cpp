// SPDX-License-Identifier: Apache-2.0
// OverwriteRing<T>: a lapped reader learns what it lost; readers never see torn values.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <latch>
#include <thread>
#include <vector>

#include "ferry/shm/overwrite_ring.hpp"

namespace ferry::shm {
namespace {

struct Wide {
  std::uint64_t v[8];  // all eight words equal: a torn read shows as a mismatch
};

TEST(OverwriteRing, LappedReaderCountsLostMessages) {
  auto seg = Segment::create_anonymous(OverwriteRing<std::uint64_t>::spec(8));
  OverwriteRing<std::uint64_t>::Writer writer(seg);
  OverwriteRing<std::uint64_t>::Reader reader(seg);
  for (std::uint64_t i = 0; i < 3; ++i) writer.write(i);
  std::uint64_t v = 0, lost = 0;
  ASSERT_EQ(reader.try_read(v, lost), Status::ok);
  EXPECT_EQ(v, 0u);
  EXPECT_EQ(lost, 0u);
  for (std::uint64_t i = 3; i < 100; ++i) writer.write(i);  // laps the reader
  ASSERT_EQ(reader.try_read(v, lost), Status::ok);
  EXPECT_EQ(v + 1, 100u - 7u + 1u);  // oldest intact slot: writer position - (capacity - 1)
  EXPECT_EQ(lost, v - 1);            // everything between the last read (0) and v
  std::uint64_t total_lost = lost;
  std::uint64_t reads = 2;
  std::uint64_t last = v;
  while (reader.try_read(v, lost) == Status::ok) {
    total_lost += lost;
    ++reads;
    EXPECT_EQ(v, last + 1 + lost);
    last = v;
  }
  EXPECT_EQ(last, 99u);
  EXPECT_EQ(reads + total_lost, 100u);  // every message was either read or counted as lost
}

TEST(OverwriteRing, ReadersStartAtTheOldestMessageAndSeeClose) {
  auto seg = Segment::create_anonymous(OverwriteRing<std::uint64_t>::spec(4));
  std::uint64_t v = 0, lost = 0;
  {
    OverwriteRing<std::uint64_t>::Writer writer(seg);
    for (std::uint64_t i = 0; i < 10; ++i) writer.write(i);
    OverwriteRing<std::uint64_t>::Reader late(seg);
    ASSERT_EQ(late.try_read(v, lost), Status::ok);
    EXPECT_EQ(v, 6u);
  }
  OverwriteRing<std::uint64_t>::Reader reader(seg);
  int n = 0;
  while (reader.try_read(v, lost) == Status::ok) ++n;
  EXPECT_EQ(n, 4);
  EXPECT_EQ(reader.try_read(v, lost), Status::closed);
}

TEST(OverwriteRing, ASlotFromTheFutureIsAProtocolErrorNotAnEndlessLoop) {
  auto seg = Segment::create_anonymous(OverwriteRing<std::uint64_t>::spec(8));
  OverwriteRing<std::uint64_t>::Reader reader(seg);
  for (std::uint64_t slot = 0; slot < 8; ++slot) {  // every sequence word: huge and even
    const std::uint64_t seq = std::uint64_t{1} << 62;
    std::memcpy(seg.data() + slot * OverwriteRing<std::uint64_t>::kSlotSize, &seq, 8);
  }
  std::uint64_t v = 0, lost = 0;
  EXPECT_EQ(reader.try_read(v, lost), Status::protocol_error);
}

TEST(OverwriteRing, ConcurrentReadersNeverSeeTornValues) {
  auto seg = Segment::create_anonymous(OverwriteRing<Wide>::spec(16));
  OverwriteRing<Wide>::Writer writer(seg);
  constexpr std::uint64_t kWrites = 200'000;
  std::latch start(3);
  std::atomic<bool> torn{false};
  std::atomic<bool> disorder{false};
  std::vector<std::thread> readers;
  for (int r = 0; r < 2; ++r) {
    readers.emplace_back([&] {
      OverwriteRing<Wide>::Reader reader(seg);
      start.arrive_and_wait();
      std::uint64_t last = 0;
      bool first = true;
      for (;;) {
        std::uint64_t lost = 0;
        Wide w{};
        const Status s = reader.try_read(w, lost);
        if (s == Status::closed) break;
        if (s != Status::ok) continue;
        for (const auto x : w.v)
          if (x != w.v[0]) torn.store(true, std::memory_order_relaxed);  // relaxed: read after join
        if (!first && w.v[0] != last + 1 + lost) disorder.store(true, std::memory_order_relaxed);  // relaxed: as above
        first = false;
        last = w.v[0];
      }
    });
  }
  start.arrive_and_wait();
  for (std::uint64_t i = 0; i < kWrites; ++i) {
    Wide w;
    for (auto& x : w.v) x = i;
    writer.write(w);
  }
  writer.close();
  for (auto& t : readers) t.join();
  EXPECT_FALSE(torn.load(std::memory_order_relaxed));      // relaxed: threads joined
  EXPECT_FALSE(disorder.load(std::memory_order_relaxed));  // relaxed: threads joined
}

}  // namespace
}  // namespace ferry::shm
