// SPDX-License-Identifier: Apache-2.0
// Wait strategy: spin with a pause instruction for a bounded budget, then sleep on a futex
// in the segment; sleeps are sliced so a waiter re-checks that its peer is alive.
// Layer: shm/.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

#include "ferry/error.hpp"
#include "ferry/shm/futex.hpp"
#include "ferry/shm/layout.hpp"

namespace ferry::shm {

using Clock = std::chrono::steady_clock;
/// A timeout that never expires (blocking calls still fail when the peer dies).
inline constexpr std::chrono::nanoseconds kForever = std::chrono::nanoseconds::max();

/// Outcome of a ring operation. The non-blocking `try_*` calls return it and never throw;
/// blocking calls throw ferry::Error with the matching Errc instead.
enum class Status : std::uint8_t {
  ok,
  would_block,        ///< full (producer) or empty (consumer) right now
  closed,             ///< the peer closed (consumer: after every committed message was read)
  message_too_large,  ///< larger than max_message_size() / the caller's buffer
  peer_lost,          ///< the peer process died (blocking calls only detect this)
  protocol_error,     ///< the segment's contents violate the format (corrupt or hostile peer)
  timed_out,          ///< blocking calls only
};

const char* to_string(Status s) noexcept;
Errc to_errc(Status s) noexcept;
/// Throws ferry::Error for a status other than ok. `context` names the operation.
[[noreturn]] void throw_status(Status s, const char* context);

enum class WaitMode : std::uint8_t {
  spin,   ///< busy-poll only (lowest latency, one core per waiter); peer still checked
  block,  ///< spin for `spin`, then sleep on a futex (idle CPU ~0)
};

struct WaitOptions {
  WaitMode mode = WaitMode::block;
  /// Spin budget before sleeping: about the cost of a futex wake-up on this class of
  /// machine (see benchmarks/wait_bench.cpp), so a short gap never pays for a sleep.
  std::chrono::nanoseconds spin{std::chrono::microseconds(20)};
  /// Longest single sleep; the peer's liveness is checked at least this often, so a dead
  /// peer is reported within about this interval.
  std::chrono::milliseconds liveness_interval{20};
};

/// Options of a ring's producer end (byte ring and typed ring).
struct ProducerOptions {
  WaitOptions wait{};
  /// Publish write_pos every `batch` commits (1: every commit). Larger batches save a full
  /// barrier and a cache-line handoff per message; messages become visible at publication:
  /// every `batch` commits, at flush(), when the ring is full or half a ring is unpublished,
  /// at the next commit once the consumer has announced that it sleeps, and before any
  /// blocking wait. Call flush() when a burst ends.
  std::uint32_t batch = 1;
};

/// One pause instruction: tells the core we are spinning (saves power, frees the sibling
/// hyper-thread, avoids the memory-order mis-speculation penalty on loop exit).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

inline Clock::time_point deadline_after(std::chrono::nanoseconds timeout) noexcept {
  const auto now = Clock::now();
  if (timeout >= Clock::time_point::max() - now) return Clock::time_point::max();
  return now + std::chrono::duration_cast<Clock::duration>(timeout);
}

namespace detail {

/// Wakes the side sleeping on `flag`, if it announced it sleeps: through the futex, or through
/// `wake_fd` (see wake_fd_notify()) when the sleeper waits in an event loop, or `second_fd` when it
/// announced layout::kSleepingSecond. The caller has just made its progress visible with a
/// seq_cst store (a position or a closed flag).
inline void wake_if_sleeping(std::atomic<std::uint32_t>& flag, int wake_fd = -1, int second_fd = -1) noexcept {
  // sync(ring.wake) seq_cst load: pairs with the sleeper's seq_cst store of 1 in
  // wait_until(). With the caller's preceding seq_cst store, either we see 1 here or the
  // sleeper's seq_cst re-check sees our progress: no lost wake-up.
  std::uint32_t seen = flag.load(std::memory_order_seq_cst);
  if (seen == 0) return;
  if (seen == layout::kSleepingSoon) {
    // The sleeper's side is about to poll again: give it a moment to withdraw the
    // announcement, after which its poll (or its next announcement's re-check) reads our
    // progress. A peer that keeps the word at this value costs us this wait per wake-up, no more.
    const auto until = Clock::now() + std::chrono::nanoseconds(layout::kSoonWaitNs);
    for (unsigned i = 1; seen == layout::kSleepingSoon; ++i) {
      cpu_relax();
      // sync(ring.wake) seq_cst load: as above; a 0 read here comes before the sleeper's next
      // seq_cst announcement, whose re-check then sees our preceding seq_cst store.
      seen = flag.load(std::memory_order_seq_cst);
      if ((i & 15) == 0 && Clock::now() >= until) break;
    }
    if (seen == 0) return;
  }
  // sync(ring.wake) seq_cst exchange: resetting the word makes a sleeper that has not yet
  // entered futex_wait return at once (the kernel compares the word with 1).
  const std::uint32_t was = flag.exchange(0, std::memory_order_seq_cst);
  if (was == 0) return;
  if (was == layout::kSleepingSecond && second_fd >= 0) {
    wake_fd_notify(second_fd);
  } else if (wake_fd >= 0) {
    wake_fd_notify(wake_fd);
  } else {
    futex_wake(flag, 1);
  }
}

/// The wait loop shared by every ring end.
///   poll():      the non-blocking attempt; returns would_block to keep waiting.
///   recheck():   after announcing sleep, true if progress is visible (seq_cst loads of the
///                peer's position and closed flag).
///   peer_gone(): true if the peer process died without closing.
template <class Poll, class Recheck, class PeerGone>
Status wait_until(const WaitOptions& options, std::atomic<std::uint32_t>& flag,
                  Clock::time_point deadline, Poll&& poll, Recheck&& recheck,
                  PeerGone&& peer_gone) {
  const auto start = Clock::now();
  auto next_check = start + options.liveness_interval;
  const auto spin_end = start + options.spin;
  // Returns timed_out / peer_lost when due, would_block to go on.
  auto periodic = [&](Clock::time_point now) -> Status {
    if (now >= next_check) {
      next_check = now + options.liveness_interval;
      if (peer_gone()) {
        const Status last = poll();  // drain what the peer committed before dying
        return last == Status::would_block ? Status::peer_lost : last;
      }
    }
    if (now >= deadline) return Status::timed_out;
    return Status::would_block;
  };

  const bool may_spin = options.mode == WaitMode::spin || options.spin.count() > 0;
  for (std::uint32_t i = 0; may_spin; ++i) {
    if (const Status s = poll(); s != Status::would_block) return s;
    cpu_relax();
    if ((i & 63) == 63) {
      const auto now = Clock::now();
      if (const Status s = periodic(now); s != Status::would_block) return s;
      if (options.mode == WaitMode::block && now >= spin_end) break;
    }
  }
  for (;;) {
    // sync(ring.wake) seq_cst store: announce that we may sleep, then re-check with seq_cst
    // loads. Partner: the waker's seq_cst store of its position, then seq_cst load of this
    // flag in wake_if_sleeping().
    flag.store(1, std::memory_order_seq_cst);
    if (!recheck()) {
      const auto now = Clock::now();
      const auto until = std::min(next_check, deadline);
      if (until > now) futex_wait(flag, 1, until - now);
    }
    // relaxed: only this side sets the flag; a waker's reset to 0 is the same value.
    flag.store(0, std::memory_order_relaxed);
    if (const Status s = poll(); s != Status::would_block) return s;
    if (const Status s = periodic(Clock::now()); s != Status::would_block) return s;
  }
}

}  // namespace detail
}  // namespace ferry::shm
