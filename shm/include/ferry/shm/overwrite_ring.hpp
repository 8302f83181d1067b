// SPDX-License-Identifier: Apache-2.0
// OverwriteRing<T>: lossy single-producer/multi-consumer ring. The writer never waits: it
// overwrites the oldest slot. Each reader follows at its own pace; a reader that was lapped
// learns how many messages it lost and never returns a torn value (per-slot sequence check,
// a seqlock whose data words are atomics so the check is race-free in the C++ model).
// Layer: shm/ (header-only hot path).
#pragma once

#include <array>
#include <atomic>
#include <climits>
#include <cstring>
#include <type_traits>

#include "ferry/shm/futex.hpp"
#include "ferry/shm/process.hpp"
#include "ferry/shm/segment.hpp"
#include "ferry/shm/wait.hpp"

namespace ferry::shm {

template <class T>
class OverwriteRing {
  static_assert(std::is_trivially_copyable_v<T>, "OverwriteRing<T> stores T by bytes");
  static constexpr std::size_t kWords = (sizeof(T) + 7) / 8;

 public:
  /// Slot: one sequence word, then T as 8-byte words.
  static constexpr std::uint64_t kSlotSize = 8 * (1 + kWords);

  static RingSpec spec(std::uint64_t capacity) {
    return {RingKind::overwrite_ring, capacity, kSlotSize};
  }

  /// The single writer. Thread: one writer thread at a time. Never blocks.
  class Writer {
   public:
    explicit Writer(Segment& segment) : m_ctl(&segment.control()), m_data(segment.data()) {
      check(segment);
      const layout::Identity me = self_identity();
      layout::Identity expected = 0;
      // sync(ring.attach) acq_rel: claims the writer role once; the loser reads the winner.
      if (!m_ctl->producer.owner.compare_exchange_strong(expected, me, std::memory_order_acq_rel,
                                                         std::memory_order_acquire))
        throw Error(is_alive(expected) ? Errc::address_in_use : Errc::peer_lost,
                    "the overwrite ring's writer role is held by pid " +
                        std::to_string(layout::identity_pid(expected)));
      m_mask = segment.spec().capacity - 1;
      // sync(segment.ready) acquire: the creator's initial position; the segment's state was
      // released after it.
      m_pos = m_ctl->producer.write_pos.load(std::memory_order_acquire);
    }
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;
    ~Writer() { close(); }

    /// Marks the ring closed: readers read what is left, then get Status::closed.
    /// Idempotent; the writer must not write after it.
    void close() noexcept {
      // sync(ring.close) seq_cst store: pairs with readers' acquire load of producer_closed.
      m_ctl->wait.producer_closed.store(1, std::memory_order_seq_cst);
      wake_readers();
    }

    /// Writes `value` into the next slot, overwriting the oldest. Never blocks or fails.
    void write(const T& value) noexcept {
      std::array<std::uint64_t, kWords> words{};
      std::memcpy(words.data(), &value, sizeof(T));
      auto* slot = slot_words(m_data, m_pos & m_mask);
      std::atomic_ref<std::uint64_t> seq(slot[0]);
      // relaxed: ordered before the data words by their release stores below.
      seq.store(2 * m_pos + 1, std::memory_order_relaxed);
      for (std::size_t i = 0; i < kWords; ++i) {
        // sync(ring.seqlock) release: the odd sequence is visible before any new data word,
        // so a reader that sees a new word re-reads a changed sequence. Partner: acquire
        // loads of the data words in Reader::try_read().
        std::atomic_ref<std::uint64_t>(slot[1 + i]).store(words[i], std::memory_order_release);
      }
      // sync(ring.seqlock) release: the data is complete before the even sequence.
      // Partner: acquire load of the sequence in Reader::try_read().
      seq.store(2 * m_pos + 2, std::memory_order_release);
      ++m_pos;
      // Resetting the sleep flag below means a reader that died asleep costs one wake-up,
      // not one per write.
      // sync(ring.wake) seq_cst store of the position, then seq_cst load of the sleep flag:
      // pairs with a reader's seq_cst store of readers_sleeping and seq_cst load of
      // write_pos in Reader::read().
      m_ctl->producer.write_pos.store(m_pos, std::memory_order_seq_cst);
      // sync(ring.wake): as above.
      if (m_ctl->wait.readers_sleeping.load(std::memory_order_seq_cst) != 0 &&
          m_ctl->wait.readers_sleeping.exchange(0, std::memory_order_seq_cst) != 0)
        wake_readers();
    }

    [[nodiscard]] std::uint64_t position() const noexcept { return m_pos; }

   private:
    void wake_readers() noexcept {
      // relaxed: the futex word is a generation counter; the kernel's wake orders the rest.
      m_ctl->wait.readers_wake_seq.fetch_add(1, std::memory_order_relaxed);
      futex_wake(m_ctl->wait.readers_wake_seq, INT_MAX);
    }

    layout::Control* m_ctl;
    std::byte* m_data;
    std::uint64_t m_mask = 0;
    std::uint64_t m_pos = 0;
  };

  /// One of any number of readers; each keeps its own position in its own memory.
  /// Thread: one thread per Reader object.
  class Reader {
   public:
    /// Starts at the oldest message still in the ring.
    explicit Reader(Segment& segment, const WaitOptions& wait = {})
        : m_ctl(&segment.control()), m_data(segment.data()), m_wait(wait) {
      check(segment);
      m_capacity = segment.spec().capacity;
      // sync(ring.publish) acquire: pairs with the seq_cst store of write_pos in
      // Writer::write().
      const std::uint64_t w = m_ctl->producer.write_pos.load(std::memory_order_acquire);
      m_pos = w > m_capacity ? w - m_capacity : 0;
    }

    /// Reads the next value. Never blocks, allocates or throws. ok (and `lost` counts the
    /// messages overwritten since the previous read, normally 0), would_block (nothing new),
    /// closed (the writer closed and everything was read), protocol_error (corrupt slot).
    [[nodiscard]] Status try_read(T& out, std::uint64_t& lost) noexcept {
      lost = 0;
      for (;;) {
        auto* slot = slot_words(m_data, m_pos & (m_capacity - 1));
        std::atomic_ref<std::uint64_t> seq(slot[0]);
        // sync(ring.seqlock) acquire: pairs with the writer's release store of the even
        // sequence; the data words of that write are visible.
        const std::uint64_t s1 = seq.load(std::memory_order_acquire);
        const std::uint64_t want = 2 * m_pos + 2;
        if (s1 < want) {
          if (s1 + 1 == want) return Status::would_block;  // being written right now
          // sync(ring.close) acquire: pairs with the writer's seq_cst store in ~Writer().
          if (m_ctl->wait.producer_closed.load(std::memory_order_acquire) != 0 &&
              seq.load(std::memory_order_acquire) < want)
            return Status::closed;
          return Status::would_block;
        }
        if (s1 > want) {  // lapped: skip to the oldest slot still intact
          // sync(ring.publish) acquire: pairs with the seq_cst store of write_pos in write().
          const std::uint64_t w = m_ctl->producer.write_pos.load(std::memory_order_acquire);
          if (s1 > 2 * w + 2) return Status::protocol_error;  // a slot from the future: corrupt
          lost += skip_ahead();
          continue;
        }
        std::array<std::uint64_t, kWords> words;
        for (std::size_t i = 0; i < kWords; ++i) {
          // sync(ring.seqlock) acquire: a word from a newer write makes the sequence re-read
          // below see that write's odd value. Partner: release stores in Writer::write().
          words[i] = std::atomic_ref<std::uint64_t>(slot[1 + i]).load(std::memory_order_acquire);
        }
        // relaxed: ordered after the data loads by their acquire semantics.
        if (seq.load(std::memory_order_relaxed) != s1) {
          lost += skip_ahead();
          continue;
        }
        std::memcpy(&out, words.data(), sizeof(T));
        ++m_pos;
        return Status::ok;
      }
    }

    /// Blocking read: spins, then sleeps until the writer writes, up to `timeout`.
    /// Throws ferry::Error: timed_out, closed, peer_lost (the writer died).
    T read(std::uint64_t& lost, std::chrono::nanoseconds timeout = kForever) {
      T value;
      const auto deadline = deadline_after(timeout);
      const auto writer_gone = [&] {
        // relaxed: compared with /proc only.
        const auto owner = m_ctl->producer.owner.load(std::memory_order_relaxed);
        return owner != 0 && m_ctl->wait.producer_closed.load(std::memory_order_relaxed) == 0 &&
               !is_alive(owner);
      };
      const auto start = Clock::now();
      auto next_check = start + m_wait.liveness_interval;
      for (std::uint32_t i = 0;; ++i) {
        const Status s = try_read(value, lost);
        if (s == Status::ok) return value;
        if (s != Status::would_block) throw_status(s, "OverwriteRing<T>::Reader::read");
        const auto now = Clock::now();
        if (now >= deadline) throw_status(Status::timed_out, "OverwriteRing<T>::Reader::read");
        if (now >= next_check) {
          next_check = now + m_wait.liveness_interval;
          if (writer_gone()) throw_status(Status::peer_lost, "OverwriteRing<T>::Reader::read");
        }
        if (m_wait.mode == WaitMode::spin || now - start < m_wait.spin) {
          cpu_relax();
          continue;
        }
        // relaxed: the generation is re-checked by the kernel in futex_wait.
        const std::uint32_t gen = m_ctl->wait.readers_wake_seq.load(std::memory_order_relaxed);
        // sync(ring.wake) seq_cst: announce, then re-check write_pos. Partner: the writer's
        // seq_cst store of write_pos, then seq_cst load of readers_sleeping. Any reader may
        // set the flag; the writer's reset wakes all of them (they re-announce each sleep).
        m_ctl->wait.readers_sleeping.store(1, std::memory_order_seq_cst);
        if (m_ctl->producer.write_pos.load(std::memory_order_seq_cst) <= m_pos &&  // sync(ring.wake)
            m_ctl->wait.producer_closed.load(std::memory_order_seq_cst) == 0)      // sync(ring.wake)
          futex_wait(m_ctl->wait.readers_wake_seq, gen, std::min(next_check, deadline) - now);
      }
    }

    [[nodiscard]] std::uint64_t position() const noexcept { return m_pos; }

   private:
    // Moves to the oldest position the writer cannot be overwriting; returns how many
    // messages were skipped.
    std::uint64_t skip_ahead() noexcept {
      // sync(ring.publish) acquire: pairs with the seq_cst store of write_pos in
      // Writer::write().
      const std::uint64_t w = m_ctl->producer.write_pos.load(std::memory_order_acquire);
      // Keep one slot of slack: the writer may already be overwriting the oldest one.
      const std::uint64_t oldest = w > m_capacity - 1 ? w - (m_capacity - 1) : 0;
      const std::uint64_t target = std::max(oldest, m_pos + 1);
      const std::uint64_t skipped = target - m_pos;
      m_pos = target;
      return skipped;
    }

    layout::Control* m_ctl;
    std::byte* m_data;
    WaitOptions m_wait;
    std::uint64_t m_capacity = 0;
    std::uint64_t m_pos = 0;
  };

 private:
  static std::uint64_t* slot_words(std::byte* data, std::uint64_t index) noexcept {
    return reinterpret_cast<std::uint64_t*>(data + index * kSlotSize);
  }
  static void check(Segment& segment) {
    if (segment.spec().kind != RingKind::overwrite_ring)
      throw Error(Errc::invalid_argument, "segment does not hold an overwrite ring");
    if (segment.spec().slot_size != kSlotSize)
      throw Error(Errc::invalid_argument, "segment slot size does not match OverwriteRing<T>");
  }
};

}  // namespace ferry::shm
