// SPDX-License-Identifier: Apache-2.0
// What the byte ring and the typed ring share: attaching an end to a segment, publishing
// positions, the wake-up handshake, closing, and peer liveness. Positions count bytes in
// the byte ring and slots in the typed ring. Layer: shm/ (internal).
#pragma once

#include <atomic>
#include <cstdint>

#include "ferry/shm/layout.hpp"
#include "ferry/shm/process.hpp"
#include "ferry/shm/segment.hpp"
#include "ferry/shm/wait.hpp"

namespace ferry::shm::detail {

enum class Role { producer, consumer };

/// Claims the producer or consumer role of `segment` for this process (one of each per
/// segment lifetime). Throws ferry::Error: invalid_argument (wrong ring kind),
/// address_in_use (the role is held by a live process), peer_lost (it was held by a process
/// that died: the ring cannot be resumed), closed (the role was closed).
void attach(Segment& segment, RingKind kind, Role role);

/// Common state of both ends. Not thread-safe: one thread drives an end at a time.
class RingEnd {
 public:
  RingEnd(const RingEnd&) = delete;
  RingEnd& operator=(const RingEnd&) = delete;

  /// Capacity in bytes (byte ring) or slots (typed ring).
  [[nodiscard]] std::uint64_t capacity() const noexcept { return m_capacity; }

  /// The peer waits in an event loop (see announce_sleep()) on this descriptor (a datagram
  /// socket or an eventfd, see wake_fd_notify()), not on the segment's futex. -1 (the
  /// default): the futex. A peer with two waiting threads gives a second one, used when it
  /// announced kSleepingSecond. The descriptors must stay open while this end is used.
  void set_peer_wake_fd(int fd, int second_fd = -1) noexcept {
    m_peer_wake_fd = fd;
    m_peer_wake_fd2 = second_fd;
  }

 protected:
  RingEnd(Segment& segment, RingKind kind, Role role, const WaitOptions& wait);
  RingEnd(RingEnd&& other) noexcept;
  ~RingEnd() = default;

  // True if the process at the other end died without closing.
  [[nodiscard]] bool peer_gone(Role peer) const noexcept {
    const auto& ctl = *m_ctl;
    // relaxed: the identity is compared with /proc only; the closed flag is re-read with
    // acquire by the caller's poll before anything is reported.
    const layout::Identity owner = peer == Role::producer
                                       ? ctl.producer.owner.load(std::memory_order_relaxed)
                                       : ctl.consumer.owner.load(std::memory_order_relaxed);
    const auto& closed = peer == Role::producer ? ctl.wait.producer_closed : ctl.wait.consumer_closed;
    // relaxed: see above.
    return owner != 0 && closed.load(std::memory_order_relaxed) == 0 && !is_alive(owner);
  }

  // Whether a read and a write position can describe this ring: ordered, at most a ring
  // apart, and record-aligned in the byte ring. Every position read from the segment passes
  // here before it is used, so a corrupt or hostile peer cannot steer an access out of bounds.
  [[nodiscard]] bool positions_valid(std::uint64_t read_pos, std::uint64_t write_pos) const noexcept {
    return read_pos <= write_pos && write_pos - read_pos <= m_capacity &&
           ((read_pos | write_pos) & m_align_mask) == 0;
  }

  layout::Control* m_ctl;
  std::byte* m_data;
  std::uint64_t m_capacity;
  std::uint64_t m_mask;
  std::uint64_t m_align_mask;  // kRecordAlign - 1 in the byte ring, 0 in the typed ring
  WaitOptions m_wait;
  int m_peer_wake_fd = -1;  // descriptor the peer sleeps on, or -1: the futex
  int m_peer_wake_fd2 = -1;  // the one for a peer asleep with kSleepingSecond, or -1
  bool m_closed = false;  // this end called close(): every operation reports closed
};

/// Producer side: owns write_pos. `m_write_pos` counts everything committed; the segment's
/// write_pos is published every `batch` commits, at flush(), when the ring is full, when the
/// consumer announced sleep, and before any blocking wait.
class ProducerEnd : public RingEnd {
 public:
  /// Publishes every commit not yet published and wakes a sleeping consumer.
  /// Thread: the producer thread. Never blocks; one system call only if the consumer sleeps.
  void flush() noexcept {
    if (m_write_pos != m_published_pos) publish();
  }

  /// Marks the ring closed for writing and wakes the consumer, which reads what was
  /// committed and then gets Status::closed. Idempotent; afterwards every call of this end
  /// reports closed. Also done by the destructor.
  void close() noexcept;

  /// Position up to which this producer has committed (bytes or slots since creation).
  [[nodiscard]] std::uint64_t position() const noexcept { return m_write_pos; }

  /// External waiting, after a reservation that found no space: ends the sleep announced by
  /// announce_sleep() once this side woke up (its event loop returned).
  void end_sleep() noexcept {
    // relaxed: only this side sets the flag; a waker's reset to 0 is the same value.
    m_ctl->wait.producer_sleeping.store(0, std::memory_order_relaxed);
  }

 protected:
  ProducerEnd(Segment& segment, RingKind kind, const WaitOptions& wait, std::uint32_t batch);
  ProducerEnd(ProducerEnd&& other) noexcept;
  ~ProducerEnd() { close(); }

  void publish() noexcept {
    // sync(ring.wake): with the seq_cst load in wake_if_sleeping(), pairs with the consumer's
    // seq_cst store of consumer_sleeping, then load of write_pos, in wait_until(): either it
    // sees this position or we see it sleeping.
    // sync(ring.publish) seq_cst store: releases the records/slots before m_write_pos.
    // Partner: acquire load of write_pos in ConsumerEnd::refresh_write_pos().
    m_ctl->producer.write_pos.store(m_write_pos, std::memory_order_seq_cst);
    m_published_pos = m_write_pos;
    m_unpublished = 0;
    wake_if_sleeping(m_ctl->wait.consumer_sleeping, m_peer_wake_fd, m_peer_wake_fd2);
  }

  // After a commit: publish at batch boundaries, at half a ring of unpublished data, or
  // when the consumer announced that it sleeps.
  void after_commit() noexcept {
    if (++m_unpublished >= m_batch || m_write_pos - m_published_pos >= m_half_capacity) {
      publish();
      return;
    }
    // relaxed: a hint only. A consumer that announces sleep after this load is woken at the
    // next publication point (its re-check pairs with publish()).
    if (m_ctl->wait.consumer_sleeping.load(std::memory_order_relaxed) != 0) publish();
  }

  // True once the consumer closed: then nothing more may be written.
  [[nodiscard]] bool consumer_closed() const noexcept {
    // relaxed: the wait line is already in this core's cache (after_commit reads it); a close
    // that lands just after this check loses only what the consumer would never have read.
    return m_ctl->wait.consumer_closed.load(std::memory_order_relaxed) != 0;
  }

  // Reloads the consumer's position; false if it is impossible (corrupt or hostile peer).
  [[nodiscard]] bool refresh_read_pos() noexcept {
    // sync(ring.free) acquire: pairs with the consumer's release/seq_cst store of read_pos in
    // store_read_pos()/publish_read(); its reads of the freed space are complete.
    const std::uint64_t read_pos = m_ctl->consumer.read_pos.load(std::memory_order_acquire);
    if (!positions_valid(read_pos, m_write_pos)) return false;
    m_cached_read_pos = read_pos;
    return true;
  }

  // The status of a producer that found no space: publishes (the consumer must see all
  // it can read before the producer waits), then reports closed or would_block.
  [[nodiscard]] Status full_status() noexcept {
    flush();
    // sync(ring.close) acquire: pairs with the seq_cst store in Consumer close().
    if (m_ctl->wait.consumer_closed.load(std::memory_order_acquire) != 0) return Status::closed;
    return Status::would_block;
  }

  // External waiting: publishes, announces that this producer sleeps until `units` are free,
  // and re-checks. False (the announcement withdrawn): the space is there or the consumer
  // closed; try again at once. True: the consumer's next release wakes this side.
  [[nodiscard]] bool announce_sleep_units(std::uint64_t units) noexcept {
    flush();
    // sync(ring.wake) seq_cst store: as the sleeper's store in wait_until(); partner of the
    // consumer's seq_cst store of read_pos, then load of producer_sleeping.
    m_ctl->wait.producer_sleeping.store(1, std::memory_order_seq_cst);
    // sync(ring.wake) seq_cst loads: the re-check of wait_for_space().
    const std::uint64_t read_pos = m_ctl->consumer.read_pos.load(std::memory_order_seq_cst);
    if (m_write_pos + units - read_pos <= m_capacity ||
        m_ctl->wait.consumer_closed.load(std::memory_order_seq_cst) != 0) {
      end_sleep();
      return false;
    }
    return true;
  }

  // Blocks until `units()` are free (bytes or slots; re-evaluated, as padding written by a
  // failed attempt changes it), the deadline passes or the consumer is closed or gone.
  // `poll` retries the caller's non-blocking operation.
  template <class Units, class Poll>
  Status wait_for_space(Units&& units, Clock::time_point deadline, Poll&& poll) {
    flush();
    return wait_until(
        m_wait, m_ctl->wait.producer_sleeping, deadline, poll,
        [&] {
          // sync(ring.wake) seq_cst loads: pair with the consumer's seq_cst store of
          // read_pos / consumer_closed before its load of producer_sleeping.
          const std::uint64_t read_pos = m_ctl->consumer.read_pos.load(std::memory_order_seq_cst);
          return m_write_pos + units() - read_pos <= m_capacity ||
                 m_ctl->wait.consumer_closed.load(std::memory_order_seq_cst) != 0;
        },
        [&] { return peer_gone(Role::consumer); });
  }

  std::uint64_t m_write_pos = 0;       // committed (private)
  std::uint64_t m_published_pos = 0;   // last value stored to the segment's write_pos
  std::uint64_t m_cached_read_pos = 0; // the consumer's position as last seen
  std::uint32_t m_unpublished = 0;
  std::uint32_t m_batch;
  std::uint64_t m_half_capacity;
};

/// Consumer side: owns read_pos. Released space is published in batches (every sixteenth of
/// the ring), and always when the ring runs empty, at the next release once the producer has
/// announced that it sleeps, at flush() and at close: so a full ring moves the consumer's line
/// once per batch, not once per message. A consumer that stops reading with a partial batch
/// released should flush(), or the producer sees up to a sixteenth of the ring less space.
class ConsumerEnd : public RingEnd {
 public:
  /// Marks the ring closed for reading; the producer's next full ring reports closed.
  /// Idempotent; afterwards every call of this end reports closed. Also done by the
  /// destructor.
  void close() noexcept;

  /// Publishes every release not yet published (see the class comment) and wakes a
  /// producer waiting for space. Call it when this consumer stops reading for a while.
  /// Thread: the consumer thread. Never blocks; one system call only if the producer sleeps.
  void flush() noexcept {
    if (m_dirty && !m_closed) publish_read();
  }

  /// Position up to which this consumer has released (bytes or slots since creation).
  [[nodiscard]] std::uint64_t position() const noexcept { return m_read_pos; }

  /// External waiting (an event loop instead of the blocking calls), after a try_peek() or
  /// try_pop() that found the ring empty: publishes what was released, announces that this
  /// consumer sleeps and re-checks. False (the announcement withdrawn): a record or the close
  /// is already visible; read again. True: the producer's next publication or close wakes
  /// this side, through the futex or the descriptor the producer end was given
  /// (set_peer_wake_fd()). Call end_sleep() once awake. second: wake the producer's second
  /// descriptor instead (another thread of this side waits on it).
  /// soon: announce layout::kSleepingSoon instead of 1 (this side is likely to poll again at
  /// once; the producer waits a moment for the announcement to be withdrawn before waking).
  [[nodiscard]] bool announce_sleep(bool second = false, bool soon = false) noexcept {
    flush();
    const std::uint32_t value = second ? layout::kSleepingSecond : soon ? layout::kSleepingSoon : 1;
    // sync(ring.wake) seq_cst store: as the sleeper's store in wait_until(); partner of the
    // producer's seq_cst store of write_pos, then load of consumer_sleeping.
    m_ctl->wait.consumer_sleeping.store(value, std::memory_order_seq_cst);
    // sync(ring.wake) seq_cst loads: the re-check of wait_for_data().
    if (m_ctl->producer.write_pos.load(std::memory_order_seq_cst) != m_read_pos ||
        m_ctl->wait.producer_closed.load(std::memory_order_seq_cst) != 0) {
      end_sleep();
      return false;
    }
    return true;
  }
  /// Ends the sleep announced by announce_sleep().
  void end_sleep() noexcept {
    // relaxed: only this side sets the flag; a waker's reset to 0 is the same value.
    m_ctl->wait.consumer_sleeping.store(0, std::memory_order_relaxed);
  }
  /// Withdraws a sleep announced by announce_sleep(true). True: the announcement was still
  /// up, so the producer sent no wake-up to the second descriptor and none will come; false:
  /// the producer took it first (its wake-up was or is about to be sent), or the word holds
  /// another announcement, which is left as it is.
  [[nodiscard]] bool withdraw_second_sleep() noexcept {
    std::uint32_t expected = layout::kSleepingSecond;
    // sync(ring.wake) seq_cst: this exchange or the producer's in wake_if_sleeping() takes it.
    return m_ctl->wait.consumer_sleeping.compare_exchange_strong(expected, 0, std::memory_order_seq_cst);
  }

 protected:
  ConsumerEnd(Segment& segment, RingKind kind, const WaitOptions& wait);
  ConsumerEnd(ConsumerEnd&& other) noexcept;
  ~ConsumerEnd() { close(); }

  // After a release.
  void store_read_pos() noexcept {
    m_dirty = true;
    if (m_read_pos - m_stored_read_pos >= m_read_batch) {
      // sync(ring.free) release: our reads of the released space happen before the producer
      // reuses it. Partner: acquire load of read_pos in ProducerEnd::refresh_read_pos().
      m_ctl->consumer.read_pos.store(m_read_pos, std::memory_order_release);
      m_stored_read_pos = m_read_pos;
    }
    // relaxed: a hint only; a producer that sleeps anyway is woken by the next publication
    // (batch, empty ring, flush() or close).
    if (m_ctl->wait.producer_sleeping.load(std::memory_order_relaxed) != 0) publish_read();
  }

  void publish_read() noexcept {
    // sync(ring.wake) seq_cst store: pairs with the producer's seq_cst store of
    // producer_sleeping and its seq_cst load of read_pos in wait_for_space(). Also the
    // release of ring.free (see store_read_pos()).
    m_ctl->consumer.read_pos.store(m_read_pos, std::memory_order_seq_cst);
    m_stored_read_pos = m_read_pos;
    m_dirty = false;
    wake_if_sleeping(m_ctl->wait.producer_sleeping, m_peer_wake_fd, m_peer_wake_fd2);
  }

  // Reloads the producer's published position when everything up to the cached one was
  // read. ok: more to read; otherwise would_block, closed or protocol_error.
  [[nodiscard]] Status refresh_write_pos() noexcept {
    for (int pass = 0; pass < 2; ++pass) {
      // sync(ring.publish) acquire: pairs with the seq_cst (so also release) store of
      // write_pos in ProducerEnd::publish(); every record or slot before it is written.
      const std::uint64_t write_pos = m_ctl->producer.write_pos.load(std::memory_order_acquire);
      if (!positions_valid(m_read_pos, write_pos)) return Status::protocol_error;
      m_cached_write_pos = write_pos;
      if (write_pos != m_read_pos) return Status::ok;
      if (m_dirty) publish_read();
      // sync(ring.close) acquire: pairs with the seq_cst store in ProducerEnd::close(), made
      // after the last publication: look at write_pos once more before reporting closed.
      if (m_ctl->wait.producer_closed.load(std::memory_order_acquire) == 0)
        return Status::would_block;
    }
    return Status::closed;
  }

  template <class Poll>
  Status wait_for_data(Clock::time_point deadline, Poll&& poll) {
    return wait_until(
        m_wait, m_ctl->wait.consumer_sleeping, deadline, poll,
        [&] {
          // sync(ring.wake) seq_cst loads: pair with the producer's seq_cst store of
          // write_pos / producer_closed before its load of consumer_sleeping.
          return m_ctl->producer.write_pos.load(std::memory_order_seq_cst) > m_read_pos ||
                 m_ctl->wait.producer_closed.load(std::memory_order_seq_cst) != 0;
        },
        [&] { return peer_gone(Role::producer); });
  }

  std::uint64_t m_read_pos = 0;
  std::uint64_t m_stored_read_pos = 0;   // last value stored to the segment's read_pos
  std::uint64_t m_cached_write_pos = 0;  // the producer's position as last seen
  std::uint64_t m_read_batch;            // store read_pos after this many units
  bool m_dirty = false;  // released since the last seq_cst publication
};

}  // namespace ferry::shm::detail
