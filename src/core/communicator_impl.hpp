// SPDX-License-Identifier: Apache-2.0
// CommunicatorImpl: the sessions, the receive queue and the put/get/close contract, shared by
// every transport. Layer: src/core.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>

#include <boost/container/small_vector.hpp>

#include <ferry/communicator.hpp>
#include <ferry/endpoint.hpp>

#include "core/link.hpp"
#include "core/session.hpp"
#include "framing/frame.hpp"

namespace ferry::detail {

class CommunicatorImpl {
 public:
  CommunicatorImpl(Purpose purpose, Options options, Endpoint endpoint);
  ~CommunicatorImpl();
  CommunicatorImpl(const CommunicatorImpl&) = delete;
  CommunicatorImpl& operator=(const CommunicatorImpl&) = delete;

  /// Creates the transport: a server listens, a client connects and handshakes (throws).
  void start();

  // --- the public API ---
  [[nodiscard]] const Options& options() const noexcept { return m_options; }
  [[nodiscard]] const Endpoint& endpoint() const noexcept { return m_endpoint; }
  [[nodiscard]] Purpose purpose() const noexcept { return m_purpose; }
  [[nodiscard]] std::string local_endpoint() const;
  PutHandle put(Payload payload, std::span<const PeerId> peers);
  /// Waits up to timeout (max: forever). nullopt on timeout; throws once closed and drained.
  std::optional<Message> get(std::chrono::nanoseconds timeout);
  std::optional<Message> try_get() noexcept;
  void close();
  [[nodiscard]] bool closed() const noexcept;
  [[nodiscard]] std::vector<PeerId> peers() const;
  [[nodiscard]] Stats stats() const;
  /// Fault injection for tests: see Transport::cut_links().
  void cut_links_for_testing() {
    if (m_transport) m_transport->cut_links();
  }

  // --- called by transports (transport threads) ---
  /// Server: a client's hello arrived on link. Picks or creates its session, attaches the
  /// link and fills the reply. A refusal (Errc returned, why set) is sent in reply.status.
  [[nodiscard]] Errc accept_client(const framing::Hello& hello, const std::shared_ptr<Link>& link,
                                   framing::Hello& reply, std::shared_ptr<Session>& session,
                                   std::uint64_t& next_expected, std::string& why);
  /// Client: the hello to send on a new connection.
  /// `wire`: the link is a byte stream that honours ConnectionOptions::checksums (not shm).
  void client_hello(framing::Hello& hello, bool wire) const;
  /// Client: the server's reply arrived; attach the link to our session.
  [[nodiscard]] Errc attach_server(const framing::Hello& reply, const std::shared_ptr<Link>& link,
                                   std::shared_ptr<Session>& session, std::uint64_t& next_expected,
                                   std::string& why);
  /// Client: the session still wants a connection (it is detached, not ended).
  [[nodiscard]] bool wants_reconnect() const;
  /// Client: reconnecting failed for good.
  void reconnect_failed(std::error_code why);
  /// A complete message from session's peer. Returns false when the peer's receive queue is
  /// full: the reader must pause until its link's resume_reading().
  /// notify false: the caller delivers a batch and calls wake_getters() once after it.
  [[nodiscard]] bool deliver(const std::shared_ptr<Session>& session, Bytes message, bool notify = true);
  /// Wakes get() callers after deliver(..., false).
  void wake_getters();
  /// Threads sleeping in get() (a transport need not poll for more when one waits).
  [[nodiscard]] bool getters_waiting() const noexcept {
    // relaxed: a hint for a transport's spin; no data hangs on it.
    return m_getters_waiting.load(std::memory_order_relaxed) != 0;
  }
  /// A frame header this side is configured to accept.
  [[nodiscard]] std::uint32_t max_chunk() const noexcept;

  // --- called by sessions ---
  void peer_disconnected(Session& session, std::error_code why);
  void session_detached(const std::shared_ptr<Session>& session, std::uint64_t epoch);
  void session_ended(Session& session, std::error_code why);

 private:
  struct Received {
    Message message;
    std::shared_ptr<Session> session;
  };
  std::optional<Message> pop_locked(std::unique_lock<std::mutex>& lock);
  void throw_if_done_locked() const;
  /// Runs on_connect; an exception from it is swallowed (it must not unwind a transport thread).
  void notify_connect(const PeerId& peer) const noexcept;
  void fill_limits(framing::Hello& hello) const;
  using LinkList = boost::container::small_vector<std::shared_ptr<Link>, 4>;
  using WakeFds = boost::container::small_vector<int, 4>;
  /// The links get() polls (at most 16, see poll_links()).
  LinkList links_to_poll() const;
  /// get() found the queue empty: links that read on the caller's thread read now. True if a
  /// message arrived. One get() polls one list throughout and ends with last: every link that
  /// was polled with last false is polled again with last true (it restores its wake-up then).
  /// wake_fds (with last): the descriptors the links will wake this thread by (see
  /// Link::poll_receive()); each such link must be polled again with last true once awake.
  bool poll_links(const LinkList& links, bool last, WakeFds* wake_fds = nullptr);
  /// get() sleeps on its links' wake_fds and m_wake_fd until a message (or the end) is there,
  /// the deadline (max: none), or no link hands its wake-up over; the links have their
  /// wake-ups back on return. lock holds m_rx_mutex on entry and on return.
  void sleep_on_links(std::unique_lock<std::mutex>& lock, const LinkList& links, WakeFds& fds,
                      std::chrono::steady_clock::time_point deadline);
  /// Polls each link of a get() that slept on fds (non-empty) with last true: reads what came
  /// and gives the links their wake-ups back; clears fds. Never throws; m_rx_mutex not held.
  void hand_back(const LinkList& links, WakeFds& fds, bool woken = false) noexcept;
  /// Wakes threads in get(): one (a message arrived) or all (what they wait for changed).
  void notify_getters(bool all);

  const Purpose m_purpose;
  const Options m_options;
  const Endpoint m_endpoint;
  std::unique_ptr<Transport> m_transport;

  mutable std::mutex m_sessions_mutex;
  std::unordered_map<PeerId, std::shared_ptr<Session>> m_sessions;
  std::shared_ptr<Session> m_server;  // client: the session with its server

  mutable std::mutex m_rx_mutex;
  std::condition_variable m_rx_cv;
  std::deque<Received> m_rx;
  std::uint64_t m_rx_bytes = 0;
  std::atomic<std::size_t> m_rx_count{0};  // m_rx.size(), readable without the lock
  // get()'s poll before it sleeps: receive_spin (0 when this process has one CPU), at least the
  // transport's poll_spin() when its links read on the caller's thread.
  std::chrono::microseconds m_get_spin{0};
  bool m_poll_links = false;  // the transport's links read on the caller's thread
  std::atomic<unsigned> m_getters_waiting{0};
  // Threads in get() sleeping on their links' descriptors rather than m_rx_cv: notify_getters()
  // writes m_wake_fd (an eventfd semaphore: one count per thread to wake) for them. Changed
  // under m_rx_mutex; read after a change to the queue made under it (see notify_getters()).
  std::atomic<unsigned> m_fd_sleepers{0};
  int m_wake_fd = -1;
  std::error_code m_terminal;  // client: why the session with the server ended

  std::condition_variable m_ended_cv;  // with m_sessions_mutex: a session ended
  std::atomic<bool> m_closed{false};   // close() began: puts fail
  bool m_stopped = false;              // close() finished (guarded by m_rx_mutex): get() throws
  std::mutex m_close_mutex;  // one close() at a time
};

/// The transport for an endpoint (src/core/registry.cpp).
std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner);

}  // namespace ferry::detail
