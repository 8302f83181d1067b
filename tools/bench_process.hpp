// SPDX-License-Identifier: Apache-2.0
// What ferry-bench's process-pair benchmarks share (comm, iops, rpc): CPU pinning, child
// processes with their output on a pipe, a watchdog that ends a stalled role, and the
// statistics they report. Layer: tools/.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

extern char** environ;

namespace ferry::bench {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

/// CPUs of the two processes: a runs the client (the sender), b the server.
struct Pin {
  int a = -1;
  int b = -1;
};

inline Pin parse_pin(const std::string& text) {
  if (text == "none")
    return {};
  if (text == "auto") {
    if (std::thread::hardware_concurrency() >= 2)
      return {0, 1};
    return {};
  }
  const auto comma = text.find(',');
  if (comma == std::string::npos)
    throw CLI::ValidationError("--pin", "expected A,B, auto or none");
  try {
    return {std::stoi(text.substr(0, comma)), std::stoi(text.substr(comma + 1))};
  } catch (const std::exception&) {
    throw CLI::ValidationError("--pin", "expected A,B, auto or none, not '" + text + "'");
  }
}

inline std::string pin_text(const Pin& pin) {
  return pin.a < 0 ? "none" : std::to_string(pin.a) + "," + std::to_string(pin.b);
}

template <class T> inline T median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

inline Clock::duration seconds_to_duration(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

inline double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

inline fs::path self_exe() {
  return fs::read_symlink("/proc/self/exe");
}

inline double peak_rss_mib() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_maxrss) / 1024.0; // ru_maxrss is in KiB on Linux
}

// Percentile by nearest rank (as ferry-asio-baseline computes it), of sorted values.
inline std::int64_t percentile(const std::vector<std::int64_t>& sorted, double q) {
  const auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

/// Ends the process with a message on stderr when nobody called kick() for `timeout`: bounds
/// every wait of a process role, close() and the destructors included. Thread: kick() and
/// phase() from any thread; the watchdog runs its own.
class Watchdog {
public:
  Watchdog(std::string role, Clock::duration timeout)
      : m_role(std::move(role)), m_timeout(timeout), m_thread([this] { run(); }) {}
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      const std::lock_guard lock(m_mutex);
      m_stop = true;
    }
    m_cv.notify_one();
    m_thread.join();
  }

  void phase(const char* what) noexcept {
    // relaxed: a string literal, only read for the error message.
    m_phase.store(what, std::memory_order_relaxed);
    kick();
  }
  /// What the process was doing, for error messages.
  [[nodiscard]] const char* phase() const noexcept {
    // relaxed: see phase(const char*).
    return m_phase.load(std::memory_order_relaxed);
  }
  void kick() noexcept {
    // relaxed: a flag polled every 100 ms, nothing is published through it; the load first
    // keeps the line shared while the flag is already set (two threads kick per message).
    if (!m_kicked.load(std::memory_order_relaxed))
      m_kicked.store(true, std::memory_order_relaxed);
  }

private:
  void run() {
    auto last_progress = Clock::now();
    std::unique_lock lock(m_mutex);
    while (!m_cv.wait_for(lock, std::chrono::milliseconds(100), [this] { return m_stop; })) {
      const auto now = Clock::now();
      // relaxed: see kick().
      if (m_kicked.exchange(false, std::memory_order_relaxed)) {
        last_progress = now;
      } else if (now - last_progress >= m_timeout) {
        std::fprintf(stderr, "ferry-bench %s: error: nothing happened for %.0f s while %s\n",
                     m_role.c_str(), std::chrono::duration<double>(m_timeout).count(), phase());
        std::_Exit(3);
      }
    }
  }

  alignas(64) std::atomic<bool> m_kicked{true};
  std::atomic<const char*> m_phase{"starting"};
  std::string m_role;
  Clock::duration m_timeout;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  bool m_stop = false;
  std::thread m_thread; // last: starts once the members above exist
};

/// A child process with its stdout on a pipe (stderr inherited, or merged into the pipe),
/// started on one CPU when cpu >= 0: the calling thread's affinity is set around the spawn and
/// the child inherits it (so this works for any program, the Asio baseline included).
class Process {
public:
  struct Spec {
    std::string name; // for messages
    fs::path program;
    std::vector<std::string> args;
    int cpu = -1;
    bool merge_stderr = false;
    bool search_path = false;
  };

  explicit Process(Spec spec) : m_name(std::move(spec.name)) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe2: " + std::string(std::strerror(errno)));
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    if (spec.merge_stderr)
      posix_spawn_file_actions_adddup2(&actions, out[1], STDERR_FILENO);
    std::vector<std::string> full{spec.program.string()};
    full.insert(full.end(), spec.args.begin(), spec.args.end());
    std::vector<char*> argv;
    for (auto& a : full)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    cpu_set_t saved;
    CPU_ZERO(&saved);
    bool pinned = false;
    int rc = 0;
    if (spec.cpu >= 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      CPU_SET(spec.cpu, &set);
      if (::sched_getaffinity(0, sizeof saved, &saved) != 0 ||
          ::sched_setaffinity(0, sizeof set, &set) != 0) {
        rc = errno;
      } else {
        pinned = true;
      }
    }
    if (rc == 0) {
      rc = spec.search_path
               ? ::posix_spawnp(&m_pid, full[0].c_str(), &actions, nullptr, argv.data(), environ)
               : ::posix_spawn(&m_pid, full[0].c_str(), &actions, nullptr, argv.data(), environ);
      if (rc != 0)
        m_pid = -1;
    } else {
      rc = -rc; // the affinity failed, not the spawn
    }
    if (pinned)
      ::sched_setaffinity(0, sizeof saved, &saved);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    m_out = out[0];
    if (rc < 0) {
      ::close(m_out);
      throw std::runtime_error("cannot run " + m_name + " on CPU " + std::to_string(spec.cpu) +
                               ": " + std::strerror(-rc));
    }
    if (rc != 0) {
      ::close(m_out);
      throw std::runtime_error("cannot start " + m_name + " (" + full[0] +
                               "): " + std::strerror(rc));
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGKILL);
      ::waitpid(m_pid, nullptr, 0);
    }
    ::close(m_out);
  }

  [[nodiscard]] const std::string& name() const noexcept { return m_name; }
  /// Sends it a signal (while it runs).
  void signal(int sig) const noexcept {
    if (m_pid > 0) ::kill(m_pid, sig);
  }

  /// The next line it prints, without the newline; nullopt at EOF. Throws at the deadline.
  std::optional<std::string> read_line(Clock::time_point deadline) {
    for (;;) {
      const auto nl = m_buf.find('\n');
      if (nl != std::string::npos) {
        std::string line = m_buf.substr(0, nl);
        m_buf.erase(0, nl + 1);
        return line;
      }
      if (m_eof) {
        if (m_buf.empty())
          return std::nullopt;
        return std::exchange(m_buf, {});
      }
      fill(deadline);
    }
  }

  /// Everything it prints until EOF. Throws at the deadline.
  std::string read_all(Clock::time_point deadline) {
    while (!m_eof)
      fill(deadline);
    return std::exchange(m_buf, {});
  }

  /// Its exit code (128 + the signal that ended it). Kills it and throws at the deadline.
  int wait(Clock::time_point deadline) {
    if (m_pid <= 0)
      return m_status;
    for (;;) {
      int st = 0;
      const pid_t r = ::waitpid(m_pid, &st, WNOHANG);
      if (r == m_pid) {
        m_pid = -1;
        m_status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return m_status;
      }
      if (r < 0 && errno != EINTR)
        throw std::runtime_error("waitpid " + m_name + ": " + std::strerror(errno));
      if (Clock::now() >= deadline) {
        ::kill(m_pid, SIGKILL);
        ::waitpid(m_pid, nullptr, 0);
        m_pid = -1;
        throw std::runtime_error(m_name + " did not exit in time (killed)");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

private:
  void fill(Clock::time_point deadline) {
    for (;;) {
      int wait_ms = -1;
      if (deadline != Clock::time_point::max()) {
        const auto left =
            std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0)
          throw std::runtime_error(m_name + " printed nothing more before its deadline");
        wait_ms = static_cast<int>(std::min<long long>(left, 60'000));
      }
      pollfd pfd{m_out, POLLIN, 0};
      const int ready = ::poll(&pfd, 1, wait_ms);
      if (ready < 0 && errno != EINTR)
        throw std::runtime_error("poll: " + std::string(std::strerror(errno)));
      if (ready <= 0)
        continue;
      char buf[4096];
      const ssize_t n = ::read(m_out, buf, sizeof buf);
      if (n > 0) {
        m_buf.append(buf, static_cast<std::size_t>(n));
        return;
      }
      if (n == 0) {
        m_eof = true;
        return;
      }
      if (errno != EINTR)
        throw std::runtime_error("read from " + m_name + ": " + std::strerror(errno));
    }
  }

  std::string m_name;
  pid_t m_pid = -1;
  int m_out = -1;
  int m_status = -1;
  std::string m_buf;
  bool m_eof = false;
};


/// The JSON after "result " in a line a role prints, or an error naming the process.
inline json read_result(Process& p, Clock::time_point deadline) {
  for (;;) {
    const auto line = p.read_line(deadline);
    if (!line) {
      const int rc = p.wait(Clock::now() + std::chrono::seconds(10));
      throw std::runtime_error(p.name() + " ended without a result (exit code " +
                               std::to_string(rc) + ")");
    }
    if (line->rfind("result ", 0) == 0)
      return json::parse(line->substr(7));
    if (!line->empty() && line->front() == '{')
      return json::parse(*line); // the Asio baseline
  }
}

inline void expect_clean_exit(Process& p) {
  const int rc = p.wait(Clock::now() + std::chrono::seconds(30));
  if (rc != 0)
    throw std::runtime_error(p.name() + " exited with code " + std::to_string(rc));
}

}  // namespace ferry::bench
