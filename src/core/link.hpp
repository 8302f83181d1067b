// SPDX-License-Identifier: Apache-2.0
// The contract between core and a transport: a Link is one live connection to one peer, a
// Transport owns the links, the event loop and the timers. Layer: src/core (no I/O here).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <system_error>

namespace ferry::detail {

/// One live connection, implemented by a transport. Every method may be called from any
/// thread, with no core lock held, and must not block.
class Link {
 public:
  virtual ~Link() = default;
  /// The session has something to send (data, an ack, a close): start writing if idle.
  virtual void kick() = 0;
  /// The receive queue has room again: continue reading if reading was paused.
  virtual void resume_reading() = 0;
  /// Reads what has arrived, on the calling thread (a get() that found its queue empty), into
  /// the receive queue. True if it delivered a message. Must not block; a transport that
  /// reads only on its own threads returns false (the default). last false: the caller polls
  /// again at once (get()'s spin), so the transport need not arrange to be woken; every
  /// series of polls ends with a call with last true.
  /// wake_fd (with last, from a get() about to sleep): when nothing arrived, the link may
  /// arrange that the peer's next message makes this descriptor readable instead of waking
  /// the transport's thread, and set *wake_fd to it (else -1). The caller then sleeps until it
  /// is readable and, awake for whatever reason, polls again with last true and no wake_fd,
  /// which hands the wake-up back (and empties the descriptor: the caller never reads it).
  /// woken (with that hand-back): the caller slept and its sleep reported descriptors ready,
  /// so a wake-up may be waiting to be read; without it, the link reads its descriptor only if
  /// it knows a wake-up was sent (a system call saved on every get() that did not sleep).
  virtual bool poll_receive(bool last, int* wake_fd = nullptr, bool woken = false) {
    (void)last;
    (void)woken;
    if (wake_fd != nullptr) *wake_fd = -1;
    return false;
  }
  /// Drop the connection (the session ends or resumes elsewhere). Idempotent.
  virtual void shutdown(std::error_code why) = 0;
  /// The transport's name ("tcp", "tls", "shm") and the peer's address.
  [[nodiscard]] virtual std::string transport() const = 0;
  [[nodiscard]] virtual std::string remote() const = 0;
  /// How the transport runs this link (stats' transport_detail), "" when nothing to add.
  [[nodiscard]] virtual std::string detail() const { return {}; }
};

/// What a communicator needs from its transport beyond links.
class Transport {
 public:
  virtual ~Transport() = default;
  /// The endpoint in use (a server bound to port 0 reports the real port).
  [[nodiscard]] virtual std::string local_endpoint() const = 0;
  /// Runs fn on a transport thread after delay (core's session expiry). Dropped after stop().
  virtual void schedule(std::chrono::milliseconds delay, std::function<void()> fn) = 0;
  /// Stops accepting / reconnecting, drops every link, joins the threads. Idempotent; must
  /// not be called from a transport thread.
  virtual void stop() = 0;
  /// Its links read on the caller's thread (Link::poll_receive()): get() asks them before
  /// it sleeps.
  [[nodiscard]] virtual bool reads_on_caller() const { return false; }
  /// How long get() polls such links before it sleeps when Options::receive_spin is shorter:
  /// the peer writes from another process, so polling steals no CPU from it.
  [[nodiscard]] virtual std::chrono::microseconds poll_spin() const { return std::chrono::microseconds::zero(); }
  /// Fault injection for tests: every live link fails as a broken connection would (the
  /// peer sees it drop; sessions detach and resume). Default: nothing to cut.
  virtual void cut_links() {}
};

}  // namespace ferry::detail
