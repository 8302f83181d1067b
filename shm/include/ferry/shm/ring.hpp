// SPDX-License-Identifier: Apache-2.0
// ByteRing: the lossless single-producer/single-consumer ring of variable-size messages.
// Layer: shm/ (header-only hot path; waits and attach in src/).
//
// Design (see layout.hpp for the bytes):
// - One producer process/thread and one consumer; 64-bit positions that only grow.
// - A record is an 8-byte header word + payload, 8-byte aligned. The producer writes the
//   payload, then the header (length last), then publishes write_pos: every `batch` commits,
//   at flush(), when the ring is full, when the consumer announced sleep, and before any
//   blocking wait. The publication is the commit point the consumer acquires.
// - Each side caches the other's position in its own memory: the consumer reloads write_pos
//   only after reading everything up to the cached value, the producer reloads read_pos only
//   when its cached value says the ring is full. So in a stream each side touches the other's
//   line once per batch, and reads only cache lines the other side has finished writing.
// - When a record does not fit before the end of the region, a padding record fills the tail
//   and the record starts at offset 0: every payload is one contiguous span (zero-copy).
// - The publication is a seq_cst store followed by a check whether the consumer sleeps (the
//   handshake in wait.hpp): the streaming fast path makes no system call.
// - Everything read from the segment is validated: a bad header word or position is
//   Status::protocol_error, never an out-of-bounds access.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstring>
#include <span>
#include <vector>

#include "ferry/shm/detail/assert.hpp"
#include "ferry/shm/detail/ring_end.hpp"

namespace ferry::shm {

class ByteRing {
 public:
  /// The segment spec of a byte ring of `capacity` bytes (a power of two, >= 64).
  static RingSpec spec(std::uint64_t capacity) { return {RingKind::byte_ring, capacity, 0}; }

  /// Largest message a ring of `capacity` bytes accepts.
  static constexpr std::uint64_t max_message_size(std::uint64_t capacity) noexcept {
    return std::min<std::uint64_t>(capacity - layout::kRecordHeaderSize, 0xffffffffu);
  }

  /// The producer end. Thread: one producer thread at a time. Movable, not copyable.
  /// Requires: `segment` outlives the producer.
  class Producer : public detail::ProducerEnd {
   public:
    /// Attaches as the ring's producer. Throws ferry::Error (see detail::attach).
    explicit Producer(Segment& segment, const ProducerOptions& options = {})
        : ProducerEnd(segment, RingKind::byte_ring, options.wait, options.batch),
          m_max_message(ByteRing::max_message_size(m_capacity)) {}
    Producer(Producer&&) noexcept = default;

    [[nodiscard]] std::uint64_t max_message_size() const noexcept { return m_max_message; }

    /// Reserves `n` contiguous bytes for the next message; fill them, then commit().
    /// Never blocks, allocates or throws. Returns would_block (full), closed (consumer
    /// closed), message_too_large (n > max_message_size()), protocol_error.
    [[nodiscard]] Status try_reserve(std::size_t n, std::span<std::byte>& out) noexcept {
      if (m_closed || consumer_closed()) [[unlikely]] return Status::closed;
      if (n > m_max_message) return Status::message_too_large;
      const std::uint64_t rec = layout::record_size(n);
      for (;;) {
        const std::uint64_t index = m_write_pos & m_mask;
        const std::uint64_t to_end = m_capacity - index;
        if (rec <= to_end) {
          if (const Status s = ensure_space(rec); s != Status::ok) return s;
          out = {m_data + index + layout::kRecordHeaderSize, n};
          m_reserved = n;
          m_reserving = true;
          return Status::ok;
        }
        if (const Status s = ensure_space(to_end); s != Status::ok) return s;
        write_padding(index, to_end);
      }
    }

    /// Commits the first `n` bytes of the last reservation as one message.
    /// Requires: a successful try_reserve(m) (or reserve(m)) with n <= m, not yet committed.
    void commit(std::size_t n) noexcept {
      FERRY_ASSERT(m_reserving && n <= m_reserved, "commit() needs a reservation of at least n bytes");
      m_reserving = false;
      // relaxed: published with the payload by the seq_cst store of write_pos in publish().
      word(m_write_pos & m_mask)
          .store(layout::make_record_header(layout::kRecordData, static_cast<std::uint32_t>(n)),
                 std::memory_order_relaxed);
      m_write_pos += layout::record_size(n);
      m_reserved = 0;
      after_commit();
    }
    void commit() noexcept { commit(m_reserved); }

    /// Copies `message` in as one message. Never blocks, allocates or throws.
    [[nodiscard]] Status try_push(std::span<const std::byte> message) noexcept {
      std::span<std::byte> out;
      const Status s = try_reserve(message.size(), out);
      if (s != Status::ok) return s;
      if (!message.empty()) std::memcpy(out.data(), message.data(), message.size());
      commit(message.size());
      return Status::ok;
    }

    /// External waiting after try_reserve(n) found the ring full: see
    /// ConsumerEnd::announce_sleep(); the consumer's next release wakes this side.
    [[nodiscard]] bool announce_sleep(std::size_t n) noexcept { return announce_sleep_units(space_needed(n)); }

    /// Blocking try_reserve: waits for space (spin, then sleep) up to `timeout`.
    /// Throws ferry::Error: timed_out, closed, peer_lost (consumer died), message_too_large,
    /// protocol_error.
    std::span<std::byte> reserve(std::size_t n, std::chrono::nanoseconds timeout = kForever) {
      std::span<std::byte> out;
      Status s = try_reserve(n, out);
      if (s == Status::would_block)
        s = wait_for_space([&] { return space_needed(n); }, deadline_after(timeout),
                           [&] { return try_reserve(n, out); });
      if (s != Status::ok) throw_status(s, "ByteRing::Producer::reserve");
      return out;
    }

    /// Blocking try_push. Throws as reserve().
    void push(std::span<const std::byte> message, std::chrono::nanoseconds timeout = kForever) {
      const auto out = reserve(message.size(), timeout);
      if (!message.empty()) std::memcpy(out.data(), message.data(), message.size());
      commit(message.size());
    }

   private:
    std::atomic_ref<std::uint64_t> word(std::uint64_t index) const noexcept {
      return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(m_data + index));
    }

    // Bytes that must be free for an n-byte message at the current position (padding first
    // when it does not fit before the end of the region).
    [[nodiscard]] std::uint64_t space_needed(std::size_t n) const noexcept {
      const std::uint64_t rec = layout::record_size(n);
      const std::uint64_t to_end = m_capacity - (m_write_pos & m_mask);
      return rec <= to_end ? rec : to_end + rec;
    }

    Status ensure_space(std::uint64_t bytes) noexcept {
      if (m_write_pos + bytes - m_cached_read_pos <= m_capacity) return Status::ok;
      if (!refresh_read_pos()) return Status::protocol_error;
      if (m_write_pos + bytes - m_cached_read_pos <= m_capacity) return Status::ok;
      return full_status();
    }

    // Fills the tail of the region; published with the next record.
    void write_padding(std::uint64_t index, std::uint64_t to_end) noexcept {
      // relaxed: published by the seq_cst store of write_pos in publish().
      word(index).store(
          layout::make_record_header(layout::kRecordPadding,
                                     static_cast<std::uint32_t>(to_end - layout::kRecordHeaderSize)),
          std::memory_order_relaxed);
      m_write_pos += to_end;
    }

    std::uint64_t m_max_message;
    std::size_t m_reserved = 0;
    bool m_reserving = false;  // a successful reservation awaits commit()
  };

  /// The consumer end. Thread: one consumer thread at a time. Movable, not copyable.
  /// Requires: `segment` outlives the consumer.
  class Consumer : public detail::ConsumerEnd {
   public:
    explicit Consumer(Segment& segment, const WaitOptions& wait = {})
        : ConsumerEnd(segment, RingKind::byte_ring, wait),
          m_max_message(ByteRing::max_message_size(m_capacity)) {}
    Consumer(Consumer&&) noexcept = default;

    /// The next published message, in place (zero-copy); valid until release(). Calling it again
    /// before release() returns the same message. Never blocks, allocates or throws.
    /// Returns would_block (empty), closed (producer closed and everything was read),
    /// protocol_error (corrupt record).
    [[nodiscard]] Status try_peek(std::span<const std::byte>& out) noexcept {
      if (m_closed) [[unlikely]] return Status::closed;
      if (m_peeked != 0) {
        out = m_peek;
        return Status::ok;
      }
      for (;;) {
        if (m_read_pos == m_cached_write_pos) {
          if (const Status s = refresh_write_pos(); s != Status::ok) return s;
        }
        const std::uint64_t index = m_read_pos & m_mask;
        // relaxed: ordered by the acquire load of write_pos in refresh_write_pos().
        const std::uint64_t header = word(index).load(std::memory_order_relaxed);
        const std::uint32_t type = layout::record_type(header);
        const std::uint64_t length = layout::record_length(header);
        const std::uint64_t to_end = m_capacity - index;
        const std::uint64_t published = m_cached_write_pos - m_read_pos;
        if (type == layout::kRecordPadding) {
          if (length != to_end - layout::kRecordHeaderSize || to_end > published)
            return Status::protocol_error;
          m_read_pos += to_end;
          m_dirty = true;
          continue;
        }
        if (type != layout::kRecordData || length > m_max_message ||
            layout::record_size(length) > std::min(to_end, published))
          return Status::protocol_error;
        m_peek = {m_data + index + layout::kRecordHeaderSize, static_cast<std::size_t>(length)};
        m_peeked = layout::record_size(length);
        out = m_peek;
        return Status::ok;
      }
    }

    /// Frees the message returned by the last successful peek.
    /// Requires: a successful try_peek()/peek() not yet released.
    void release() noexcept {
      FERRY_ASSERT(m_peeked != 0, "release() needs a successful peek");
      m_read_pos += m_peeked;
      m_peeked = 0;
      store_read_pos();
    }

    /// Copies the next message into `buffer` and releases it; `size` receives its length.
    /// message_too_large if `buffer` is smaller (the message stays in the ring).
    [[nodiscard]] Status try_pop(std::span<std::byte> buffer, std::size_t& size) noexcept {
      std::span<const std::byte> msg;
      const Status s = try_peek(msg);
      if (s != Status::ok) return s;
      if (msg.size() > buffer.size()) return Status::message_too_large;
      if (!msg.empty()) std::memcpy(buffer.data(), msg.data(), msg.size());
      size = msg.size();
      release();
      return Status::ok;
    }

    /// Blocking try_peek: waits up to `timeout`. Throws ferry::Error: timed_out, closed,
    /// peer_lost (the producer died; what it published was read first), protocol_error.
    std::span<const std::byte> peek(std::chrono::nanoseconds timeout = kForever) {
      std::span<const std::byte> out;
      Status s = try_peek(out);
      if (s == Status::would_block)
        s = wait_for_data(deadline_after(timeout), [&] { return try_peek(out); });
      if (s != Status::ok) throw_status(s, "ByteRing::Consumer::peek");
      return out;
    }

    /// Blocking pop into a vector (resized to the message). Throws as peek().
    void pop(std::vector<std::byte>& out, std::chrono::nanoseconds timeout = kForever) {
      const auto msg = peek(timeout);
      out.assign(msg.begin(), msg.end());
      release();
    }

   private:
    std::atomic_ref<std::uint64_t> word(std::uint64_t index) const noexcept {
      return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(m_data + index));
    }

    std::uint64_t m_max_message;
    std::span<const std::byte> m_peek;
    std::uint64_t m_peeked = 0;  // record size of the peeked message, 0 if none
  };
};

}  // namespace ferry::shm
