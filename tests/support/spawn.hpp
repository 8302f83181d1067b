// SPDX-License-Identifier: Apache-2.0
// Spawning the test peer (tests/support/peer_main.cpp) with posix_spawn, and waiting for it
// with a deadline: a hang is a failure, never a stuck test.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ferry::test {

/// Path of the peer binary (set by CTest through FERRY_TEST_PEER).
inline std::string peer_path() {
  const char* p = std::getenv("FERRY_TEST_PEER");
  if (p == nullptr) throw std::runtime_error("FERRY_TEST_PEER is not set (run through ctest)");
  return p;
}

class Child {
 public:
  /// Starts `args` (args[0] is the program). `keep_fd` (if >= 0) is inherited as the same
  /// number. stdout goes to a pipe readable with read_line() if `capture` is set.
  explicit Child(const std::vector<std::string>& args, int keep_fd = -1, bool capture = false) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    int out[2] = {-1, -1};
    if (capture) {
      if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe");
      posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    }
    if (keep_fd >= 0) {
      // dup2 onto itself would keep O_CLOEXEC; go through a spare number and back.
      posix_spawn_file_actions_adddup2(&actions, keep_fd, 200);
      posix_spawn_file_actions_adddup2(&actions, 200, keep_fd);
      posix_spawn_file_actions_addclose(&actions, 200);
    }
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    const int rc = posix_spawn(&m_pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (capture) {
      ::close(out[1]);
      m_out = out[0];
    }
    if (rc != 0) throw std::runtime_error("posix_spawn " + args[0] + " failed: " + std::to_string(rc));
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (m_pid > 0 && !m_reaped) {
      ::kill(m_pid, SIGKILL);
      int st = 0;
      ::waitpid(m_pid, &st, 0);
    }
    if (m_out >= 0) ::close(m_out);
  }

  pid_t pid() const { return m_pid; }
  void kill(int sig = SIGKILL) const { ::kill(m_pid, sig); }

  /// Waits up to `timeout`; returns the exit code, 128+signal if killed by a signal, or -1
  /// on timeout (the child is then killed).
  int wait(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int st = 0;
      const pid_t r = ::waitpid(m_pid, &st, WNOHANG);
      if (r == m_pid) {
        m_reaped = true;
        if (WIFEXITED(st)) return WEXITSTATUS(st);
        if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
        return -2;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(m_pid, SIGKILL);
        ::waitpid(m_pid, &st, 0);
        m_reaped = true;
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  /// Reads one line of the child's stdout (without the newline), "" at EOF.
  std::string read_line() {
    std::string line;
    char c = 0;
    while (::read(m_out, &c, 1) == 1) {
      if (c == '\n') return line;
      line += c;
    }
    return line;
  }

 private:
  pid_t m_pid = -1;
  int m_out = -1;
  bool m_reaped = false;
};

}  // namespace ferry::test
