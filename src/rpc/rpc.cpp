// SPDX-License-Identifier: Apache-2.0
// ferry::rpc: the service's workers, and the client's correlation ids, deadlines and reply
// routing, over one Communicator each. Layer: src/rpc (the public Communicator API, and ferry::shm's
// deadline helper).
//
// Server: every worker blocks in get() on the service's Communicator and runs the call it
// takes, so a call is one hand-off (from the transport to a worker) and calls run concurrently
// up to the number of workers.
//
// Client: no thread of its own. A thread that waits for a reply reads the connection itself
// (the "leader"); a reply for another call is handed to that call's waiter, and when the
// leader's own call is done the next waiting thread takes over. A lone caller thus gets its
// reply on its own thread, with no hand-off.
#include <ferry/communicator.hpp>
#include <ferry/rpc.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ferry/shm/wait.hpp"
#include "rpc/wire.hpp"

namespace ferry::rpc {

namespace {

using Clock = std::chrono::steady_clock;

void check_method(std::string_view method) {
  if (method.empty() || method.size() > kMaxMethodName) {
    throw Error(Errc::invalid_argument, "rpc: a method name must have 1 to " + std::to_string(kMaxMethodName) +
                                            " bytes (got " + std::to_string(method.size()) + ")");
  }
}

std::span<const std::byte> text_bytes(std::string_view s) noexcept {
  return std::as_bytes(std::span(s.data(), s.size()));
}

Errc errc_of(std::error_code e) noexcept {
  return e.category() == error_category() ? static_cast<Errc>(e.value()) : Errc::system;
}

using ferry::shm::deadline_after;  // `timeout` from now, saturating at time_point::max()

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

Options options_for(std::string_view service) {
  Options o;
  o.endpoint = std::string(service);
  return o;
}

}  // namespace

std::string service_endpoint(std::string_view service) {
  if (service.find("://") != std::string_view::npos) return std::string(service);
  return "shm://" + std::string(service);
}

// ---------------------------------------------------------------------------------- server

struct Server::Impl {
  enum class Phase { configuring, running, draining, stopped };

  Options options;
  ServerOptions server;
  std::unordered_map<std::string, Handler, StringHash, std::equal_to<>> methods;
  std::optional<Communicator> comm;
  std::vector<std::thread> workers;

  std::atomic<Phase> phase{Phase::configuring};
  std::atomic<std::uint64_t> in_flight{0};
  std::mutex mutex;  // the drain and the end of shutdown are waited for under it
  std::condition_variable cv;
  std::mutex shutdown_mutex;  // one shutdown() at a time

  std::atomic<std::uint64_t> calls{0}, failed{0}, refused{0}, expired{0}, bad_requests{0}, unsent{0};

  /// Set on the service's worker threads: shutdown() refuses to run on one.
  static inline thread_local const Impl* t_worker_of = nullptr;

  void run() {
    t_worker_of = this;
    for (;;) {
      std::optional<Message> m;
      try {
        m = comm->get();
      } catch (const Error&) {
        return;  // closed: shutdown() is ending the service
      }
      serve(*m);
    }
  }

  void answer(const PeerId& peer, std::uint64_t id, Errc e, std::string_view text) {
    (void)comm->put(Payload(wire::encode_reply(id, static_cast<std::uint16_t>(e), text_bytes(text))),
                    std::span<const PeerId>(&peer, 1));
  }

  void fail(const PeerId& peer, std::uint64_t id, Errc e, std::string_view text) {
    failed.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
    answer(peer, id, e, text);
  }

  void serve(Message& msg) {
    wire::Request req;
    bool has_id = false;
    const char* why = "";
    if (!wire::parse_request(msg.bytes(), req, has_id, why)) {
      bad_requests.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
      if (has_id) answer(msg.peer, req.id, Errc::protocol_error, std::string("rpc: bad request: ") + why);
      return;
    }
    calls.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
    // sync(rpc.drain) seq_cst: this increment and shutdown()'s store of `draining` are both
    // seq_cst, so either this call sees draining (and refuses) or shutdown() sees it in flight.
    in_flight.fetch_add(1, std::memory_order_seq_cst);
    struct Leave {
      Impl& self;
      ~Leave() {
        // sync(rpc.drain) seq_cst: pairs with shutdown()'s store and its wait (under mutex).
        if (self.in_flight.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
            self.phase.load(std::memory_order_seq_cst) == Phase::draining) {
          const std::lock_guard lock(self.mutex);
          self.cv.notify_all();
        }
      }
    } leave{*this};
    // sync(rpc.drain) seq_cst: as above.
    if (phase.load(std::memory_order_seq_cst) != Phase::running) {
      refused.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
      answer(msg.peer, req.id, Errc::unavailable, "the server is shutting down");
      return;
    }
    const auto it = methods.find(req.method);
    if (it == methods.end()) {
      fail(msg.peer, req.id, Errc::not_found, "no method '" + std::string(req.method) + "'");
      return;
    }
    // The budget counts from when a worker takes the call (the two sides share no clock).
    CallContext ctx{msg.peer, req.method, req.timeout_ns == 0 ? Clock::time_point::max()
                                                              : deadline_after(std::chrono::nanoseconds(
                                                                    std::min<std::uint64_t>(req.timeout_ns, INT64_MAX)))};
    if (req.timeout_ns == 1) {  // sent with its deadline already past: the caller has given up
      expired.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
      return;
    }
    Bytes out;
    try {
      out = it->second(req.body, ctx);
    } catch (const Error& e) {
      // what() is "<context>: <the code's message>": the caller's error adds the code again.
      std::string_view text = e.what();
      const std::string suffix = ": " + e.code().message();
      if (text.size() > suffix.size() && text.substr(text.size() - suffix.size()) == suffix) {
        text.remove_suffix(suffix.size());
      }
      fail(msg.peer, req.id, e.errc() == Errc{} ? Errc::remote_error : e.errc(), text);
      return;
    } catch (const std::exception& e) {
      fail(msg.peer, req.id, Errc::remote_error, e.what());
      return;
    } catch (...) {
      fail(msg.peer, req.id, Errc::remote_error, "the handler threw something not a std::exception");
      return;
    }
    if (ctx.expired()) {  // the caller has given up: it would drop the reply
      expired.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
      return;
    }
    const std::size_t size = out.size();
    const PutHandle h = comm->put(Payload(wire::encode_reply(req.id, 0, out.span())), std::span<const PeerId>(&msg.peer, 1));
    if (!h.ready()) return;
    for (const PeerError& e : h.errors()) {
      if (errc_of(e.error) == Errc::message_too_large) {
        fail(msg.peer, req.id, Errc::message_too_large,
             "the reply of " + std::to_string(size) + " bytes exceeds what the client accepts");
      } else {
        // The client is gone, or its queue is full: nothing more can reach it now.
        unsent.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
      }
    }
  }
};

Server::Server(Options options, ServerOptions server) : m_impl(std::make_unique<Impl>()) {
  options.endpoint = service_endpoint(options.endpoint);
  m_impl->options = std::move(options);
  m_impl->server = server;
}
Server::Server(std::string_view service, ServerOptions server) : Server(options_for(service), server) {}
Server::Server(Server&&) noexcept = default;
Server& Server::operator=(Server&& other) noexcept {
  if (this != &other) {
    if (m_impl) {
      try {
        shutdown();
      } catch (...) {  // NOLINT(bugprone-empty-catch): as in the destructor
      }
    }
    m_impl = std::move(other.m_impl);
  }
  return *this;
}
Server::~Server() {
  if (!m_impl) return;
  try {
    shutdown();
  } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
}

void Server::handle(std::string method, Handler handler) {
  check_method(method);
  if (!handler) throw Error(Errc::invalid_argument, "rpc: empty handler for '" + method + "'");
  // relaxed: configuration happens on one thread before start(), which publishes it.
  if (m_impl->phase.load(std::memory_order_relaxed) != Impl::Phase::configuring) {
    throw Error(Errc::invalid_argument, "rpc: handle('" + method + "') after start()");
  }
  const auto [it, added] = m_impl->methods.try_emplace(method, std::move(handler));
  if (!added) throw Error(Errc::invalid_argument, "rpc: method '" + method + "' is already handled");
}

void Server::start() {
  Impl& s = *m_impl;
  const std::lock_guard lock(s.shutdown_mutex);
  // relaxed: as in handle().
  if (s.phase.load(std::memory_order_relaxed) != Impl::Phase::configuring) {
    throw Error(Errc::invalid_argument, "rpc: start() twice, or after shutdown()");
  }
  s.comm.emplace(ferry::open(Purpose::server, s.options));
  unsigned n = s.server.workers;
  if (n == 0) n = std::max(2U, std::thread::hardware_concurrency());
  // sync(rpc.phase) release: the workers start after this (thread creation orders it too).
  s.phase.store(Impl::Phase::running, std::memory_order_release);
  try {
    for (unsigned i = 0; i < n; ++i) s.workers.emplace_back([&s] { s.run(); });
  } catch (...) {
    s.comm->close();
    for (auto& t : s.workers) t.join();
    s.workers.clear();
    // sync(rpc.phase) release: as above.
    s.phase.store(Impl::Phase::stopped, std::memory_order_release);
    throw;
  }
}

void Server::shutdown(std::chrono::nanoseconds drain) {
  Impl& s = *m_impl;
  if (Impl::t_worker_of == &s) {
    throw Error(Errc::invalid_argument, "rpc: shutdown() from a handler (it waits for the handlers)");
  }
  const std::lock_guard lock(s.shutdown_mutex);
  // relaxed: phase changes only under shutdown_mutex, held here.
  const Impl::Phase p = s.phase.load(std::memory_order_relaxed);
  if (p == Impl::Phase::stopped) return;
  if (p == Impl::Phase::running) {
    // sync(rpc.drain) seq_cst: pairs with serve()'s increment of in_flight.
    s.phase.store(Impl::Phase::draining, std::memory_order_seq_cst);
    std::unique_lock wait_lock(s.mutex);
    // sync(rpc.drain) seq_cst: as above.
    s.cv.wait_until(wait_lock, deadline_after(drain), [&] { return s.in_flight.load(std::memory_order_seq_cst) == 0; });
  }
  if (s.comm) s.comm->close();  // sends the replies queued, then wakes the workers
  for (auto& t : s.workers) t.join();
  s.workers.clear();
  {
    const std::lock_guard wait_lock(s.mutex);
    // sync(rpc.phase) release: wait() reads it under the same mutex.
    s.phase.store(Impl::Phase::stopped, std::memory_order_release);
  }
  s.cv.notify_all();
}

void Server::wait() {
  Impl& s = *m_impl;
  std::unique_lock lock(s.mutex);
  // sync(rpc.phase) acquire: pairs with shutdown()'s release store.
  s.cv.wait(lock, [&] { return s.phase.load(std::memory_order_acquire) == Impl::Phase::stopped; });
}

std::string Server::local_endpoint() const {
  if (!m_impl->comm) throw Error(Errc::invalid_argument, "rpc: local_endpoint() before start()");
  return m_impl->comm->local_endpoint();
}

ServerStats Server::stats() const {
  const Impl& s = *m_impl;
  ServerStats out;
  // relaxed: counters, read without ordering.
  out.calls = s.calls.load(std::memory_order_relaxed);
  out.failed = s.failed.load(std::memory_order_relaxed);    // relaxed: a counter
  out.refused = s.refused.load(std::memory_order_relaxed);  // relaxed: a counter
  out.expired = s.expired.load(std::memory_order_relaxed);  // relaxed: a counter
  out.bad_requests = s.bad_requests.load(std::memory_order_relaxed);  // relaxed: a counter
  out.in_flight = s.in_flight.load(std::memory_order_relaxed);        // relaxed: a counter
  out.unsent = s.unsent.load(std::memory_order_relaxed);              // relaxed: a counter
  if (s.comm) out.sessions = s.comm->stats().peers.size();
  return out;
}

// ---------------------------------------------------------------------------------- client

namespace {

struct Counters {
  std::atomic<std::uint64_t> calls{0}, failed{0}, timed_out{0}, cancelled{0}, late{0}, bad{0}, reconnects{0};
  static void add(std::atomic<std::uint64_t>& c) noexcept {
    c.fetch_add(1, std::memory_order_relaxed);  // relaxed: a counter
  }
};

struct Channel;

}  // namespace

struct Call::State {
  std::uint64_t id = 0;
  std::uint64_t epoch = 0;  // Channel::epoch when it was sent: the connection it went on
  Clock::time_point deadline;
  std::string method;
  std::shared_ptr<Channel> channel;
  // sync(rpc.done) release in Channel::done_locked(), acquire in ready() and get(): the
  // fields below are written before it and read after it.
  std::atomic<bool> done{false};
  std::atomic<bool> taken{false};
  Bytes reply;
  Errc error{};
  bool remote = false;
  std::string message;
  // Under Channel::mutex:
  std::condition_variable cv;
  unsigned waiting = 0;
};

namespace {

using State = Call::State;

/// One Communicator to the server, replaced when its session ends for good.
///
/// A lost connection (or a new server) bumps `epoch`; the thread reading the connection then
/// first takes what the connection had delivered (replies already here are answers, not
/// losses) and only then fails the calls sent before the bump. Calls are not started while
/// the connection is down: they fail at once.
struct Channel {
  std::optional<Communicator> comm;
  std::shared_ptr<Counters> counters;
  std::atomic<std::uint64_t> next_id{1};

  std::mutex mutex;
  // Weak: a call nobody holds any more is dropped (swept, or its reply counted late).
  std::unordered_map<std::uint64_t, std::weak_ptr<State>> pending;
  std::deque<State*> waiters;  // a thread waits for each entry (duplicates: several threads)
  bool leader = false;         // a thread is reading the connection
  bool dead = false;           // the session ended: the client opens another channel
  bool closing = false;        // Client::close()
  bool connected = true;
  std::uint64_t epoch = 0;         // connections lost (or servers changed) so far
  std::uint64_t failed_epoch = 0;  // the calls sent before it have been failed
  std::string lost_why;
  PeerId server;               // the server of the last connection
  Clock::time_point next_sweep{};

  void finish_locked(State& st, Errc e, std::string text, bool remote = false) {
    st.error = e;
    st.remote = remote;
    st.message = std::move(text);
    Counters::add(counters->failed);
    if (e == Errc::timed_out) Counters::add(counters->timed_out);
    if (e == Errc::cancelled) Counters::add(counters->cancelled);
    done_locked(st);
  }
  static void done_locked(State& st) {
    // sync(rpc.done) release: pairs with the acquire in Call::ready() / Call::get().
    st.done.store(true, std::memory_order_release);
    if (st.waiting > 0) st.cv.notify_all();
  }

  /// Every pending call fails with e (the session ended, the client closed).
  void fail_all_locked(Errc e, const std::string& text) {
    for (auto& [id, weak] : pending) {
      if (const auto st = weak.lock()) finish_locked(*st, e, text);
    }
    pending.clear();
  }

  void lost(const std::string& why) {  // on_disconnect, or another server on_connect
    const std::lock_guard lock(mutex);
    connected = false;
    ++epoch;
    lost_why = why;
    if (!leader) wake_next_locked();  // a waiting thread reads, then fails what was lost
  }

  void connected_to(const PeerId& peer) {  // on_connect
    const std::lock_guard lock(mutex);
    if (!server.is_nil() && server != peer) {
      // Another server (it restarted): what was queued for the old one went with its session.
      ++epoch;
      lost_why = "the server restarted; the call was lost with its session";
    }
    server = peer;
    connected = true;
  }

  void dispatch(Message& msg) {
    wire::Reply r;
    const char* why = "";
    if (!wire::parse_reply(msg.bytes(), r, why)) {
      Counters::add(counters->bad);
      return;
    }
    const std::lock_guard lock(mutex);
    const auto it = pending.find(r.id);
    const std::shared_ptr<State> st = it == pending.end() ? nullptr : it->second.lock();
    if (it != pending.end()) pending.erase(it);
    if (!st) {
      Counters::add(counters->late);
      return;
    }
    if (r.status == 0) {
      msg.data.truncate(r.body_size);
      st->reply = std::move(msg.data);
      done_locked(*st);
      return;
    }
    const auto status = static_cast<Errc>(r.status);
    const std::string text(msg.text().substr(0, r.body_size));
    if (status < Errc::timed_out || status > Errc::remote_error) {
      finish_locked(*st, Errc::protocol_error, "a reply with unknown status " + std::to_string(r.status) + ": " + text);
    } else {
      finish_locked(*st, status, text, true);
    }
  }

  /// The reader's upkeep, under mutex: after a lost connection (the caller has taken what it
  /// delivered) the calls sent on it fail; calls past their deadline end (their waiters would
  /// at their own deadline; nobody waits for an abandoned one); dropped calls are forgotten.
  void upkeep_locked(Clock::time_point now) {
    if (failed_epoch != epoch) {
      for (auto it = pending.begin(); it != pending.end();) {
        const auto st = it->second.lock();
        if (!st || st->epoch < epoch) {
          if (st) {
            finish_locked(*st, Errc::peer_lost, "the connection to the server was lost (" + lost_why +
                                                    "); the server may or may not have run the call");
          }
          it = pending.erase(it);
        } else {
          ++it;
        }
      }
      failed_epoch = epoch;
    }
    if (now < next_sweep) return;
    next_sweep = now + std::chrono::milliseconds(10);
    for (auto it = pending.begin(); it != pending.end();) {
      const auto st = it->second.lock();
      if (!st || now >= st->deadline) {
        if (st) finish_locked(*st, Errc::timed_out, "no reply within the call's timeout");
        it = pending.erase(it);
      } else {
        ++it;
      }
    }
  }

  /// Takes what the connection has delivered, without waiting, then does the upkeep.
  void drain_and_upkeep() {
    while (auto msg = comm->try_get()) dispatch(*msg);
    const std::lock_guard lock(mutex);
    upkeep_locked(Clock::now());
  }

  bool upkeep_due(Clock::time_point now) {
    const std::lock_guard lock(mutex);
    return failed_epoch != epoch || now >= next_sweep;
  }

  /// Reads the connection on this thread until st is done or `until`.
  void lead(State& st, Clock::time_point until) {
    // Slices: a call ended by another thread (cancel(), close()) or a lost connection is
    // noticed within one, since nothing interrupts a get() that waits.
    constexpr auto kSlice = std::chrono::milliseconds(10);
    // sync(rpc.done) acquire: pairs with done_locked() on another thread.
    while (!st.done.load(std::memory_order_acquire)) {
      const auto now = Clock::now();
      if (now >= until) return;
      if (upkeep_due(now)) {
        drain_and_upkeep();
        continue;
      }
      std::optional<Message> msg;
      try {
        msg = comm->get_for(std::min<std::chrono::nanoseconds>(until - now, kSlice));
      } catch (const Error& e) {
        // The session ended (get() throws once what it delivered was taken): every call fails.
        const std::lock_guard lock(mutex);
        dead = true;
        fail_all_locked(closing ? Errc::closed : Errc::peer_lost, closing ? "the client was closed" : e.what());
        return;
      }
      if (msg) dispatch(*msg);
    }
  }

  /// Leadership for the scope: given up (and handed on) on every way out.
  struct Lead {
    Channel& ch;
    std::unique_lock<std::mutex>& lock;
    Lead(Channel& c, std::unique_lock<std::mutex>& l) : ch(c), lock(l) {
      ch.leader = true;
      lock.unlock();
    }
    Lead(const Lead&) = delete;
    Lead& operator=(const Lead&) = delete;
    ~Lead() {
      lock.lock();
      ch.leader = false;
    }
  };

  /// Waits until st is done or `until`. At `until`, a call whose deadline it is ends with
  /// timed_out; otherwise false (still pending).
  bool wait(State& st, Clock::time_point until) {
    std::unique_lock lock(mutex);
    // sync(rpc.done) acquire: as in lead() (the flag is also written under this mutex).
    while (!st.done.load(std::memory_order_acquire) && Clock::now() < until) {
      if (!leader) {
        const Lead lead_scope(*this, lock);
        lead(st, until);
        continue;
      }
      ++st.waiting;
      waiters.push_back(&st);
      st.cv.wait_until(lock, until);
      waiters.erase(std::find(waiters.begin(), waiters.end(), &st));
      --st.waiting;
    }
    // Whichever way this thread leaves, a thread still waiting must read the connection next
    // (one woken for leadership may find its own call done, and must pass it on here).
    if (!leader) wake_next_locked();
    // sync(rpc.done) acquire: as above.
    if (st.done.load(std::memory_order_acquire)) return true;
    if (until < st.deadline) return false;
    if (pending.erase(st.id) != 0) finish_locked(st, Errc::timed_out, "no reply within the call's timeout");
    return true;
  }

  /// One pass without waiting, when no other thread reads: Call::ready() makes progress
  /// even when nobody waits.
  void poll() noexcept {
    std::unique_lock lock(mutex);
    if (leader) return;
    try {
      const Lead lead_scope(*this, lock);
      drain_and_upkeep();
    } catch (...) {  // NOLINT(bugprone-empty-catch): out of memory: the next wait reads
    }
    wake_next_locked();
  }

  void wake_next_locked() {
    for (State* w : waiters) {
      // relaxed: written under this mutex, held here.
      if (!w->done.load(std::memory_order_relaxed)) {
        w->cv.notify_all();
        return;
      }
    }
  }

  void cancel(State& st) {
    const std::lock_guard lock(mutex);
    if (pending.erase(st.id) != 0) finish_locked(st, Errc::cancelled, "cancelled by the caller");
  }
};

[[noreturn]] void throw_failure(const State& st) {
  const std::string context = "rpc " + st.method + ": " + st.message;
  if (st.remote) throw RemoteError(st.error, context);
  throw Error(st.error, context);
}

/// A connected channel (throws what ferry::open() throws).
std::shared_ptr<Channel> open_channel(Options o, const std::shared_ptr<Counters>& counters) {
  auto ch = std::make_shared<Channel>();
  ch->counters = counters;
  // A dropped connection: the calls sent on it fail at once (the server may or may not have
  // run them), even when the session then resumes; their replies, if any, come late.
  o.on_disconnect = [weak = std::weak_ptr<Channel>(ch), user = o.on_disconnect](const PeerId& peer,
                                                                                 std::error_code why) {
    if (const auto c = weak.lock()) c->lost(why.message());
    if (user) user(peer, why);
  };
  o.on_connect = [weak = std::weak_ptr<Channel>(ch), user = o.on_connect](const PeerId& peer) {
    if (const auto c = weak.lock()) c->connected_to(peer);
    if (user) user(peer);
  };
  ch->comm.emplace(ferry::open(Purpose::client, std::move(o)));
  return ch;
}

}  // namespace

struct Client::Impl {
  Options options;
  ClientOptions client;
  std::shared_ptr<Counters> counters = std::make_shared<Counters>();
  mutable std::mutex open_mutex;  // the channel's replacement
  std::shared_ptr<Channel> channel;
  // A new connection being made on a thread of its own (std::async), so a caller waits for it
  // no longer than its own deadline, and the connection keeps its configured timeouts.
  std::shared_future<std::shared_ptr<Channel>> opening;
  std::uint64_t attempt = 0;
  bool closed = false;

  /// The channel to use; a new one when the session of the last has ended.
  std::shared_ptr<Channel> current(Clock::time_point deadline) {
    std::unique_lock lock(open_mutex);
    for (;;) {
      if (closed) throw Error(Errc::closed, "rpc: the client is closed");
      if (channel) {
        const std::lock_guard channel_lock(channel->mutex);
        if (!channel->dead) return channel;
      }
      if (!opening.valid()) {
        ++attempt;
        opening = std::async(std::launch::async, [o = options, c = counters, old = std::move(channel)] {
                    if (old) old->comm->close();  // its session ended: this frees its threads
                    return open_channel(o, c);
                  }).share();
      }
      const auto f = opening;
      const std::uint64_t mine = attempt;
      lock.unlock();
      const bool ready = deadline == Clock::time_point::max() ? (f.wait(), true)
                                                               : f.wait_until(deadline) == std::future_status::ready;
      lock.lock();
      if (!ready) throw Error(Errc::timed_out, "rpc: the call's timeout passed while connecting to the server again");
      if (attempt == mine && opening.valid()) {
        opening = {};
        channel = f.get();  // throws this attempt's failure: the next call makes another
        Counters::add(counters->reconnects);
        if (closed) channel->comm->close();
      } else if (!channel) {
        (void)f.get();  // rethrows this attempt's failure
      }
    }
  }

  std::shared_ptr<State> start(std::string_view method, std::span<const std::byte> request,
                               std::chrono::nanoseconds timeout) {
    check_method(method);
    const Clock::time_point deadline = deadline_after(timeout);
    Counters::add(counters->calls);
    for (int attempt_no = 0;; ++attempt_no) {
      std::shared_ptr<Channel> ch = current(deadline);
      auto st = std::make_shared<State>();
      st->deadline = deadline;
      st->method = method;
      st->channel = ch;
      // relaxed: ids only need to be unique per channel.
      st->id = ch->next_id.fetch_add(1, std::memory_order_relaxed);
      std::uint64_t budget = 0;
      if (deadline != Clock::time_point::max()) {
        const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now()).count();
        if (left <= 1) {  // nothing sent: the server would not run it
          const std::lock_guard lock(ch->mutex);
          ch->finish_locked(*st, Errc::timed_out, "the call's timeout passed before it was sent");
          return st;
        }
        budget = static_cast<std::uint64_t>(left);
      }
      Bytes msg = wire::encode_request(st->id, method, budget, request);
      {
        const std::lock_guard lock(ch->mutex);
        if (!ch->connected) {
          ch->finish_locked(*st, Errc::peer_lost, "not connected to the server (" + ch->lost_why + "); reconnecting");
          return st;
        }
        st->epoch = ch->epoch;
        ch->pending.emplace(st->id, st);
      }
      const PutHandle h = ch->comm->put(Payload(std::move(msg)));
      if (!h.ready()) return st;
      const std::vector<PeerError> errors = h.errors();
      if (errors.empty()) return st;
      const Errc e = errc_of(errors.front().error);
      const std::lock_guard lock(ch->mutex);
      if (ch->pending.erase(st->id) == 0) return st;  // already ended (the connection was lost)
      // The session with the server has ended: connect again, once; the request was not sent.
      if ((e == Errc::closed || e == Errc::peer_lost) && attempt_no == 0 && !ch->closing) {
        ch->dead = true;
        continue;
      }
      ch->finish_locked(*st, e, e == Errc::message_too_large
                                    ? "the request of " + std::to_string(request.size()) + " bytes exceeds the server's limit"
                                    : "the request could not be queued (" + errors.front().error.message() + ")");
      return st;
    }
  }
};

bool Call::ready() const noexcept {
  if (!m_state) return false;
  // sync(rpc.done) acquire: pairs with done_locked().
  if (m_state->done.load(std::memory_order_acquire)) return true;
  m_state->channel->poll();
  // sync(rpc.done) acquire: as above.
  return m_state->done.load(std::memory_order_acquire);
}

bool Call::wait_for(std::chrono::nanoseconds timeout) const {
  if (!m_state) throw Error(Errc::invalid_argument, "rpc: wait_for() on an empty Call");
  // sync(rpc.done) acquire: as in ready().
  if (m_state->done.load(std::memory_order_acquire)) return true;
  return m_state->channel->wait(*m_state, std::min(m_state->deadline, deadline_after(timeout)));
}

Bytes Call::get() {
  if (!m_state) throw Error(Errc::invalid_argument, "rpc: get() on an empty Call");
  State& st = *m_state;
  // sync(rpc.done) acquire: as in ready().
  if (!st.done.load(std::memory_order_acquire)) (void)st.channel->wait(st, st.deadline);
  // sync(rpc.done) acq_rel: one get() takes the reply; pairs with another thread's exchange.
  if (st.taken.exchange(true, std::memory_order_acq_rel)) {
    throw Error(Errc::invalid_argument, "rpc " + st.method + ": Call::get() twice (the reply was taken)");
  }
  if (st.error == Errc{}) return std::move(st.reply);
  throw_failure(st);
}

void Call::cancel() noexcept {
  // sync(rpc.done) acquire: as in ready().
  if (m_state && !m_state->done.load(std::memory_order_acquire)) m_state->channel->cancel(*m_state);
}

Client::Client(Options options, ClientOptions client) : m_impl(std::make_shared<Impl>()) {
  options.endpoint = service_endpoint(options.endpoint);
  m_impl->options = std::move(options);
  m_impl->client = client;
  m_impl->channel = open_channel(m_impl->options, m_impl->counters);
}

Client::Client(std::string_view service, ClientOptions client) : Client(options_for(service), client) {}

Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&& other) noexcept {
  if (this != &other) {
    if (m_impl) {
      try {
        close();
      } catch (...) {  // NOLINT(bugprone-empty-catch): as in the destructor
      }
    }
    m_impl = std::move(other.m_impl);
  }
  return *this;
}
Client::~Client() {
  if (!m_impl) return;
  try {
    close();
  } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
}

Bytes Client::call(std::string_view method, std::span<const std::byte> request, std::chrono::nanoseconds timeout) {
  return Call(m_impl->start(method, request, timeout)).get();
}

Bytes Client::call(std::string_view method, std::span<const std::byte> request) {
  return call(method, request, m_impl->client.timeout);
}

Call Client::async_call(std::string_view method, std::span<const std::byte> request, std::chrono::nanoseconds timeout) {
  return Call(m_impl->start(method, request, timeout));
}

Call Client::async_call(std::string_view method, std::span<const std::byte> request) {
  return async_call(method, request, m_impl->client.timeout);
}

void Client::close() {
  std::shared_ptr<Channel> ch;
  std::shared_future<std::shared_ptr<Channel>> opening;
  {
    const std::lock_guard lock(m_impl->open_mutex);
    if (m_impl->closed) return;
    m_impl->closed = true;
    ch = m_impl->channel;
    opening = m_impl->opening;
  }
  if (ch) {
    {
      const std::lock_guard lock(ch->mutex);
      ch->closing = true;
      ch->fail_all_locked(Errc::closed, "the client was closed");
    }
    ch->comm->close();
  }
  if (opening.valid()) {  // a connection being made: wait for it (connect_timeout at most) and close it
    try {
      opening.get()->comm->close();
    } catch (...) {  // NOLINT(bugprone-empty-catch): it failed: nothing to close
    }
  }
}

ClientStats Client::stats() const {
  const Counters& c = *m_impl->counters;
  ClientStats out;
  // relaxed: counters, read without ordering.
  out.calls = c.calls.load(std::memory_order_relaxed);
  out.failed = c.failed.load(std::memory_order_relaxed);        // relaxed: a counter
  out.timed_out = c.timed_out.load(std::memory_order_relaxed);  // relaxed: a counter
  out.cancelled = c.cancelled.load(std::memory_order_relaxed);  // relaxed: a counter
  out.late_replies = c.late.load(std::memory_order_relaxed);    // relaxed: a counter
  out.bad_replies = c.bad.load(std::memory_order_relaxed);      // relaxed: a counter
  out.reconnects = c.reconnects.load(std::memory_order_relaxed);  // relaxed: a counter
  return out;
}

PeerId Client::server() const {
  std::shared_ptr<Channel> ch;
  {
    const std::lock_guard lock(m_impl->open_mutex);
    ch = m_impl->channel;
  }
  if (!ch) return {};
  const auto peers = ch->comm->peers();
  return peers.empty() ? PeerId{} : peers.front();
}

std::chrono::nanoseconds Client::default_timeout() const noexcept { return m_impl->client.timeout; }

}  // namespace ferry::rpc
