// SPDX-License-Identifier: Apache-2.0
// Hugepage-backed segments: the policy's errors and fallback, named rings on hugetlbfs,
// anonymous rings on hugepages shared with another process. The fixture reserves 2 MiB
// pages and mounts a hugetlbfs, restoring both afterwards (CTest runs these under the
// hugepage_pool resource lock, never alongside another test that changes the pool).
#include <sys/mount.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "ferry/shm/ring.hpp"
#include "support/pattern.hpp"
#include "support/spawn.hpp"
#include "support/errors.hpp"
#include "support/unique_name.hpp"

namespace ferry::shm {
namespace {

constexpr const char* kPool = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
constexpr std::size_t k2M = std::size_t{2} << 20;

long read_pool() {
  long v = -1;
  std::ifstream(kPool) >> v;
  return v;
}
void write_pool(long pages) { std::ofstream(kPool) << pages; }

using test::error_of;

TEST(HugePagePolicy, RequiredHugepagesWithoutAPoolFailClearlyAndPreferFallsBack) {
  const long pages = read_pool();
  if (pages != 0) GTEST_SKIP() << "the 2 MiB pool is not empty here (" << pages << " pages)";
  SegmentOptions require;
  require.huge_pages = HugePages::require;
  EXPECT_EQ(error_of([&] { Segment::create_anonymous(ByteRing::spec(1 << 20), require); }),
            Errc::unavailable);
  SegmentOptions prefer;
  prefer.huge_pages = HugePages::prefer;
  auto seg = Segment::create_anonymous(ByteRing::spec(1 << 20), prefer);
  EXPECT_EQ(seg.info().page_size, 4096u);
  EXPECT_FALSE(seg.info().fallback.empty());  // says why it fell back, never silently
  if (!seg.info().thp_advised) {  // and does not claim transparent hugepages it cannot get
    EXPECT_NE(seg.info().fallback.find("shmem_enabled="), std::string::npos) << seg.info().fallback;
  }
}

class HugePageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "reserving hugepages needs root";
    m_saved_pool = read_pool();
    if (m_saved_pool < 0) GTEST_SKIP() << "this kernel has no 2 MiB hugepage pool";
    write_pool(m_saved_pool + 8);
    if (read_pool() < m_saved_pool + 8) GTEST_SKIP() << "the kernel granted too few hugepages";
    m_mount = std::filesystem::temp_directory_path() / ("ferry-huge-" + std::to_string(::getpid()));
    std::filesystem::create_directories(m_mount);
    if (::mount("none", m_mount.c_str(), "hugetlbfs", 0, "pagesize=2M,mode=0700") != 0)
      GTEST_SKIP() << "cannot mount hugetlbfs: " << std::strerror(errno);
    m_mounted = true;
    options.huge_pages = HugePages::require;
    options.hugetlbfs_dir = m_mount.string();
  }
  void TearDown() override {
    if (m_mounted) {
      Segment::remove(name, options);
      ::umount(m_mount.c_str());
    }
    if (!m_mount.empty()) std::filesystem::remove(m_mount);
    if (m_saved_pool >= 0) write_pool(m_saved_pool);
  }

  std::string name = test::unique_name("huge");
  SegmentOptions options;

 private:
  long m_saved_pool = -1;
  std::filesystem::path m_mount;
  bool m_mounted = false;
};

TEST_F(HugePageTest, NamedRingOnHugetlbfs) {
  auto seg = Segment::create(name, ByteRing::spec(1 << 20), options);
  EXPECT_EQ(seg.info().backing, "hugetlbfs");
  EXPECT_EQ(seg.info().page_size, k2M);
  EXPECT_EQ(seg.info().mapped_bytes, k2M);
  auto joiner = Segment::open(name, ByteRing::spec(1 << 20), options);
  EXPECT_EQ(joiner.info().page_size, k2M);
  ByteRing::Producer producer(seg);
  ByteRing::Consumer consumer(joiner);
  ASSERT_EQ(producer.try_push(std::as_bytes(std::span("huge"))), Status::ok);
  std::span<const std::byte> msg;
  EXPECT_EQ(consumer.try_peek(msg), Status::ok);
}

TEST_F(HugePageTest, AnonymousRingAcrossProcesses) {
  auto seg = Segment::create_anonymous(ByteRing::spec(1 << 20), options);
  ASSERT_EQ(seg.info().backing, "memfd-hugetlb");
  ASSERT_EQ(seg.info().page_size, k2M);
  ByteRing::Producer producer(seg);
  const std::uint64_t n = 100'000;
  test::Child consumer({test::peer_path(), "consume", "-", std::to_string(n), "9", "--fd",
                        std::to_string(seg.fd()), "--huge"},
                       seg.fd(), true);
  ASSERT_EQ(consumer.read_line(), "ready");
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::size_t size = test::message_size(9, i);
    auto out = producer.reserve(size, std::chrono::seconds(30));
    test::fill(out, 9, i);
    producer.commit(size);
  }
  producer.flush();
  const std::string result = consumer.read_line();
  EXPECT_EQ(result.rfind("ok " + std::to_string(n), 0), 0u) << result;
  EXPECT_EQ(consumer.wait(std::chrono::seconds(30)), 0);
}

}  // namespace
}  // namespace ferry::shm
