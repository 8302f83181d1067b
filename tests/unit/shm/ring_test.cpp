// SPDX-License-Identifier: Apache-2.0
// ByteRing: raw segment bytes and positions after each operation, wrap and padding, full
// and empty, closing, corrupt records.
#include <gtest/gtest.h>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

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

TEST_F(ByteRingTest, PushWritesHeaderAndPayloadThenPublishes) {
  ByteRing::Producer sut(seg);
  ASSERT_EQ(sut.try_push(bytes_of("abc")), Status::ok);
  EXPECT_EQ(word_at(0), make_record_header(kRecordData, 3));
  EXPECT_EQ(std::memcmp(seg.data() + 8, "abc", 3), 0);
  EXPECT_EQ(word_at(16), 0u);  // untouched
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

TEST(ByteRing, ReadPositionIsPublishedInBatchesAndWhenEmpty) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));  // read batch: 256 bytes
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  const auto read_pos = [&] { return seg.control().consumer.read_pos.load(std::memory_order_relaxed); };  // relaxed: one thread
  for (int i = 0; i < 20; ++i) ASSERT_EQ(producer.try_push(bytes_of("0123456789")), Status::ok);  // 24 B each
  std::span<const std::byte> msg;
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(consumer.try_peek(msg), Status::ok);
    consumer.release();
  }
  EXPECT_EQ(read_pos(), 0u);  // 240 bytes released: below the batch
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  consumer.release();
  EXPECT_EQ(read_pos(), 264u);  // the batch is reached
  while (consumer.try_peek(msg) == Status::ok) consumer.release();
  EXPECT_EQ(read_pos(), 480u);  // running empty publishes everything
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
  const std::string eight = "01234567";  // 16-byte records
  int pushed = 0;
  while (producer.try_push(bytes_of(eight)) == Status::ok) ++pushed;
  EXPECT_EQ(pushed, 16);  // 16 * 16 == 256: a ring can be filled to the last byte
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
  EXPECT_EQ(producer.max_message_size(), 256u - 8u);
  std::span<std::byte> out;
  EXPECT_EQ(producer.try_reserve(249, out), Status::message_too_large);
  ASSERT_EQ(producer.try_push(bytes_of("abc")), Status::ok);
  std::span<const std::byte> msg;
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  consumer.release();
  // At offset 16 a 248-byte message needs padding to the end first; that succeeds once the
  // consumer has drained the padding.
  EXPECT_EQ(producer.try_reserve(248, out), Status::would_block);
  EXPECT_EQ(word_at(16), make_record_header(kRecordPadding, 232));
  EXPECT_EQ(consumer.try_peek(msg), Status::would_block);  // consumes the padding
  EXPECT_EQ(published_read_pos(), 256u);
  ASSERT_EQ(producer.try_reserve(248, out), Status::ok);
  EXPECT_EQ(out.data(), seg.data() + 8);
  producer.commit(248);
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  EXPECT_EQ(msg.size(), 248u);
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

TEST_F(ByteRingTest, BatchedPublicationPublishesEveryNthCommitAndAtFlush) {
  ByteRing::Producer producer(seg, {.batch = 4});
  ByteRing::Consumer consumer(seg);
  for (int i = 0; i < 3; ++i) ASSERT_EQ(producer.try_push(bytes_of("m")), Status::ok);
  EXPECT_EQ(published_write_pos(), 0u);
  std::span<const std::byte> msg;
  EXPECT_EQ(consumer.try_peek(msg), Status::would_block);  // not yet published
  ASSERT_EQ(producer.try_push(bytes_of("m")), Status::ok);
  EXPECT_EQ(published_write_pos(), 64u);  // the 4th commit publishes
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(consumer.try_peek(msg), Status::ok);
    consumer.release();
  }
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

TEST_F(ByteRingTest, EndsReportClosedAfterTheirOwnClose) {
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(seg);
  producer.close();
  EXPECT_EQ(producer.try_push(bytes_of("late")), Status::closed);
  try {
    producer.push(bytes_of("late"));
    FAIL() << "expected closed";
  } catch (const Error& e) {
    EXPECT_EQ(e.errc(), Errc::closed);
  }
  consumer.close();
  std::span<const std::byte> msg;
  EXPECT_EQ(consumer.try_peek(msg), Status::closed);
}

TEST(SegmentOptions, DesignatedInitialisersCompileWithEveryWarning) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096), {.huge_pages = HugePages::off});
  EXPECT_EQ(seg.info().page_size, 4096u);
}

TEST_F(ByteRingTest, ProducerSeesConsumerCloseAtOnce) {
  ByteRing::Producer producer(seg);
  {
    ByteRing::Consumer consumer(seg);
  }  // closes
  EXPECT_EQ(producer.try_push(bytes_of("01234567")), Status::closed);  // not only when full
}

TEST_F(ByteRingTest, PublicationNeverWaitsForMoreThanHalfARing) {
  ByteRing::Producer producer(seg, {.batch = 1000});
  for (int i = 0; i < 7; ++i) ASSERT_EQ(producer.try_push(bytes_of("01234567")), Status::ok);
  EXPECT_EQ(published_write_pos(), 0u);  // 112 bytes: below the batch and half the ring
  ASSERT_EQ(producer.try_push(bytes_of("01234567")), Status::ok);
  EXPECT_EQ(published_write_pos(), 128u);  // half the ring (256 / 2) forces publication
}

TEST_F(ByteRingTest, CorruptRecordIsAProtocolError) {
  ByteRing::Consumer consumer(seg);
  std::span<const std::byte> msg;
  const std::uint64_t past_published = make_record_header(kRecordData, 248);
  seg.control().producer.write_pos.store(128, std::memory_order_relaxed);  // relaxed: one thread
  std::memcpy(seg.data(), &past_published, 8);
  EXPECT_EQ(consumer.try_peek(msg), Status::protocol_error);  // record ends past write_pos
  seg.control().producer.write_pos.store(256, std::memory_order_relaxed);  // relaxed: one thread
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

TEST_F(ByteRingTest, ImpossibleWritePositionIsAProtocolError) {
  ByteRing::Consumer consumer(seg);
  seg.control().producer.write_pos.store(257, std::memory_order_relaxed);  // relaxed: one thread
  std::span<const std::byte> msg;
  EXPECT_EQ(consumer.try_peek(msg), Status::protocol_error);  // more than a ring ahead
}

TEST(ByteRing, MisalignedPositionsFromAPeerAreRefused) {
  auto seg = Segment::create_anonymous(ByteRing::spec(4096));
  // relaxed: one thread; a hostile peer's writes before we attach.
  seg.control().producer.write_pos.store(4095, std::memory_order_relaxed);
  seg.control().consumer.read_pos.store(4095, std::memory_order_relaxed);
  EXPECT_THROW(ByteRing::Producer{seg}, Error);  // would have written past the mapping
  auto seg2 = Segment::create_anonymous(ByteRing::spec(4096));
  ByteRing::Consumer consumer(seg2);
  seg2.control().producer.write_pos.store(13, std::memory_order_relaxed);  // relaxed: one thread
  std::span<const std::byte> msg;
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

/// Readable within timeout_ms (then drained).
bool eventfd_fired(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) != 1) return false;
  eventfd_t v = 0;
  return ::eventfd_read(fd, &v) == 0 && v > 0;
}

TEST_F(ByteRingTest, ExternalWaitsAreWokenThroughTheEventfds) {
  const int consumer_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const int producer_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  ASSERT_GE(consumer_fd, 0);
  ASSERT_GE(producer_fd, 0);
  {
    ByteRing::Producer producer(seg);
    ByteRing::Consumer consumer(seg);
    producer.set_peer_wake_fd(consumer_fd);
    consumer.set_peer_wake_fd(producer_fd);
    // Empty ring: the consumer may sleep; the next publication writes its eventfd, not the futex.
    std::span<const std::byte> msg;
    ASSERT_EQ(consumer.try_peek(msg), Status::would_block);
    ASSERT_TRUE(consumer.announce_sleep());
    EXPECT_FALSE(eventfd_fired(consumer_fd, 0));
    ASSERT_EQ(producer.try_push(bytes_of("wake")), Status::ok);
    EXPECT_TRUE(eventfd_fired(consumer_fd, 1000));
    consumer.end_sleep();
    // Data already visible: the announcement is withdrawn.
    EXPECT_FALSE(consumer.announce_sleep());
    ASSERT_EQ(consumer.try_peek(msg), Status::ok);
    EXPECT_EQ(string_of(msg), "wake");
    consumer.release();
    // Full ring: the producer may sleep; the consumer's release writes the producer's eventfd.
    const std::string big(100, 'x');
    while (producer.try_push(bytes_of(big)) == Status::ok) {
    }
    ASSERT_TRUE(producer.announce_sleep(big.size()));
    ASSERT_EQ(consumer.try_peek(msg), Status::ok);
    consumer.release();
    EXPECT_TRUE(eventfd_fired(producer_fd, 1000));
    producer.end_sleep();
    EXPECT_EQ(producer.try_push(bytes_of(big)), Status::ok);
    // Nobody sleeps: no wake-up is written.
    ASSERT_EQ(consumer.try_peek(msg), Status::ok);
    consumer.release();
    EXPECT_FALSE(eventfd_fired(consumer_fd, 0));
    EXPECT_FALSE(eventfd_fired(producer_fd, 0));
    // A close wakes a sleeping consumer too.
    while (consumer.try_peek(msg) == Status::ok) consumer.release();
    ASSERT_TRUE(consumer.announce_sleep());
    producer.close();
    EXPECT_TRUE(eventfd_fired(consumer_fd, 1000));
  }
  ::close(consumer_fd);
  ::close(producer_fd);
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

namespace ferry::shm {
namespace {

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FERRY_TEST_UNDER_TSAN 1
#endif
#endif

TEST(ByteRingContract, CommitWithoutReservationAndReleaseWithoutPeekAbort) {
#ifdef NDEBUG
  GTEST_SKIP() << "contract checks are compiled out with NDEBUG; the asan and tsan builds (Debug) run this";
#elif defined(FERRY_TEST_UNDER_TSAN)
  GTEST_SKIP() << "death tests re-execute the binary, which TSan does not support well; the asan build runs this";
#else
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // re-executes the binary: no bare fork
  EXPECT_DEATH(
      {
        auto seg = Segment::create_anonymous(ByteRing::spec(4096));
        ByteRing::Producer producer(seg);
        producer.commit(8);  // overwrites whatever is at the write position
      },
      "contract violated");
  EXPECT_DEATH(
      {
        auto seg = Segment::create_anonymous(ByteRing::spec(4096));
        ByteRing::Consumer consumer(seg);
        consumer.release();
      },
      "contract violated");
#endif
}

}  // namespace
}  // namespace ferry::shm
