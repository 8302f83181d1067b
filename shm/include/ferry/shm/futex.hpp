// SPDX-License-Identifier: Apache-2.0
// Thin wrappers over the futex system call on words in shared memory (never the private
// flavour: the waiter and the waker are usually different processes). Layer: shm/.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

namespace ferry::shm {

/// Sleeps while `*word == expected`, at most `timeout`. Returns on a wake, a timeout, a
/// signal, or at once if the word already differs. Callers always re-check their condition.
void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept;

/// Wakes up to `count` waiters sleeping on `word`.
void futex_wake(std::atomic<std::uint32_t>& word, int count) noexcept;

/// Wakes a peer that waits for `fd` in an event loop (epoll, poll) rather than on a futex (see
/// RingEnd::set_peer_wake_fd()). fd is a datagram socket whose other end the peer waits on (a
/// byte is sent with MSG_DONTWAIT: never blocks, whatever the peer did to the descriptor's
/// flags), or an eventfd (1 is added; non-blocking only if the descriptor is).
void wake_fd_notify(int fd) noexcept;

}  // namespace ferry::shm
