// SPDX-License-Identifier: Apache-2.0
// Process identity and liveness from /proc/<pid>/stat. Layer: shm/.
#include "ferry/shm/process.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>

namespace ferry::shm {
namespace {

// Reads /proc/<pid>/stat; returns false if the process does not exist.
// Fields after the command name (which may contain spaces and ')'): state is field 3,
// flags field 9, starttime field 22.
constexpr unsigned long kPfExiting = 0x4;  // PF_EXITING (linux/sched.h): in do_exit()

bool read_stat(std::uint64_t pid, char& state, std::uint64_t& start_time, unsigned long* flags = nullptr) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%llu/stat", static_cast<unsigned long long>(pid));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr || p[1] != ' ') return false;
  p += 2;
  state = *p;
  // Skip from field 3 (state) to field 22 (starttime): 19 separators.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (p == nullptr) return false;
    ++p;
    if (field + 1 == 9 && flags != nullptr) *flags = std::strtoul(p, nullptr, 10);
  }
  start_time = std::strtoull(p, nullptr, 10);
  return true;
}

}  // namespace

std::uint64_t process_start_time(std::uint64_t pid) {
  char state = 0;
  std::uint64_t start = 0;
  return read_stat(pid, state, start) ? start : 0;
}

layout::Identity self_identity() {
  // Cached per process: a fork()ed child must not report its parent's identity.
  static std::atomic<layout::Identity> cached{0};
  const auto pid = static_cast<std::uint64_t>(::getpid());
  // relaxed: a cache of a value any thread computes identically; no other data hangs on it.
  layout::Identity id = cached.load(std::memory_order_relaxed);
  if (id == 0 || layout::identity_pid(id) != pid) {
    id = layout::make_identity(pid, process_start_time(pid));
    cached.store(id, std::memory_order_relaxed);  // relaxed: as above
  }
  return id;
}

bool is_alive(layout::Identity id) {
  if (id == 0) return false;
  char state = 0;
  std::uint64_t start = 0;
  unsigned long flags = 0;
  if (!read_stat(layout::identity_pid(id), state, start, &flags)) return false;
  // A process that is exiting (killed: its descriptors close before it becomes a zombie)
  // will never answer again.
  if (state == 'Z' || state == 'X' || (flags & kPfExiting) != 0) return false;
  return start == layout::identity_start_time(id);
}

}  // namespace ferry::shm
