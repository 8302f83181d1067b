// SPDX-License-Identifier: Apache-2.0
// Segment: creation, permissions, validation on join (each header field), stale reclaim,
// anonymous segments, cleanup, hugepage policy.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "ferry/shm/ring.hpp"
#include "support/errors.hpp"
#include "support/unique_name.hpp"

namespace ferry::shm {
namespace {

std::string shm_path(const std::string& name) { return "/dev/shm/" + segment_file_name(name); }
bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

using test::error_of;

class SegmentTest : public ::testing::Test {
 protected:
  void TearDown() override { Segment::remove(name); }
  // Writes into the header of the named segment's file (simulating corruption).
  template <class T>
  void poke(std::size_t offset, T value) {
    const int fd = ::open(shm_path(name).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, &value, sizeof value, static_cast<off_t>(offset)), static_cast<ssize_t>(sizeof value));
    ::close(fd);
  }
  std::string name = test::unique_name("seg");
  layout::SegmentHeader pristine{};
};

TEST_F(SegmentTest, CreatesOwnerOnlyNamedSegmentAndRemovesItOnDestruction) {
  {
    auto sut = Segment::create(name, ByteRing::spec(4096));
    struct stat st {};
    ASSERT_EQ(::stat(shm_path(name).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    EXPECT_EQ(sut.info().backing, "posix-shm");
    EXPECT_EQ(sut.info().page_size, 4096u);
    EXPECT_TRUE(sut.info().creator);
    EXPECT_EQ(sut.control().header.magic, layout::kMagic);
    EXPECT_EQ(sut.control().header.capacity, 4096u);
    EXPECT_EQ(sut.control().header.state.load(std::memory_order_relaxed),  // relaxed: own segment
              static_cast<std::uint32_t>(layout::SegmentState::ready));
    EXPECT_EQ(layout::identity_pid(sut.control().header.creator), static_cast<std::uint64_t>(::getpid()));
  }
  EXPECT_FALSE(exists(shm_path(name)));
}

TEST_F(SegmentTest, JoinerMapsTheSameBytes) {
  auto creator = Segment::create(name, ByteRing::spec(4096));
  auto joiner = Segment::open(name, ByteRing::spec(4096));
  EXPECT_FALSE(joiner.info().creator);
  EXPECT_NE(creator.base(), joiner.base());  // two mappings, offsets only
  ByteRing::Producer producer(creator);
  ByteRing::Consumer consumer(joiner);
  const char text[] = "two mappings";
  ASSERT_EQ(producer.try_push(std::as_bytes(std::span(text))), Status::ok);
  std::span<const std::byte> msg;
  ASSERT_EQ(consumer.try_peek(msg), Status::ok);
  EXPECT_EQ(std::memcmp(msg.data(), text, sizeof text), 0);
}

TEST_F(SegmentTest, CreateRefusesALiveSegmentAndCreateOrOpenJoinsIt) {
  auto first = Segment::create(name, ByteRing::spec(4096));
  EXPECT_EQ(error_of([&] { Segment::create(name, ByteRing::spec(4096)); }), Errc::address_in_use);
  auto second = Segment::create_or_open(name, ByteRing::spec(4096));
  EXPECT_FALSE(second.info().creator);
}

TEST_F(SegmentTest, OpenOfMissingSegmentIsNotFound) {
  EXPECT_EQ(error_of([&] { Segment::open(name, ByteRing::spec(0)); }), Errc::not_found);
}

TEST_F(SegmentTest, InvalidNamesAndSpecsAreRefused) {
  EXPECT_EQ(error_of([] { Segment::create("a/b", ByteRing::spec(4096)); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([] { Segment::create("", ByteRing::spec(4096)); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { Segment::create(name, ByteRing::spec(1000)); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { Segment::create(name, ByteRing::spec(32)); }), Errc::invalid_argument);
}

// Each header field a joiner validates, corrupted in turn.
TEST_F(SegmentTest, JoinRefusesEachCorruptOrMismatchedField) {
  auto creator = Segment::create(name, ByteRing::spec(4096));
  const auto open = [&] { Segment::open(name, ByteRing::spec(4096)); };
  EXPECT_EQ(error_of([&] { Segment::open(name, ByteRing::spec(8192)); }), Errc::invalid_argument);
  EXPECT_EQ(error_of([&] { Segment::open(name, RingSpec{RingKind::typed_ring, 0, 0}); }),
            Errc::invalid_argument);

  auto& h = creator.control().header;
  const layout::SegmentHeader& saved = pristine;
  std::memcpy(static_cast<void*>(&pristine), &h, sizeof h);
  poke<std::uint64_t>(offsetof(layout::SegmentHeader, magic), 0x1234);
  EXPECT_EQ(error_of(open), Errc::protocol_error);
  h.magic = saved.magic;
  poke<std::uint32_t>(offsetof(layout::SegmentHeader, layout_version), 99);
  EXPECT_EQ(error_of(open), Errc::version_mismatch);
  h.layout_version = saved.layout_version;
  poke<std::uint64_t>(offsetof(layout::SegmentHeader, capacity), 3000);
  EXPECT_EQ(error_of(open), Errc::protocol_error);
  h.capacity = saved.capacity;
  poke<std::uint64_t>(offsetof(layout::SegmentHeader, segment_size), 1 << 30);
  EXPECT_EQ(error_of(open), Errc::protocol_error);
  h.segment_size = saved.segment_size;
  poke<std::uint64_t>(offsetof(layout::SegmentHeader, page_size), 12345);
  EXPECT_EQ(error_of(open), Errc::protocol_error);
  h.page_size = saved.page_size;
  poke<std::uint32_t>(offsetof(layout::SegmentHeader, kind), 9);
  EXPECT_EQ(error_of(open), Errc::protocol_error);
  h.kind = saved.kind;
  EXPECT_NO_THROW(open());
}

TEST_F(SegmentTest, RefusedJoinLeavesTheFileAlone) {
  auto creator = Segment::create(name, ByteRing::spec(4096));
  creator.control().header.magic = 0;
  // The creator is alive, but even a dead one's file must not be unlinked by a refused join.
  creator.control().header.creator = layout::make_identity((1u << 22) - 1, 1);
  EXPECT_EQ(error_of([&] { Segment::open(name, ByteRing::spec(0)); }), Errc::protocol_error);
  EXPECT_TRUE(exists(shm_path(name)));
  creator.control().header.magic = layout::kMagic;
  EXPECT_EQ(error_of([&] { Segment::open(name, ByteRing::spec(8192)); }), Errc::invalid_argument);
  EXPECT_TRUE(exists(shm_path(name)));
}

TEST_F(SegmentTest, GeometryIsTheValidatedCopyNotTheSharedHeader) {
  auto creator = Segment::create(name, ByteRing::spec(4096));
  auto joiner = Segment::open(name, ByteRing::spec(4096));
  creator.control().header.capacity = std::uint64_t{1} << 40;  // a hostile rewrite after the join
  EXPECT_EQ(joiner.spec().capacity, 4096u);
  ByteRing::Consumer consumer(joiner);
  EXPECT_EQ(consumer.capacity(), 4096u);
}

TEST_F(SegmentTest, CreateDoesNotReclaimASegmentStillBeingCreated) {
  // A's prefault of 256 MiB leaves a window in which the file exists but is not ready; B
  // must see a live creator there, not a stale segment to delete.
  std::uint64_t a_inode = 0;
  std::thread a([&] {
    auto seg = Segment::create(name, ByteRing::spec(std::uint64_t{256} << 20));
    struct stat st {};
    ::fstat(seg.fd(), &st);
    a_inode = st.st_ino;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    struct stat now {};
    ASSERT_EQ(::stat(shm_path(name).c_str(), &now), 0);
    EXPECT_EQ(now.st_ino, a_inode) << "A's segment was replaced";
  });
  while (!exists(shm_path(name))) std::this_thread::yield();
  EXPECT_EQ(error_of([&] { Segment::create(name, ByteRing::spec(4096)); }), Errc::address_in_use);
  a.join();
}

TEST_F(SegmentTest, AnonymousSegmentCannotBeResizedUnderItsPeer) {
  auto seg = Segment::create_anonymous(ByteRing::spec(1 << 16));
  EXPECT_NE(::ftruncate(seg.fd(), 4096), 0);  // sealed: a peer cannot cause SIGBUS
  EXPECT_NE(::ftruncate(seg.fd(), 1 << 30), 0);
  const int unsealed = ::memfd_create("not-ferry", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(unsealed, 0);
  ASSERT_EQ(::ftruncate(unsealed, 1 << 16), 0);
  EXPECT_EQ(error_of([&] { Segment::open_fd(unsealed, ByteRing::spec(0)); }), Errc::protocol_error);
  ::close(unsealed);
}

TEST_F(SegmentTest, FailedJoinsLeakNoDescriptor) {
  const auto open_fds = [] {
    return std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                         std::filesystem::directory_iterator{});
  };
  const int tiny = ::memfd_create("tiny", MFD_CLOEXEC);
  ASSERT_GE(tiny, 0);
  const auto before = open_fds();
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(error_of([&] { Segment::open_fd(tiny, ByteRing::spec(0)); }), Errc::protocol_error);
  EXPECT_EQ(open_fds(), before);
  ::close(tiny);
}

TEST_F(SegmentTest, TruncatedFileIsRefused) {
  auto creator = Segment::create(name, ByteRing::spec(4096));
  ASSERT_EQ(::truncate(shm_path(name).c_str(), 6000), 0);
  EXPECT_EQ(error_of([&] { Segment::open(name, ByteRing::spec(0)); }), Errc::protocol_error);
}

TEST_F(SegmentTest, GarbageFileIsNotAFerrySegment) {
  {
    std::ofstream f(shm_path(name));
    f << std::string(8192, 'G');
  }
  SegmentOptions quick;
  quick.open_timeout = std::chrono::milliseconds(0);
  // State word is garbage, not "ready": the joiner treats it as never initialised.
  const Errc e = error_of([&] { Segment::open(name, ByteRing::spec(0), quick); });
  EXPECT_TRUE(e == Errc::timed_out || e == Errc::protocol_error) << static_cast<int>(e);
}

TEST_F(SegmentTest, StaleSegmentOfADeadCreatorIsReclaimedOrReported) {
  {
    auto seg = Segment::create(name, ByteRing::spec(4096));
    // A creator that no longer exists (pid_max - 1 with an impossible start time).
    seg.control().header.creator = layout::make_identity((1u << 22) - 1, 1);
    const int fd = ::open(shm_path(name).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);  // keep the file: destruction would unlink it as the "dead creator's"
    std::filesystem::copy_file(shm_path(name), "/dev/shm/" + segment_file_name(name) + ".bak");
    ::close(fd);
  }
  std::filesystem::rename("/dev/shm/" + segment_file_name(name) + ".bak", shm_path(name));
  SegmentOptions report;
  report.on_stale = OnStale::report;
  EXPECT_EQ(error_of([&] { Segment::create(name, ByteRing::spec(4096), report); }),
            Errc::address_in_use);
  EXPECT_EQ(error_of([&] { Segment::create_or_open(name, ByteRing::spec(4096), report); }),
            Errc::address_in_use);  // reported, not joined
  EXPECT_TRUE(exists(shm_path(name)));
  auto fresh = Segment::create(name, ByteRing::spec(4096));  // reclaim is the default
  EXPECT_TRUE(fresh.info().creator);
  EXPECT_EQ(layout::identity_pid(fresh.control().header.creator), static_cast<std::uint64_t>(::getpid()));
}

TEST_F(SegmentTest, JoinerUnlinksTheNameOnceTheCreatorIsDead) {
  auto creator = Segment::create(name, ByteRing::spec(4096));
  {
    auto joiner = Segment::open(name, ByteRing::spec(4096));
    joiner.control().header.creator = layout::make_identity((1u << 22) - 1, 1);
  }
  EXPECT_FALSE(exists(shm_path(name)));
}

TEST_F(SegmentTest, AnonymousSegmentLeavesNoFileAndJoinsByDescriptor) {
  auto creator = Segment::create_anonymous(ByteRing::spec(1 << 16));
  EXPECT_EQ(creator.info().backing, "memfd");
  EXPECT_TRUE(creator.info().path.empty());
  auto joiner = Segment::open_fd(creator.fd(), ByteRing::spec(1 << 16));
  EXPECT_EQ(joiner.control().header.epoch, creator.control().header.epoch);
  EXPECT_EQ(error_of([&] { Segment::open_fd(creator.fd(), ByteRing::spec(1 << 15)); }),
            Errc::invalid_argument);
}

}  // namespace
}  // namespace ferry::shm
