// SPDX-License-Identifier: Apache-2.0
// The pool behind Bytes::pooled(): free lists of large buffers in size classes of a quarter
// power of two (so a buffer is at most 25% larger than asked), from 64 KiB to 64 MiB, holding
// at most 64 MiB in all. Process-wide, so a Bytes may outlive the communicator that made it.
// Under a sanitizer nothing is pooled (a reused buffer would hide a use after free).
// Layer: src/core.
#include <ferry/bytes.hpp>

#include "core/sanitizers.hpp"

#include <array>
#include <bit>
#include <mutex>
#include <vector>

namespace ferry::detail {
namespace {

constexpr bool kPooling = !kSanitized;

constexpr unsigned kMinShift = 16;  // 64 KiB
constexpr unsigned kMaxShift = 26;  // 64 MiB
constexpr std::size_t kClasses = (kMaxShift - kMinShift + 1) * 4;
constexpr std::size_t kMaxCached = std::size_t{64} << 20;

/// The class of n and its size: 2^k * (4 + j) / 4 for the smallest such size >= n.
bool size_class(std::size_t n, std::size_t& index, std::size_t& size) {
  if (n < (std::size_t{1} << kMinShift) || n > (std::size_t{1} << kMaxShift)) return false;
  const unsigned k = static_cast<unsigned>(std::bit_width(n - 1) - 1);  // 2^k < n <= 2^(k+1)
  for (unsigned j = 1; j <= 4; ++j) {
    const std::size_t candidate = (std::size_t{1} << k) / 4 * (4 + j);
    if (candidate >= n) {
      const unsigned shift = j == 4 ? k + 1 : k;
      index = (shift - kMinShift) * 4 + (j == 4 ? 0 : j);
      size = candidate;
      return index < kClasses;
    }
  }
  return false;
}

struct Pool {
  std::mutex mutex;
  std::array<std::vector<std::byte*>, kClasses> free;
  std::size_t cached = 0;
};

Pool& pool() {
  static Pool* p = new Pool;  // never destroyed: buffers may be freed during static destruction
  return *p;
}

}  // namespace

std::byte* pool_take(std::size_t n, std::size_t& capacity) {
  std::size_t index = 0;
  if (!kPooling || !size_class(n, index, capacity)) return nullptr;
  Pool& p = pool();
  {
    const std::lock_guard lock(p.mutex);
    auto& list = p.free[index];
    if (!list.empty()) {
      std::byte* b = list.back();
      list.pop_back();
      p.cached -= capacity;
      return b;
    }
  }
  return new std::byte[capacity];
}

void pool_give(std::byte* b, std::size_t capacity) noexcept {
  std::size_t index = 0;
  std::size_t size = 0;
  Pool& p = pool();
  if (size_class(capacity, index, size) && size == capacity) {
    const std::lock_guard lock(p.mutex);
    if (p.cached + capacity <= kMaxCached) {
      try {
        p.free[index].push_back(b);
        p.cached += capacity;
        return;
      } catch (...) {  // NOLINT(bugprone-empty-catch): no room in the list: free it instead
      }
    }
  }
  delete[] b;
}

}  // namespace ferry::detail
