// SPDX-License-Identifier: Apache-2.0
// ferry::Bytes: an owned, move-only byte buffer (no zero-filling on allocation). Public API.
#pragma once

#include <cstddef>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace ferry {

namespace detail {
/// Recycled large buffers (src/core/buffer_pool.cpp). A receiver that frees a large message
/// buffer and allocates the next one would otherwise have the allocator return the memory to
/// the kernel and fault it in again, which costs more than the copy into it.
/// pool_take: a buffer of at least n bytes (its size class in capacity), or nullptr when n is
/// outside the pooled sizes. Throws std::bad_alloc.
std::byte* pool_take(std::size_t n, std::size_t& capacity);
void pool_give(std::byte* p, std::size_t capacity) noexcept;

struct BytesDeleter {
  std::size_t pooled = 0;  // a pooled buffer's capacity; 0: from new[]
  void operator()(std::byte* p) const noexcept {
    if (pooled != 0) {
      pool_give(p, pooled);
    } else {
      delete[] p;
    }
  }
};
}  // namespace detail

/// Owned bytes. Move-only, so a message is never copied by accident; Bytes(n) leaves the
/// contents uninitialised, so a receiver can read straight into a buffer of the message's size.
class Bytes {
 public:
  Bytes() = default;
  /// n uninitialised bytes.
  explicit Bytes(std::size_t n) : m_data(n ? new std::byte[n] : nullptr), m_size(n) {}
  /// n uninitialised bytes, recycled from (and returned to) Ferry's pool of large buffers
  /// when n is large: what receivers use for message buffers.
  [[nodiscard]] static Bytes pooled(std::size_t n) {
    std::size_t capacity = 0;
    std::byte* p = detail::pool_take(n, capacity);
    if (p == nullptr) return Bytes(n);
    Bytes b;
    b.m_data = std::unique_ptr<std::byte[], detail::BytesDeleter>(p, detail::BytesDeleter{capacity});
    b.m_size = n;
    return b;
  }
  [[nodiscard]] static Bytes copy_of(std::span<const std::byte> src) {
    Bytes b(src.size());
    if (!src.empty()) std::memcpy(b.data(), src.data(), src.size());
    return b;
  }
  [[nodiscard]] static Bytes copy_of(std::string_view src) {
    return copy_of(std::as_bytes(std::span(src.data(), src.size())));
  }

  Bytes(Bytes&& other) noexcept : m_data(std::move(other.m_data)), m_size(std::exchange(other.m_size, 0)) {}
  Bytes& operator=(Bytes&& other) noexcept {
    m_data = std::move(other.m_data);
    m_size = std::exchange(other.m_size, 0);
    return *this;
  }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
  ~Bytes() = default;

  [[nodiscard]] std::byte* data() noexcept { return m_data.get(); }
  [[nodiscard]] const std::byte* data() const noexcept { return m_data.get(); }
  [[nodiscard]] std::size_t size() const noexcept { return m_size; }
  [[nodiscard]] bool empty() const noexcept { return m_size == 0; }
  /// Drops the bytes from n on (n <= size()); keeps the allocation. What a receiver uses to
  /// strip a trailer without copying the bytes before it.
  void truncate(std::size_t n) noexcept {
    if (n < m_size) m_size = n;
  }
  [[nodiscard]] std::span<std::byte> span() noexcept { return {data(), m_size}; }
  [[nodiscard]] std::span<const std::byte> span() const noexcept { return {data(), m_size}; }
  /// The bytes as characters (no copy).
  [[nodiscard]] std::string_view text() const noexcept {
    return {reinterpret_cast<const char*>(data()), m_size};
  }

 private:
  std::unique_ptr<std::byte[], detail::BytesDeleter> m_data;
  std::size_t m_size = 0;
};

}  // namespace ferry
