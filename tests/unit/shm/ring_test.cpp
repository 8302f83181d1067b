// SPDX-License-Identifier: Apache-2.0
// ByteRing: raw segment bytes and positions after each operation, wrap and padding, full
// and empty, closing, corrupt records.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <thread>

#include "ferry/shm/ring.hpp"
#include "support/unique_name.hpp"

namespace ferry::shm {
namespace {

using layout::kRecordData;
using layout::kRecordPadding;
using layout::make_record_header;

std::span<const std::byte> bytes_of(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}
std::string string_of(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

class ByteRingTest : public ::testing::Test {
 protected:
  explicit ByteRingTest(std::uint64_t capacity = 256)
      : seg(Segment::create_anonymous(ByteRing::spec(capacity))) {}

  std::uint64_t word_at(std::uint64_t offset) const {
    std::uint64_t w = 0;
    std::memcpy(&w, seg.data() + offset, 8);
    return w;
  }
  std::uint64_t published_write_pos() const {
    return seg.control().producer.write_pos.load(std::memory_order_relaxed);  // relaxed: test thread owns both ends
  }
  std::uint64_t published_read_pos() const {
    return seg.control().consumer.read_pos.load(std::memory_order_relaxed);  // relaxed: as above
  }

  Segment seg;
};

TEST_F(ByteRingTest, PushWritesHeaderPayloadAndZeroedNextWord) {
  ByteRing::Producer sut(seg);
  ASSERT_EQ(sut.try_push(bytes_of("abc")), Status::ok);
  EXPECT_EQ(word_at(0), make_record_header(kRecordData, 3));
  EXPECT_EQ(std::memcmp(seg.data() + 8, "abc", 3), 0);
  EXPECT_EQ(word_at(16), 0u);
  EXPECT_EQ(sut.position(), 16u);
  EXPECT_EQ(published_write_pos(), 16u);  // batch 1: published at once
  EXPECT_EQ(published_read_pos(), 0u);
}

TEST_F(ByteRingTest, PeekIsZeroCopyAndReleaseAdvancesReadPos) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer sut(seg);
  ASSERT_EQ(producer.try_push(bytes_of("hello, ring")), Status::ok);
  std::span<const std::byte> msg;
  ASSERT_EQ(sut.try_peek(msg), Status::ok);
  EXPECT_EQ(msg.data(), seg.data() + 8);  // in place
  EXPECT_EQ(string_of(msg), "hello, ring");
  EXPECT_EQ(published_read_pos(), 0u);
  sut.release();
  EXPECT_EQ(sut.position(), 24u);
  EXPECT_EQ(published_read_pos(), 24u);
  EXPECT_EQ(sut.try_peek(msg), Status::would_block);
}

TEST_F(ByteRingTest, ZeroLengthMessageIsAMessage) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer sut(seg);
  ASSERT_EQ(producer.try_push({}), Status::ok);
  EXPECT_EQ(word_at(0), make_record_header(kRecordData, 0));
  std::span<const std::byte> msg;
  ASSERT_EQ(sut.try_peek(msg), Status::ok);
  EXPECT_TRUE(msg.empty());
  sut.release();
  EXPECT_EQ(sut.position(), 8u);
}

TEST_F(ByteRingTest, RejectsWriteWhenFullAndAcceptsAfterRelease) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  const std::string eight = "01234567";  // 16-byte records; one header word of headroom
  int pushed = 0;
  while (producer.try_push(bytes_of(eight)) == Status::ok) ++pushed;
  EXPECT_EQ(pushed, 15);  // 15 * 16 + 8 <= 256 < 16 * 16 + 8
  EXPECT_EQ(producer.try_push(bytes_of(eight)), Status::would_block);
  std::span<const std::byte> msg;
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  consumer.release();
  EXPECT_EQ(producer.try_push(bytes_of(eight)), Status::ok);
}

TEST_F(ByteRingTest, PaddingRecordAtWrapKeepsPayloadContiguous) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  std::span<const std::byte> msg;
  const std::string big(200, 'x');  // record 208
  ASSERT_EQ(producer.try_push(bytes_of(big)), Status::ok);
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  consumer.release();
  const std::string next(40, 'y');  // record 48 > 48 left? 256 - 208 = 48: fits exactly
  ASSERT_EQ(producer.try_push(bytes_of(next)), Status::ok);
  EXPECT_EQ(word_at(208), make_record_header(kRecordData, 40));
  EXPECT_EQ(word_at(0), 0u);  // the word after a record that ends at the region's end
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  consumer.release();
  EXPECT_EQ(consumer.position(), 256u);
  // Now at offset 0 again; write 200 then 100: the second needs padding.
  ASSERT_EQ(producer.try_push(bytes_of(big)), Status::ok);  // offsets 0..207
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  consumer.release();
  const std::string wrap(100, 'z');  // record 112 > 48 left: pad 48, record at 0
  ASSERT_EQ(producer.try_push(bytes_of(wrap)), Status::ok);
  EXPECT_EQ(word_at(208), make_record_header(kRecordPadding, 40));
  EXPECT_EQ(word_at(0), make_record_header(kRecordData, 100));
  EXPECT_EQ(word_at(112), 0u);
  EXPECT_EQ(producer.position(), 256u + 256u + 112u);
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  EXPECT_EQ(msg.data(), seg.data() + 8);
  EXPECT_EQ(string_of(msg), wrap);
  consumer.release();
  EXPECT_EQ(consumer.position(), producer.position());
}

TEST_F(ByteRingTest, LargestMessageFitsAnEmptyRingAndLargerIsRefused) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  EXPECT_EQ(producer.max_message_size(), 256u - 16u);
  std::span<std::byte> out;
  EXPECT_EQ(producer.try_reserve(241, out), Status::message_too_large);
  ASSERT_EQ(producer.try_push(bytes_of("abc")), Status::ok);
  std::span<const std::byte> msg;
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  consumer.release();
  // At offset 16 a 240-byte message needs padding to the end first; that succeeds once the
  // consumer has drained the padding.
  EXPECT_EQ(producer.try_reserve(240, out), Status::would_block);
  EXPECT_EQ(consumer.try_peek(msg), Status::would_block);  // consumes the padding
  ASSERT_EQ(producer.try_reserve(240, out), Status::ok);
  EXPECT_EQ(out.data(), seg.data() + 8);
  producer.commit(240);
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  EXPECT_EQ(msg.size(), 240u);
}

TEST_F(ByteRingTest, CommitShorterThanReservation) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  std::span<std::byte> out;
  ASSERT_EQ(producer.try_reserve(100, out), Status::ok);
  std::memcpy(out.data(), "12345", 5);
  producer.commit(5);
  EXPECT_EQ(producer.position(), 16u);
  std::span<const std::byte> msg;
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  EXPECT_EQ(string_of(msg), "12345");
}

TEST_F(ByteRingTest, BatchedPublicationDelaysPositionNotVisibility) {
  ByteRing::Producer producer(seg, {.batch = 4});
  ByteRing::Consumer consumer(seg);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(producer.try_push(bytes_of("m")), Status::ok);
  EXPECT_EQ(published_write_pos(), 0u);
  std::span<const std::byte> msg;
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);  // committed records are visible anyway
  consumer.release();
  ASSERT_EQ(producer.try_push(bytes_of("m")), Status::ok);
  EXPECT_EQ(published_write_pos(), 64u);  // the 4th commit publishes
  ASSERT_EQ(producer.try_push(bytes_of("m")), Status::ok);
  EXPECT_EQ(published_write_pos(), 64u);
  producer.flush();
  EXPECT_EQ(published_write_pos(), 80u);
}

TEST_F(ByteRingTest, ConsumerReadsEverythingThenSeesClosed) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  ASSERT_EQ(producer.try_push(bytes_of("last")), Status::ok);
  producer.close();
  producer.close();  // idempotent
  std::span<const std::byte> msg;
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  EXPECT_EQ(string_of(msg), "last");
  consumer.release();
  EXPECT_EQ(consumer.try_peek(msg), Status::closed);
  try {
    consumer.peek(std::chrono::milliseconds(100));
    FAIL() << "expected closed";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::closed);
  }
}

TEST_F(ByteRingTest, ProducerSeesConsumerCloseWhenFull) {
  ByteRing::Producer producer(seg);
  {
    ByteRing::Consumer consumer(seg);
  }  // closes
  Status s = Status::ok;
  while ((s = producer.try_push(bytes_of("01234567"))) == Status::ok) {
  }
  EXPECT_EQ(s, Status::closed);
}

TEST_F(ByteRingTest, CorruptRecordIsAProtocolError) {
  ByteRing::Consumer consumer(seg);
  std::span<const std::byte> msg;
  const std::uint64_t bad_type = make_record_header(7, 3);
  std::memcpy(seg.data(), &bad_type, 8);
  EXPECT_EQ(consumer.try_peek(msg), Status::protocol_error);
  const std::uint64_t too_long = make_record_header(kRecordData, 1000);
  std::memcpy(seg.data(), &too_long, 8);
  EXPECT_EQ(consumer.try_peek(msg), Status::protocol_error);
  const std::uint64_t bad_padding = make_record_header(kRecordPadding, 8);
  std::memcpy(seg.data(), &bad_padding, 8);
  EXPECT_EQ(consumer.try_peek(msg), Status::protocol_error);
}

TEST_F(ByteRingTest, ImpossibleReadPositionIsAProtocolError) {
  ByteRing::Producer producer(seg);
  seg.control().consumer.read_pos.store(1'000'000, std::memory_order_relaxed);  // relaxed: single thread
  Status s = Status::ok;
  while ((s = producer.try_push(bytes_of("01234567"))) == Status::ok) {
  }
  EXPECT_EQ(s, Status::protocol_error);
}

TEST_F(ByteRingTest, SecondProducerIsRefused) {
  ByteRing::Producer producer(seg);
  try {
    ByteRing::Producer second(seg);
    FAIL() << "expected address_in_use";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::address_in_use);
  }
}

TEST_F(ByteRingTest, BlockingPeekTimesOut) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  const auto start = Clock::now();
  try {
    consumer.peek(std::chrono::milliseconds(50));
    FAIL() << "expected timed_out";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::timed_out);
  }
  EXPECT_GE(Clock::now() - start, std::chrono::milliseconds(50));
}

TEST_F(ByteRingTest, BlockingPushWaitsForSpace) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  while (producer.try_push(bytes_of("01234567")) == Status::ok) {
  }
  std::thread reader([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::vector<std::byte> out;
    consumer.pop(out, std::chrono::seconds(5));
  });
  producer.push(bytes_of("01234567"), std::chrono::seconds(5));
  reader.join();
}

TEST_F(ByteRingTest, MovedEndsKeepWorking) {
  ByteRing::Producer a(seg);
  ByteRing::Producer producer(std::move(a));
  ByteRing::Consumer b(seg);
  ByteRing::Consumer consumer(std::move(b));
  ASSERT_EQ(producer.try_push(bytes_of("moved")), Status::ok);
  std::vector<std::byte> out;
  consumer.pop(out, std::chrono::seconds(1));
  EXPECT_EQ(string_of(out), "moved");
}

}  // namespace
}  // namespace ferry::shm
