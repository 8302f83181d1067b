// SPDX-License-Identifier: Apache-2.0
// The only file that includes <linux/futex.h>. Layer: shm/.
#include "ferry/shm/futex.hpp"

#include <linux/futex.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <ctime>

namespace ferry::shm {

static_assert(sizeof(std::atomic<std::uint32_t>) == sizeof(std::uint32_t));

void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                std::chrono::nanoseconds timeout) noexcept {
  if (timeout.count() <= 0) return;
  timespec ts{};
  ts.tv_sec = static_cast<time_t>(timeout.count() / 1'000'000'000);
  ts.tv_nsec = static_cast<long>(timeout.count() % 1'000'000'000);
  // Shared futex (no FUTEX_PRIVATE_FLAG): keyed on the page, so it works across processes.
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT, expected, &ts,
            nullptr, 0);
}

void futex_wake(std::atomic<std::uint32_t>& word, int count) noexcept {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, count, nullptr,
            nullptr, 0);
}

void wake_fd_notify(int fd) noexcept {
  const std::byte b{1};
  // EAGAIN (the peer's queue full) still leaves its end readable: the peer wakes.
  if (::send(fd, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL) >= 0 || errno != ENOTSOCK) return;
  // EAGAIN (the counter at its maximum) still leaves the descriptor readable: the peer wakes.
  (void)::eventfd_write(fd, 1);
}

}  // namespace ferry::shm
