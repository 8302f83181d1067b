// SPDX-License-Identifier: Apache-2.0
// Session and CommunicatorImpl internals driven directly, without a transport: when puts fail
// relative to a write in flight, and concurrent handshakes with one id.
#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <thread>
#include <vector>

#include <ferry/ferry.hpp>

#include "core/communicator_impl.hpp"
#include "core/session.hpp"
#include "framing/batch.hpp"

namespace ferry::detail {
namespace {

/// A connection that records what core asks of it (the transport side of the Link contract).
class RecordingLink final : public Link {
 public:
  void kick() override { kicks.fetch_add(1, std::memory_order_relaxed); }  // relaxed: a counter read after join
  void resume_reading() override {}
  void shutdown(std::error_code) override { shutdowns.fetch_add(1, std::memory_order_relaxed); }  // relaxed: as kicks
  std::string transport() const override { return "test"; }
  std::string remote() const override { return "nowhere"; }
  std::atomic<int> kicks{0};
  std::atomic<int> shutdowns{0};
};

framing::Hello peer_hello(const PeerId& id, std::uint32_t flags = 0) {
  framing::Hello h;
  h.id = id;
  h.flags = flags;
  h.max_message = std::uint64_t{1} << 30;
  h.max_chunk = 1u << 20;
  return h;
}

std::unique_ptr<CommunicatorImpl> server_impl() {
  Options o;
  o.endpoint = "tcp://127.0.0.1:0";  // never started: no transport
  o.connection.close_timeout = std::chrono::milliseconds(0);  // no link answers a close
  return std::make_unique<CommunicatorImpl>(Purpose::server, o, Endpoint::parse(o.endpoint));
}

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::uint64_t next = 0;
    std::string why;
    ASSERT_EQ(sut->attach(link, peer_hello(peer), false, next, why), Errc{}) << why;
  }
  PutHandle put_borrowed(std::span<const std::byte> bytes) {
    auto state = std::make_shared<PutState>(Payload::borrow(bytes), std::span<const PeerId>(&peer, 1));
    EXPECT_EQ(sut->enqueue(state, 0, state->payload()), Errc{});
    return PutHandle(state);
  }

  std::unique_ptr<CommunicatorImpl> owner = server_impl();
  PeerId peer = PeerId::random();
  std::shared_ptr<RecordingLink> link = std::make_shared<RecordingLink>();
  std::shared_ptr<Session> sut = std::make_shared<Session>(*owner, peer, ConnectionOptions{});
  std::vector<std::byte> buffer = std::vector<std::byte>(256 << 10, std::byte{7});
};

TEST_F(SessionTest, EndWithAWriteInFlightFailsItsPutsOnlyWhenTheWriteIsOver) {
  PutHandle handle = put_borrowed(buffer);
  framing::Batch batch(64 << 10);
  WriteRecord record;
  ASSERT_TRUE(sut->fill(batch, record, false));  // the link now writes from `buffer`
  sut->end(make_error_code(Errc::closed));
  EXPECT_EQ(sut->state(), Session::State::ended);
  EXPECT_EQ(link->shutdowns.load(std::memory_order_relaxed), 1);  // relaxed: same thread
  EXPECT_FALSE(handle.ready()) << "the caller could free a buffer the write still reads";
  sut->write_failed(record);
  ASSERT_TRUE(handle.ready());
  ASSERT_EQ(handle.errors().size(), 1u);
  EXPECT_EQ(handle.errors()[0].error, make_error_code(Errc::closed));
}

TEST_F(SessionTest, EndWaitsForEveryWriteInFlight) {
  // Two writes in flight: the old connection's (not yet answered) and the resumed one's.
  PutHandle first = put_borrowed(buffer);
  framing::Batch batch(64 << 10);
  WriteRecord a, b;
  ASSERT_TRUE(sut->fill(batch, a, false));
  batch.clear();
  PutHandle second = put_borrowed(buffer);
  ASSERT_TRUE(sut->fill(batch, b, false));
  sut->end(make_error_code(Errc::peer_lost));
  sut->written(a);
  EXPECT_FALSE(first.ready());
  EXPECT_FALSE(second.ready());
  sut->write_failed(b);
  EXPECT_TRUE(first.ready());
  EXPECT_TRUE(second.ready());
  EXPECT_EQ(second.errors().at(0).error, make_error_code(Errc::peer_lost));
}

TEST_F(SessionTest, EndWithNoWriteInFlightFailsAtOnce) {
  PutHandle handle = put_borrowed(buffer);
  framing::Batch batch(64 << 10);
  WriteRecord record;
  ASSERT_TRUE(sut->fill(batch, record, false));
  sut->written(record);
  sut->end(make_error_code(Errc::closed));
  EXPECT_TRUE(handle.ready());
  EXPECT_EQ(handle.errors().at(0).error, make_error_code(Errc::closed));
}

TEST_F(SessionTest, AFullBatchWithMoreDueSaysSo) {
  // The writer must go on after a full batch without waiting for another kick: the puts whose
  // kicks it took before filling have no one else to wake it (a stream stalled until the
  // keep-alive tick before this).
  std::vector<PutHandle> handles;
  const std::span<const std::byte> small(buffer.data(), 512);
  for (int i = 0; i < 400; ++i) handles.push_back(put_borrowed(small));  // 200 KiB: several batches
  framing::Batch batch(64 << 10);
  WriteRecord record;
  ASSERT_TRUE(sut->fill(batch, record, false));
  EXPECT_TRUE(record.more);
  sut->written(record);
  int batches = 1;
  for (;;) {
    batch.clear();
    record.clear();
    ASSERT_TRUE(sut->fill(batch, record, false));
    ++batches;
    sut->written(record);
    if (!record.more) break;
  }
  EXPECT_GE(batches, 3);
  batch.clear();
  record.clear();
  EXPECT_FALSE(sut->fill(batch, record, false)) << "everything was written";
}

TEST(CommunicatorImpl, ConcurrentHandshakesWithOneIdAttachOnlyOne) {
  const int rounds = 300;
  for (int round = 0; round < rounds; ++round) {
    auto owner = server_impl();
    const PeerId id = PeerId::random();
    {
      // A detached session waiting for its client to resume it.
      auto first = std::make_shared<RecordingLink>();
      framing::Hello reply;
      std::shared_ptr<Session> session;
      std::uint64_t next = 0;
      std::string why;
      ASSERT_EQ(owner->accept_client(peer_hello(id), first, reply, session, next, why), Errc{}) << why;
      session->link_down(first.get(), make_error_code(Errc::peer_lost));
      ASSERT_EQ(session->state(), Session::State::detached);
    }
    std::latch start(2);
    std::atomic<int> attached{0}, refused{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&] {
        auto link = std::make_shared<RecordingLink>();
        framing::Hello reply;
        std::shared_ptr<Session> session;
        std::uint64_t next = 0;
        std::string why;
        start.arrive_and_wait();
        const Errc e = owner->accept_client(peer_hello(id, framing::kHelloResume), link, reply, session, next, why);
        // relaxed: counters read after join.
        (e == Errc{} ? attached : refused).fetch_add(1, std::memory_order_relaxed);
        if (e != Errc{}) {
          EXPECT_EQ(e, Errc::address_in_use) << why;
        }
      });
    }
    for (auto& t : threads) t.join();
    ASSERT_EQ(attached.load(std::memory_order_relaxed), 1) << "round " << round;  // relaxed: after join
    ASSERT_EQ(refused.load(std::memory_order_relaxed), 1) << "round " << round;  // relaxed: after join
    owner->close();
  }
}

}  // namespace
}  // namespace ferry::detail
