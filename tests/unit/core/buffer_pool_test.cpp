// SPDX-License-Identifier: Apache-2.0
// Bytes::pooled(): large receive buffers are recycled, small and huge ones are not, and a
// pooled buffer behaves as any other Bytes.
#include <gtest/gtest.h>

#include <ferry/bytes.hpp>

#include "core/sanitizers.hpp"

#include <cstring>
#include <vector>

namespace ferry {
namespace {

constexpr bool kPooling = !detail::kSanitized;  // as in src/core/buffer_pool.cpp

TEST(BufferPool, PooledBytesHoldTheirSizeAndContents) {
  for (const std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{4096}, std::size_t{65536}, std::size_t{65537},
                              std::size_t{1} << 20, (std::size_t{1} << 21) + 3, std::size_t{100} << 20}) {
    Bytes b = Bytes::pooled(n);
    ASSERT_EQ(b.size(), n);
    if (n == 0) continue;
    std::memset(b.data(), 0x5a, n);
    Bytes moved = std::move(b);
    EXPECT_EQ(b.size(), 0u);
    ASSERT_EQ(moved.size(), n);
    EXPECT_EQ(moved.data()[n - 1], std::byte{0x5a});
  }
}

TEST(BufferPool, LargeBuffersAreReusedSmallAndHugeOnesAreNot) {
  const auto reused = [](std::size_t first, std::size_t second) {
    const std::byte* p = nullptr;
    {
      Bytes a = Bytes::pooled(first);
      p = a.data();
    }
    Bytes b = Bytes::pooled(second);
    return b.data() == p;
  };
  // Same size class (sizes within a quarter power of two of each other): the freed buffer
  // comes back; another class is another buffer. Only without a sanitizer, which needs every
  // buffer fresh to see a use after free (and whose allocator may hand the same address back
  // on its own, so addresses say nothing there).
  if (kPooling) {
    EXPECT_TRUE(reused(std::size_t{1} << 20, (std::size_t{1} << 20) - 100));
    EXPECT_TRUE(reused(std::size_t{64} << 10, std::size_t{64} << 10));
    EXPECT_FALSE(reused(std::size_t{1} << 20, std::size_t{3} << 20));
  }
  // The pool holds at most 64 MiB: many freed buffers do not pile up beyond it, and every one
  // is usable afterwards.
  std::vector<Bytes> many;
  for (int i = 0; i < 40; ++i) many.push_back(Bytes::pooled(std::size_t{4} << 20));
  many.clear();
  for (int i = 0; i < 40; ++i) {
    Bytes b = Bytes::pooled(std::size_t{4} << 20);
    b.data()[0] = std::byte{1};
    b.data()[b.size() - 1] = std::byte{2};
  }
}

}  // namespace
}  // namespace ferry
