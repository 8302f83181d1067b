// SPDX-License-Identifier: Apache-2.0
// The baseline for `ferry-bench ring --impl ideal`: a minimal SPSC byte ring with nothing but
// the essentials (length-prefixed records, padding at wrap, each side caching the other's
// position, positions published every 64 messages, spin-only, no validation, no liveness, no
// close protocol). It is what Ferry's ring is measured against in the same run; it is not
// part of the library. Layer: tools/.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ferry/shm/wait.hpp"

namespace ferry::bench {

inline constexpr std::uint32_t kIdealBatch = 64;
inline constexpr std::uint64_t kIdealPadding = ~std::uint64_t{0};

class IdealProducer {
 public:
  IdealProducer(std::atomic<std::uint64_t>& write_pos, const std::atomic<std::uint64_t>& read_pos,
                std::byte* data, std::uint64_t capacity)
      : m_write_pos(write_pos), m_read_pos(read_pos), m_data(data), m_capacity(capacity) {}

  void push(const void* payload, std::uint64_t length) {
    const std::uint64_t rec = (8 + length + 7) & ~std::uint64_t{7};
    for (;;) {
      const std::uint64_t index = m_pos & (m_capacity - 1);
      const std::uint64_t to_end = m_capacity - index;
      const std::uint64_t need = rec <= to_end ? rec : to_end;
      while (m_pos + need - m_cached_read > m_capacity) {
        publish();
        // sync(ideal.free) acquire: pairs with the consumer's release store of read_pos.
        m_cached_read = m_read_pos.load(std::memory_order_acquire);
        shm::cpu_relax();
      }
      if (rec > to_end) {
        std::memcpy(m_data + index, &kIdealPadding, 8);
        m_pos += to_end;
        continue;
      }
      std::memcpy(m_data + index, &length, 8);
      std::memcpy(m_data + index + 8, payload, length);
      m_pos += rec;
      if (++m_unpublished == kIdealBatch) publish();
      return;
    }
  }

  void publish() {
    // sync(ideal.publish) release: records before m_pos are written. Partner: the
    // consumer's acquire load of write_pos.
    m_write_pos.store(m_pos, std::memory_order_release);
    m_unpublished = 0;
  }

 private:
  std::atomic<std::uint64_t>& m_write_pos;
  const std::atomic<std::uint64_t>& m_read_pos;
  std::byte* m_data;
  std::uint64_t m_capacity;
  std::uint64_t m_pos = 0;
  std::uint64_t m_cached_read = 0;
  std::uint32_t m_unpublished = 0;
};

class IdealConsumer {
 public:
  IdealConsumer(const std::atomic<std::uint64_t>& write_pos, std::atomic<std::uint64_t>& read_pos,
                const std::byte* data, std::uint64_t capacity)
      : m_write_pos(write_pos), m_read_pos(read_pos), m_data(data), m_capacity(capacity) {}

  /// The next message in place, or nullptr if none is published; `length` receives its size.
  const std::byte* peek(std::uint64_t& length) {
    for (;;) {
      if (m_pos == m_cached_write) {
        publish();
        // sync(ideal.publish) acquire: pairs with the producer's release store.
        m_cached_write = m_write_pos.load(std::memory_order_acquire);
        if (m_pos == m_cached_write) return nullptr;
      }
      const std::uint64_t index = m_pos & (m_capacity - 1);
      std::memcpy(&length, m_data + index, 8);
      if (length == kIdealPadding) {
        m_pos += m_capacity - index;
        continue;
      }
      m_rec = (8 + length + 7) & ~std::uint64_t{7};
      return m_data + index + 8;
    }
  }

  void release() {
    m_pos += m_rec;
    if (++m_unpublished == kIdealBatch) publish();
  }

 private:
  void publish() {
    // sync(ideal.free) release: our reads are done before the producer reuses the space.
    m_read_pos.store(m_pos, std::memory_order_release);
    m_unpublished = 0;
  }

  const std::atomic<std::uint64_t>& m_write_pos;
  std::atomic<std::uint64_t>& m_read_pos;
  const std::byte* m_data;
  std::uint64_t m_capacity;
  std::uint64_t m_pos = 0;
  std::uint64_t m_cached_write = 0;
  std::uint64_t m_rec = 0;
  std::uint32_t m_unpublished = 0;
};

}  // namespace ferry::bench
