// SPDX-License-Identifier: Apache-2.0
// CommunicatorImpl (sessions, receive queue, put/get/close) and the public Communicator over
// it. Layer: src/core.
#include "core/communicator_impl.hpp"

#include "ferry/shm/wait.hpp"

#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <algorithm>
#include <thread>

#include <boost/container/small_vector.hpp>

namespace ferry::detail {
namespace {

std::error_code code(Errc e) { return make_error_code(e); }

/// A sanity bound on ConnectionOptions::message_size: beyond it a setting is a mistake (and a
/// peer announcing such a message could only be refused for lack of memory).
constexpr std::size_t kMaxMessageSize = std::size_t{1} << 40;

void check_options(const Options& o) {
  const auto& c = o.connection;
  const auto bad = [](const std::string& what) { throw Error(Errc::invalid_argument, "options: " + what); };
  if (c.transport_size == 0 || c.transport_size > framing::kMaxChunk) bad("transport_size must be in [1, 1 GiB]");
  if (c.message_size == 0 || c.message_size > kMaxMessageSize) bad("message_size must be in [1, 1 TiB]");
  if (c.send_window == 0) bad("send_window must be > 0");
  if (c.send_queue_messages == 0 || c.send_queue_bytes == 0) bad("send queue bounds must be > 0");
  if (c.receive_queue_messages == 0 || c.receive_queue_bytes == 0) bad("receive queue bounds must be > 0");
  if (c.max_connections == 0) bad("max_connections must be > 0");
  if (c.keepalive_interval.count() <= 0 || c.keepalive_timeout <= c.keepalive_interval) {
    bad("keepalive_timeout must exceed keepalive_interval > 0");
  }
  if (c.connect_timeout.count() <= 0 || c.handshake_timeout.count() <= 0 || c.close_timeout.count() < 0 ||
      c.resume_timeout.count() < 0) {
    bad("timeouts must be positive");
  }
  if (o.workers == 0 || o.workers > 256) bad("workers must be in [1, 256]");
  if (o.receive_spin.count() < 0 || o.receive_spin > std::chrono::milliseconds(10)) {
    bad("receive_spin must be in [0, 10 ms]");
  }
  if (o.id.is_nil()) bad("id must not be the nil UUID");
  const std::size_t ring = o.shm.ring_size;
  if (ring < (std::size_t{64} << 10) || ring > (std::size_t{1} << 30) || (ring & (ring - 1)) != 0) {
    bad("shm.ring_size must be a power of two in [64 KiB, 1 GiB]");
  }
  if (o.shm.spin.count() < 0 || o.shm.spin > std::chrono::milliseconds(10)) bad("shm.spin must be in [0, 10 ms]");
  const MqttOptions& m = o.mqtt;
  if (m.qos != 0 && m.qos != 1) bad("mqtt.qos must be 0 or 1");
  // 256 MiB: Mosquitto's largest packet is 256 MiB; the header and topic must fit too.
  if (m.publish_size < 1024 || m.publish_size > (std::size_t{255} << 20)) bad("mqtt.publish_size must be in [1 KiB, 255 MiB]");
  if (m.window_publishes == 0 || m.window_publishes > 65535) bad("mqtt.window_publishes must be in [1, 65535]");
  if (m.window_bytes < m.publish_size) bad("mqtt.window_bytes must be at least mqtt.publish_size");
  if (m.presence_wait.count() <= 0) bad("mqtt.presence_wait must be positive");
}

}  // namespace

CommunicatorImpl::CommunicatorImpl(Purpose purpose, Options options, Endpoint endpoint)
    : m_purpose(purpose), m_options(std::move(options)), m_endpoint(std::move(endpoint)) {
  check_options(m_options);
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const bool several_cpus = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) >= 2;
  m_get_spin = several_cpus ? m_options.receive_spin : std::chrono::microseconds::zero();
}

CommunicatorImpl::~CommunicatorImpl() {
  if (m_transport) m_transport->stop();
  if (m_wake_fd >= 0) ::close(m_wake_fd);
}

void CommunicatorImpl::start() {
  m_transport = make_transport(*this);
  m_poll_links = m_transport->reads_on_caller();
  if (m_poll_links) {
    m_get_spin = std::max(m_get_spin, m_transport->poll_spin());
    m_wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE);
    if (m_wake_fd < 0) throw Error(Errc::unavailable, std::string("eventfd: ") + std::strerror(errno));
  }
}

CommunicatorImpl::LinkList CommunicatorImpl::links_to_poll() const {
  // A server polls at most this many peers' links from get(); the others are read by the
  // transport's threads only (polling hundreds of rings per empty get() costs more than it saves).
  constexpr std::size_t kMaxPolled = 16;
  LinkList links;
  const std::lock_guard lock(m_sessions_mutex);
  if (m_purpose == Purpose::client) {
    if (m_server) links.push_back(m_server->link());
  } else {
    for (const auto& [id, s] : m_sessions) {
      if (links.size() >= kMaxPolled) break;
      links.push_back(s->link());
    }
  }
  return links;
}

bool CommunicatorImpl::poll_links(const LinkList& links, bool last, WakeFds* wake_fds) {
  bool any = false;
  for (const auto& l : links) {
    if (!l) continue;
    int fd = -1;
    if (l->poll_receive(last, wake_fds != nullptr ? &fd : nullptr)) any = true;
    // A full list (more than 4 links) allocates: should that throw, this link is handed back
    // at once, and the caller's HandBack returns the ones before it.
    if (fd >= 0) {
      try {
        wake_fds->push_back(fd);
      } catch (...) {
        (void)l->poll_receive(true);
        throw;
      }
    }
  }
  if (any) notify_getters(true);  // other threads in get() may take the rest
  return any;
}

void CommunicatorImpl::notify_getters(bool all) {
  if (all) {
    m_rx_cv.notify_all();
  } else {
    m_rx_cv.notify_one();
  }
  // relaxed: the caller changed what get() waits for under m_rx_mutex, after (or before) a
  // sleeper's increment under it: seen here, or the sleeper saw the change before sleeping.
  const unsigned sleepers = m_fd_sleepers.load(std::memory_order_relaxed);
  if (sleepers > 0) (void)::eventfd_write(m_wake_fd, all ? sleepers : 1);
}

void CommunicatorImpl::sleep_on_links(std::unique_lock<std::mutex>& lock, const LinkList& links, WakeFds& fds,
                                      std::chrono::steady_clock::time_point deadline) {
  using Clock = std::chrono::steady_clock;
  const auto ready = [&] { return !m_rx.empty() || m_stopped || m_terminal; };
  std::array<pollfd, 1 + 16> pfds{};
  while (!fds.empty() && !ready()) {
    const auto now = Clock::now();
    if (now >= deadline) break;
    const std::size_t n = std::min(fds.size(), pfds.size() - 1);
    pfds[0] = pollfd{m_wake_fd, POLLIN, 0};
    for (std::size_t i = 0; i < n; ++i) pfds[i + 1] = pollfd{fds[i], POLLIN, 0};
    // relaxed: ordered by m_rx_mutex (see m_fd_sleepers).
    m_fd_sleepers.fetch_add(1, std::memory_order_relaxed);
    lock.unlock();
    timespec ts{};
    const bool forever = deadline == Clock::time_point::max();
    if (!forever) {
      const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - now).count();
      ts.tv_sec = static_cast<time_t>(left / 1'000'000'000);
      ts.tv_nsec = static_cast<long>(left % 1'000'000'000);
    }
    const int r = ::ppoll(pfds.data(), n + 1, forever ? nullptr : &ts, nullptr);
    const int err = errno;
    if (r > 0 && (pfds[0].revents & POLLIN) != 0) {
      eventfd_t value = 0;
      // EAGAIN: another thread took the count (m_wake_fd gives each count to one thread). The
      // links' descriptors are emptied by the links when they are handed back.
      (void)::eventfd_read(m_wake_fd, &value);
    }
    lock.lock();
    // relaxed: as above.
    m_fd_sleepers.fetch_sub(1, std::memory_order_relaxed);
    if (ready()) break;
    if (r < 0 && err != EINTR) {  // cannot sleep this way: the condition variable then
      lock.unlock();
      hand_back(links, fds, true);
      lock.lock();
      break;
    }
    lock.unlock();
    hand_back(links, fds, r != 0);  // reads what woke us
    // If nothing came, the links hand this thread their wake-ups again.
    poll_links(links, true, &fds);
    lock.lock();
  }
}

void CommunicatorImpl::hand_back(const LinkList& links, WakeFds& fds, bool woken) noexcept {
  if (fds.empty()) return;
  fds.clear();
  // Every link, even after one throws: a peer must never be left waking a descriptor nobody
  // waits on.
  bool any = false;
  for (const auto& l : links) {
    if (!l) continue;
    try {
      if (l->poll_receive(true, nullptr, woken)) any = true;
    } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory: the strand reads what this could not
    }
  }
  if (any) notify_getters(true);  // what it read may be for other threads in get() too
}

std::string CommunicatorImpl::local_endpoint() const { return m_transport->local_endpoint(); }

bool CommunicatorImpl::closed() const noexcept {
  // sync(comm.closed) acquire: pairs with the release store in close().
  return m_closed.load(std::memory_order_acquire);
}

std::uint32_t CommunicatorImpl::max_chunk() const noexcept {
  // A peer may send chunks up to our own transport size or 1 MiB, whichever is larger, so two
  // sides with different transport sizes still agree.
  return static_cast<std::uint32_t>(std::max<std::size_t>(m_options.connection.transport_size, std::size_t{1} << 20));
}

void CommunicatorImpl::fill_limits(framing::Hello& hello) const {
  hello.id = m_options.id;
  hello.max_message = m_options.connection.message_size;
  hello.max_chunk = max_chunk();
}

PutHandle CommunicatorImpl::put(Payload payload, std::span<const PeerId> peers) {
  // Inline room for one peer: the common put allocates nothing here.
  boost::container::small_vector<PeerId, 1> ids;
  boost::container::small_vector<std::shared_ptr<Session>, 1> targets;  // null: no such peer
  {
    const std::lock_guard lock(m_sessions_mutex);
    const auto add = [&](const PeerId& id, std::shared_ptr<Session> session) {
      ids.push_back(id);
      targets.push_back(std::move(session));
    };
    if (m_purpose == Purpose::client) {
      if (peers.empty()) add(m_server ? m_server->peer() : PeerId{}, m_server);
      for (const PeerId& p : peers) add(p, m_server && m_server->peer() == p ? m_server : nullptr);
    } else if (peers.empty()) {
      for (const auto& [id, s] : m_sessions) add(id, s);
    } else {
      for (const PeerId& p : peers) {
        const auto it = m_sessions.find(p);
        add(p, it == m_sessions.end() ? nullptr : it->second);
      }
    }
  }
  const bool closed_now = closed();
  // A broadcast after close() reports it rather than complete with nobody addressed.
  if (targets.empty() && closed_now) {
    ids.emplace_back();
    targets.emplace_back();
  }
  // A client without its server has lost the session; a named peer that is not there is unknown.
  const Errc missing = m_purpose == Purpose::client && peers.empty() ? Errc::closed : Errc::not_found;
  auto state = std::make_shared<PutState>(std::move(payload), std::span<const PeerId>(ids.data(), ids.size()));
  const std::shared_ptr<const Payload> bytes = state->payload();
  for (std::size_t i = 0; i < targets.size(); ++i) {
    Errc e = closed_now ? Errc::closed : targets[i] ? Errc{} : missing;
    if (e == Errc{}) e = targets[i]->enqueue(state, static_cast<std::uint32_t>(i), bytes);
    if (e != Errc{}) state->fail(i, code(e));
  }
  return PutHandle(std::move(state));
}

void CommunicatorImpl::wake_getters() { notify_getters(true); }

bool CommunicatorImpl::deliver(const std::shared_ptr<Session>& session, Bytes message, bool notify) {
  const std::size_t size = message.size();
  bool keep_reading = true;
  // Counted as delivered (what acks report) before any get() can take it: a close that
  // follows the get() then acknowledges it.
  session->delivered_one(size);
  {
    const std::lock_guard lock(m_rx_mutex);
    session->rx_messages += 1;
    session->rx_bytes += size;
    m_rx_bytes += size;
    m_rx.push_back(Received{Message{session->peer(), std::move(message)}, session});
    // relaxed: a hint for get()'s spin, which re-checks under m_rx_mutex.
    m_rx_count.store(m_rx.size(), std::memory_order_relaxed);
    const auto& c = m_options.connection;
    if (session->rx_messages >= c.receive_queue_messages || session->rx_bytes >= c.receive_queue_bytes) {
      session->rx_paused = true;
      keep_reading = false;
    }
  }
  if (notify) notify_getters(false);
  return keep_reading;
}

std::optional<Message> CommunicatorImpl::pop_locked(std::unique_lock<std::mutex>& lock) {
  if (m_rx.empty()) return std::nullopt;
  Received r = std::move(m_rx.front());
  m_rx.pop_front();
  // relaxed: as in deliver().
  m_rx_count.store(m_rx.size(), std::memory_order_relaxed);
  const std::size_t size = r.message.data.size();
  m_rx_bytes -= size;
  Session& s = *r.session;
  s.rx_messages -= 1;
  s.rx_bytes -= size;
  const auto& c = m_options.connection;
  // Resume a paused reader at half the bounds, not at the first free slot, so it reads in
  // batches instead of one message per wake-up.
  if (s.rx_paused && s.rx_messages <= c.receive_queue_messages / 2 && s.rx_bytes <= c.receive_queue_bytes / 2) {
    s.rx_paused = false;
    std::shared_ptr<Link> link = s.link();
    lock.unlock();
    if (link) link->resume_reading();
    lock.lock();
  }
  return std::move(r.message);
}

void CommunicatorImpl::throw_if_done_locked() const {
  if (m_stopped) throw Error(Errc::closed, "get");
  if (m_terminal) {
    const Errc e = m_terminal.category() == error_category() ? static_cast<Errc>(m_terminal.value()) : Errc::peer_lost;
    throw Error(e, "get: the session with the server ended");
  }
}

std::optional<Message> CommunicatorImpl::get(std::chrono::nanoseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const bool forever = timeout == std::chrono::nanoseconds::max();
  const Clock::time_point start = Clock::now();
  // Options::receive_spin: spin, then sleep. A reply that comes within the spin is taken
  // without a wake-up (a futex call and a context switch on each side of a round trip).
  // The spin counts against the timeout.
  // Links that read on this thread (shm) are asked first: a message already in the ring then
  // costs no hand-off to the transport's thread. The spin polls them; one last poll after it
  // lets them arrange a wake-up before this thread sleeps.
  // relaxed: a hint; the queue is checked again under m_rx_mutex.
  const bool empty = m_rx_count.load(std::memory_order_relaxed) == 0;
  const LinkList links = m_poll_links && empty ? links_to_poll() : LinkList{};
  if (m_get_spin.count() > 0 && empty && timeout > std::chrono::nanoseconds::zero()) {
    const auto until = start + std::min<std::chrono::nanoseconds>(timeout, m_get_spin);
    // relaxed: as above.
    for (unsigned i = 1; m_rx_count.load(std::memory_order_relaxed) == 0 && !closed() && Clock::now() < until; ++i) {
      if (poll_links(links, false)) continue;
      // Another thread may need the CPU now and then (the transport's, on the same one); a
      // yield per empty poll was a system call each, in the way of a reply that comes during it.
      if ((i & 31) == 0) {
        std::this_thread::yield();
      } else {
        ferry::shm::cpu_relax();
      }
    }
  }
  // The last poll may hand this thread the links' wake-ups: it then sleeps on them itself, so a
  // message from a peer costs one wake-up (this thread's), not the transport thread's first.
  WakeFds fds;
  struct HandBack {  // on every way out, with m_rx_mutex released
    CommunicatorImpl& self;
    const LinkList& links;
    WakeFds& fds;
    ~HandBack() { self.hand_back(links, fds); }
  } hand_back_on_exit{*this, links, fds};
  // A message the spin already queued means no sleep: no wake-up to arrange (handing it back
  // costs a system call on the socket the link would have armed).
  // relaxed: as above.
  const bool may_sleep = timeout > std::chrono::nanoseconds::zero() && m_rx_count.load(std::memory_order_relaxed) == 0;
  poll_links(links, true, may_sleep && !links.empty() ? &fds : nullptr);
  std::unique_lock lock(m_rx_mutex);
  const auto ready = [&] { return !m_rx.empty() || m_stopped || m_terminal; };
  struct Waiting {  // counted while this thread may sleep (see getters_waiting())
    std::atomic<unsigned>& n;
    explicit Waiting(std::atomic<unsigned>& count) : n(count) {
      n.fetch_add(1, std::memory_order_relaxed);  // relaxed: a hint, see getters_waiting()
    }
    ~Waiting() { n.fetch_sub(1, std::memory_order_relaxed); }  // relaxed: as above
  } waiting{m_getters_waiting};
  if (!fds.empty()) {
    // Until ready, the deadline, or no link hands its wake-up over (then the condition
    // variable, which every delivery notifies).
    sleep_on_links(lock, links, fds, forever ? Clock::time_point::max() : start + timeout);
  }
  if (forever) {
    m_rx_cv.wait(lock, ready);
  } else if (!m_rx_cv.wait_until(lock, start + timeout, ready)) {
    return std::nullopt;
  }
  if (auto m = pop_locked(lock)) return m;
  throw_if_done_locked();
  return std::nullopt;
}

std::optional<Message> CommunicatorImpl::try_get() noexcept {
  // relaxed: a hint, as in get().
  if (m_poll_links && m_rx_count.load(std::memory_order_relaxed) == 0) {
    try {
      poll_links(links_to_poll(), true);
    } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory for the link list: the transport's threads read
    }
  }
  std::unique_lock lock(m_rx_mutex);
  return pop_locked(lock);
}

void CommunicatorImpl::close() {
  const std::lock_guard close_lock(m_close_mutex);
  {
    const std::lock_guard lock(m_rx_mutex);
    if (m_stopped) return;
  }
  // sync(comm.closed) release: puts that see it fail; pairs with the acquire in closed().
  m_closed.store(true, std::memory_order_release);

  std::vector<std::shared_ptr<Session>> sessions;
  {
    const std::lock_guard lock(m_sessions_mutex);
    for (const auto& [id, s] : m_sessions) sessions.push_back(s);
  }
  for (const auto& s : sessions) {
    if (s->state() == Session::State::detached) {
      s->end(code(Errc::closed));
    } else {
      s->begin_close();
    }
  }
  {
    std::unique_lock lock(m_sessions_mutex);
    m_ended_cv.wait_for(lock, m_options.connection.close_timeout, [&] { return m_sessions.empty(); });
  }
  for (const auto& s : sessions) s->end(code(Errc::closed));  // the close handshake timed out
  if (m_transport) m_transport->stop();
  {
    const std::lock_guard lock(m_rx_mutex);
    m_stopped = true;
  }
  notify_getters(true);
}

std::vector<PeerId> CommunicatorImpl::peers() const {
  std::vector<PeerId> out;
  const std::lock_guard lock(m_sessions_mutex);
  for (const auto& [id, s] : m_sessions) {
    if (s->link()) out.push_back(id);
  }
  return out;
}

Stats CommunicatorImpl::stats() const {
  Stats out;
  std::vector<std::shared_ptr<Session>> sessions;
  {
    const std::lock_guard lock(m_sessions_mutex);
    for (const auto& [id, s] : m_sessions) sessions.push_back(s);
  }
  for (const auto& s : sessions) {
    PeerStats p;
    s->stats(p);
    out.peers.push_back(std::move(p));
  }
  const std::lock_guard lock(m_rx_mutex);
  out.receive_queue_messages = m_rx.size();
  out.receive_queue_bytes = m_rx_bytes;
  return out;
}

Errc CommunicatorImpl::accept_client(const framing::Hello& hello, const std::shared_ptr<Link>& link,
                                     framing::Hello& reply, std::shared_ptr<Session>& session,
                                     std::uint64_t& next_expected, std::string& why) {
  fill_limits(reply);
  bool resumed = false;
  std::shared_ptr<Session> replaced;
  Errc e{};
  {
    // Find or create the session and attach the link under one lock: a second handshake with
    // the same id then finds it live, and a put never sees a session before it knows the
    // peer's limits.
    const std::lock_guard lock(m_sessions_mutex);
    if (closed()) {
      why = "server is closing";
      return Errc::closed;
    }
    const auto it = m_sessions.find(hello.id);
    if (it != m_sessions.end()) {
      if (it->second->state() == Session::State::live) {
        why = "peer id " + hello.id.to_string() + " already has a live connection";
        return Errc::address_in_use;
      }
      session = it->second;
      resumed = (hello.flags & framing::kHelloResume) != 0 && session->state() == Session::State::detached;
      if (!resumed) {
        why = "stale session";
        session.reset();
      }
    }
    if (!session) {
      std::size_t live = 0;
      for (const auto& [id, s] : m_sessions) live += s->state() == Session::State::live ? 1 : 0;
      if (live >= m_options.connection.max_connections) {
        why = "server at its limit of " + std::to_string(m_options.connection.max_connections) + " connections";
        return Errc::unavailable;
      }
      if (it != m_sessions.end()) replaced = it->second;  // a client without its session state
      session = std::make_shared<Session>(*this, hello.id, m_options.connection);
      m_sessions[hello.id] = session;
    }
    why.clear();
    e = session->attach(link, hello, resumed, next_expected, why);
  }
  if (replaced) replaced->end(code(Errc::peer_lost));
  if (e != Errc{}) {
    session->end(code(e));
    return e;
  }
  session->fill_hello(reply);
  // Checksums: whatever the client asked (its transport and options decide).
  reply.flags = (resumed ? framing::kHelloResume : 0) | (hello.flags & framing::kHelloChecksums);
  notify_connect(hello.id);
  return Errc{};
}

void CommunicatorImpl::client_hello(framing::Hello& hello, bool wire) const {
  fill_limits(hello);
  const std::lock_guard lock(m_sessions_mutex);
  if (m_server && m_server->state() != Session::State::ended) {
    m_server->fill_hello(hello);
    hello.flags = framing::kHelloResume;
  }
  if (wire && m_options.connection.checksums) hello.flags |= framing::kHelloChecksums;
}

Errc CommunicatorImpl::attach_server(const framing::Hello& reply, const std::shared_ptr<Link>& link,
                                     std::shared_ptr<Session>& session, std::uint64_t& next_expected,
                                     std::string& why) {
  std::shared_ptr<Session> old;
  Errc e{};
  {
    const std::lock_guard lock(m_sessions_mutex);  // as in accept_client: attach before publishing
    if (m_server && (m_server->peer() != reply.id || m_server->state() == Session::State::ended)) {
      old = std::move(m_server);  // another server (or ours ended): that session is lost
    }
    if (!m_server) {
      if (closed()) {
        why = "client is closing";
        return Errc::closed;
      }
      m_server = std::make_shared<Session>(*this, reply.id, m_options.connection);
      m_sessions[reply.id] = m_server;
    }
    session = m_server;
    const bool resumed = (reply.flags & framing::kHelloResume) != 0;
    e = session->attach(link, reply, resumed, next_expected, why);
  }
  if (old) old->end(code(Errc::peer_lost));
  if (e != Errc{}) return e;
  notify_connect(reply.id);
  return Errc{};
}

bool CommunicatorImpl::wants_reconnect() const {
  const std::lock_guard lock(m_sessions_mutex);
  return !closed() && m_server && m_server->state() == Session::State::detached;
}

void CommunicatorImpl::reconnect_failed(std::error_code why) {
  std::shared_ptr<Session> s;
  {
    const std::lock_guard lock(m_sessions_mutex);
    s = m_server;
  }
  if (s) s->end(why);
}

void CommunicatorImpl::notify_connect(const PeerId& peer) const noexcept {
  if (!m_options.on_connect) return;
  try {
    m_options.on_connect(peer);
  } catch (...) {  // NOLINT(bugprone-empty-catch): a user callback's exception must not unwind a transport thread
  }
}

void CommunicatorImpl::peer_disconnected(Session& session, std::error_code why) {
  if (!m_options.on_disconnect) return;
  try {
    m_options.on_disconnect(session.peer(), why);
  } catch (...) {  // NOLINT(bugprone-empty-catch): as in notify_connect
  }
}

void CommunicatorImpl::session_detached(const std::shared_ptr<Session>& session, std::uint64_t epoch) {
  if (!m_transport) return;
  std::weak_ptr<Session> weak = session;
  const auto timeout = m_options.connection.resume_timeout;
  m_transport->schedule(timeout, [weak, epoch, timeout] {
    const auto s = weak.lock();
    if (s && s->state() == Session::State::detached && s->detach_epoch() == epoch) {
      (void)timeout;
      s->end(code(Errc::peer_lost));
    }
  });
}

void CommunicatorImpl::session_ended(Session& session, std::error_code why) {
  {
    const std::lock_guard lock(m_sessions_mutex);
    const auto it = m_sessions.find(session.peer());
    if (it != m_sessions.end() && it->second.get() == &session) m_sessions.erase(it);
    if (m_purpose == Purpose::client && m_server.get() == &session) {
      const std::lock_guard rx(m_rx_mutex);
      if (!m_terminal) m_terminal = why;
    }
  }
  m_ended_cv.notify_all();
  notify_getters(true);
}

}  // namespace ferry::detail

namespace ferry {

Communicator::Communicator(std::unique_ptr<detail::CommunicatorImpl> impl) noexcept : m_impl(std::move(impl)) {}
Communicator::Communicator(Communicator&&) noexcept = default;
Communicator& Communicator::operator=(Communicator&& other) noexcept {
  if (this != &other) {
    if (m_impl) {
      try {
        m_impl->close();
      } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor-like path must not throw
      }
    }
    m_impl = std::move(other.m_impl);
  }
  return *this;
}
Communicator::~Communicator() {
  if (!m_impl) return;
  try {
    m_impl->close();
  } catch (...) {  // NOLINT(bugprone-empty-catch): destructors must not throw
  }
}

const PeerId& Communicator::id() const noexcept { return m_impl->options().id; }
Purpose Communicator::purpose() const noexcept { return m_impl->purpose(); }
std::string Communicator::local_endpoint() const { return m_impl->local_endpoint(); }
PutHandle Communicator::put(Payload payload, std::span<const PeerId> peers) {
  return m_impl->put(std::move(payload), peers);
}
Message Communicator::get() { return *m_impl->get(std::chrono::nanoseconds::max()); }
std::optional<Message> Communicator::get_for(std::chrono::nanoseconds timeout) {
  return m_impl->get(std::max(timeout, std::chrono::nanoseconds::zero()));
}
std::optional<Message> Communicator::try_get() noexcept { return m_impl->try_get(); }
void Communicator::close() { m_impl->close(); }
bool Communicator::closed() const noexcept { return m_impl->closed(); }
std::vector<PeerId> Communicator::peers() const { return m_impl->peers(); }
Stats Communicator::stats() const { return m_impl->stats(); }

Communicator open(Purpose purpose, Options options) {
  Endpoint endpoint = Endpoint::parse(options.endpoint);
  auto impl = std::make_unique<detail::CommunicatorImpl>(purpose, std::move(options), std::move(endpoint));
  impl->start();
  return Communicator(std::move(impl));
}

}  // namespace ferry
