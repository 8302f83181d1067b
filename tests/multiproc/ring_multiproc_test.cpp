// SPDX-License-Identifier: Apache-2.0
// Byte ring across real processes (tests/support/peer_main.cpp spawned with posix_spawn):
// lossless ordered transfer, start order, SIGKILL of either side, refused segments,
// descriptor-passed segments, and no file left in /dev/shm (hugepages: hugepage_test.cpp).
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>

#include "ferry/shm/ring.hpp"
#include "support/pattern.hpp"
#include "support/spawn.hpp"
#include "support/unique_name.hpp"

namespace ferry::shm {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using test::Child;

std::uint64_t message_count(std::uint64_t fallback) {
  const char* s = std::getenv("FERRY_MP_MESSAGES");
  return s != nullptr ? std::strtoull(s, nullptr, 10) : fallback;
}

int exit_code_of(Errc e) { return 10 + static_cast<int>(e); }

class RingMultiProc : public ::testing::Test {
 protected:
  void TearDown() override {
    const bool left = std::filesystem::exists("/dev/shm/" + segment_file_name(name));
    Segment::remove(name);
    EXPECT_FALSE(left) << "segment file left behind";
  }
  std::vector<std::string> peer(const std::string& mode, std::uint64_t count = 0,
                                std::uint64_t seed = 0) {
    std::vector<std::string> args{test::peer_path(), mode, name};
    if (mode == "produce" || mode == "consume") {
      args.push_back(std::to_string(count));
      args.push_back(std::to_string(seed));
    }
    return args;
  }
  static std::vector<std::string> with(std::vector<std::string> args,
                                       std::initializer_list<std::string> more) {
    args.insert(args.end(), more);
    return args;
  }
  std::string name = test::unique_name("mp");
};

TEST_F(RingMultiProc, MillionMessagesLosslessAndOrderedConsumerStartedLast) {
  const std::uint64_t n = message_count(1'000'000);
  Child producer(with(peer("produce", n, 11), {"--create"}), -1, true);
  ASSERT_EQ(producer.read_line(), "ready");
  Child consumer(peer("consume", n, 11), -1, true);
  ASSERT_EQ(consumer.read_line(), "ready");
  const std::string result = consumer.read_line();
  EXPECT_EQ(result.rfind("ok " + std::to_string(n) + " ", 0), 0u) << result;
  EXPECT_EQ(consumer.wait(seconds(240)), 0);
  EXPECT_EQ(producer.wait(seconds(30)), 0);
}

TEST_F(RingMultiProc, ConsumerStartedFirstCreatesAndWaits) {
  const std::uint64_t n = message_count(1'000'000) / 5;
  Child consumer(with(peer("consume", n, 12), {"--create"}), -1, true);
  ASSERT_EQ(consumer.read_line(), "ready");
  std::this_thread::sleep_for(milliseconds(50));  // the consumer is asleep on an empty ring
  Child producer(peer("produce", n, 12), -1, true);
  ASSERT_EQ(producer.read_line(), "ready");
  const std::string result = consumer.read_line();
  EXPECT_EQ(result.rfind("ok " + std::to_string(n) + " ", 0), 0u) << result;
  EXPECT_EQ(consumer.wait(seconds(120)), 0);
  EXPECT_EQ(producer.wait(seconds(30)), 0);
}

// The producer is also the segment's creator: the surviving consumer unlinks the name.
TEST_F(RingMultiProc, ProducerKilledMidStreamIsPeerLostPromptly) {
  Child producer(with(peer("produce-forever"), {"--create"}), -1, true);
  ASSERT_EQ(producer.read_line(), "ready");
  auto seg = Segment::open(name, ByteRing::spec(0));
  ByteRing::Consumer consumer(seg);
  std::uint64_t i = 0;
  for (; i < 20'000; ++i) {
    const auto msg = consumer.peek(seconds(10));
    ASSERT_TRUE(test::check(msg, 1, i)) << "message " << i;
    consumer.release();
  }
  producer.kill(SIGKILL);
  const auto killed = Clock::now();
  Errc errc = Errc::internal;
  try {
    for (;; ++i) {  // what the producer committed before dying is still delivered, intact
      const auto msg = consumer.peek(seconds(10));
      ASSERT_TRUE(test::check(msg, 1, i)) << "message " << i;
      consumer.release();
    }
  } catch (const Error& e) {
    errc = e.errc();
  }
  const auto latency = std::chrono::duration_cast<milliseconds>(Clock::now() - killed);
  EXPECT_EQ(errc, Errc::peer_lost);
  RecordProperty("peer_lost_ms", static_cast<int>(latency.count()));
  std::printf("peer_lost reported %lld ms after SIGKILL\n", static_cast<long long>(latency.count()));
  EXPECT_LT(latency, milliseconds(500));  // requirement 100 ms (measured ~20): margin for shared CI
  EXPECT_EQ(producer.wait(seconds(5)), 128 + SIGKILL);
}

TEST_F(RingMultiProc, ConsumerKilledFailsTheBlockedProducer) {
  auto seg = Segment::create(name, ByteRing::spec(1 << 16));
  ByteRing::Producer producer(seg);
  Child consumer(peer("attach-consumer-and-hang"), -1, true);
  ASSERT_EQ(consumer.read_line(), "ready");
  const std::string payload(1000, 'p');
  const auto bytes = std::as_bytes(std::span(payload));
  while (producer.try_push(bytes) == Status::ok) {
  }
  std::thread killer([&] {
    std::this_thread::sleep_for(milliseconds(100));  // the producer is blocked by then
    consumer.kill(SIGKILL);
  });
  Errc errc = Errc::internal;
  const auto start = Clock::now();
  try {
    producer.push(bytes, seconds(10));
  } catch (const Error& e) {
    errc = e.errc();
  }
  killer.join();
  EXPECT_EQ(errc, Errc::peer_lost);
  EXPECT_LT(Clock::now() - start, milliseconds(100 + 500));  // killed after 100 ms, then <= 500
  EXPECT_EQ(consumer.wait(seconds(5)), 128 + SIGKILL);
}

TEST_F(RingMultiProc, PeerRefusesCorruptOrMismatchedSegments) {
  auto seg = Segment::create(name, ByteRing::spec(1 << 16));
  auto& h = seg.control().header;
  const auto try_consume = [&] {
    Child consumer(peer("consume", 1, 1), -1, true);
    return consumer.wait(seconds(20));
  };
  h.layout_version = 7;
  EXPECT_EQ(try_consume(), exit_code_of(Errc::version_mismatch));
  h.layout_version = layout::kLayoutVersion;
  h.magic = 0;
  EXPECT_EQ(try_consume(), exit_code_of(Errc::protocol_error));
  h.magic = layout::kMagic;
  h.capacity = 1 << 20;  // larger than the file
  EXPECT_EQ(try_consume(), exit_code_of(Errc::protocol_error));
  h.capacity = 1 << 16;
  Child wrong_capacity(with(peer("consume", 1, 1), {"--create", "--capacity", "4096"}), -1, true);
  EXPECT_EQ(wrong_capacity.wait(seconds(20)), 0 + exit_code_of(Errc::invalid_argument));
}

TEST_F(RingMultiProc, SecondConsumerProcessIsRefused) {
  auto seg = Segment::create(name, ByteRing::spec(1 << 16));
  ByteRing::Consumer consumer(seg);
  Child second(peer("consume", 1, 1), -1, true);
  EXPECT_EQ(second.wait(seconds(20)), exit_code_of(Errc::address_in_use));
}

TEST_F(RingMultiProc, AnonymousSegmentPassedByDescriptorLeavesNoFile) {
  auto seg = Segment::create_anonymous(ByteRing::spec(1 << 20));
  ByteRing::Producer producer(seg);
  const std::uint64_t n = 50'000;
  Child consumer(with(peer("consume", n, 5), {"--fd", std::to_string(seg.fd())}), seg.fd(), true);
  ASSERT_EQ(consumer.read_line(), "ready");
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::size_t size = test::message_size(5, i);
    auto out = producer.reserve(size, seconds(30));
    test::fill(out, 5, i);
    producer.commit(size);
  }
  const std::string result = consumer.read_line();
  EXPECT_EQ(result.rfind("ok " + std::to_string(n), 0), 0u) << result;
  EXPECT_EQ(consumer.wait(seconds(30)), 0);
}

}  // namespace
}  // namespace ferry::shm
