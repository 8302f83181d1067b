// SPDX-License-Identifier: Apache-2.0
// Ring<T>: lossless single-producer/single-consumer ring of fixed slots holding a trivially
// copyable T (que's and rigtorp's shape). Slots become visible with the publication of
// write_pos (every `batch` pushes, at flush(), when full, and before any blocking wait).
// Layer: shm/ (header-only hot path).
#pragma once

#include <atomic>
#include <cstring>
#include <type_traits>

#include "ferry/shm/detail/ring_end.hpp"

namespace ferry::shm {

template <class T>
class Ring {
  static_assert(std::is_trivially_copyable_v<T>, "Ring<T> stores T by bytes");
  static_assert(alignof(T) <= 64, "over-aligned T is not supported");

 public:
  /// Bytes per slot in the segment (sizeof(T) rounded up to 8).
  static constexpr std::uint64_t kSlotSize = (sizeof(T) + 7) / 8 * 8;

  /// The segment spec of a ring of `capacity` slots (a power of two).
  static RingSpec spec(std::uint64_t capacity) {
    return {RingKind::typed_ring, capacity, kSlotSize};
  }

  /// The producer end. Thread: one producer thread at a time.
  class Producer : public detail::ProducerEnd {
   public:
    explicit Producer(Segment& segment, const ProducerOptions& options = {})
        : ProducerEnd(segment, RingKind::typed_ring, options.wait, options.batch) {
      check_slot(segment);
    }
    Producer(Producer&&) noexcept = default;

    /// Never blocks, allocates or throws: ok, would_block (full), closed, protocol_error.
    [[nodiscard]] Status try_push(const T& value) noexcept {
      if (m_closed || consumer_closed()) [[unlikely]] return Status::closed;
      if (m_write_pos - m_cached_read_pos >= m_capacity) {
        if (!refresh_read_pos()) return Status::protocol_error;
        if (m_write_pos - m_cached_read_pos >= m_capacity) return full_status();
      }
      std::memcpy(m_data + (m_write_pos & m_mask) * kSlotSize, &value, sizeof(T));
      ++m_write_pos;
      after_commit();
      return Status::ok;
    }

    /// Blocking try_push. Throws ferry::Error: timed_out, closed, peer_lost, protocol_error.
    void push(const T& value, std::chrono::nanoseconds timeout = kForever) {
      Status s = try_push(value);
      if (s == Status::would_block)
        s = wait_for_space([] { return std::uint64_t{1}; }, deadline_after(timeout),
                           [&] { return try_push(value); });
      if (s != Status::ok) throw_status(s, "Ring<T>::Producer::push");
    }
  };

  /// The consumer end. Thread: one consumer thread at a time.
  class Consumer : public detail::ConsumerEnd {
   public:
    explicit Consumer(Segment& segment, const WaitOptions& wait = {})
        : ConsumerEnd(segment, RingKind::typed_ring, wait) {
      check_slot(segment);
    }
    Consumer(Consumer&&) noexcept = default;

    /// Never blocks, allocates or throws: ok, would_block (empty), closed, protocol_error.
    [[nodiscard]] Status try_pop(T& out) noexcept {
      if (m_closed) [[unlikely]] return Status::closed;
      if (m_read_pos == m_cached_write_pos) {
        if (const Status s = refresh_write_pos(); s != Status::ok) return s;
      }
      std::memcpy(&out, m_data + (m_read_pos & m_mask) * kSlotSize, sizeof(T));
      ++m_read_pos;
      store_read_pos();
      return Status::ok;
    }

    /// Blocking try_pop. Throws ferry::Error: timed_out, closed, peer_lost, protocol_error.
    T pop(std::chrono::nanoseconds timeout = kForever) {
      T value;
      Status s = try_pop(value);
      if (s == Status::would_block)
        s = wait_for_data(deadline_after(timeout), [&] { return try_pop(value); });
      if (s != Status::ok) throw_status(s, "Ring<T>::Consumer::pop");
      return value;
    }

  };

 private:
  static void check_slot(Segment& segment) {
    if (segment.spec().slot_size != kSlotSize)
      throw Error(Errc::invalid_argument, "segment slot size " +
                                              std::to_string(segment.spec().slot_size) +
                                              " does not match Ring<T> (" +
                                              std::to_string(kSlotSize) + ")");
  }
};

}  // namespace ferry::shm
