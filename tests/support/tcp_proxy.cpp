// SPDX-License-Identifier: Apache-2.0
// TcpProxy implementation (test support layer): one Asio io_context on one thread; each
// proxied connection is a Session with one Pump per direction.
#include "support/tcp_proxy.hpp"

#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio.hpp>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

namespace ferry::testing {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

// Named (not anonymous): TcpProxy::Impl, which has external linkage, holds these types.
namespace tcp_proxy_detail {

constexpr std::size_t kReadBuffer = 64 * 1024;
// How long a cut_after_bytes waits for the receiver to acknowledge the last forwarded bytes
// before resetting (a reset discards whatever is still in the proxy's send queue).
constexpr auto kDrainLimit = std::chrono::seconds(2);
constexpr auto kDrainPoll = std::chrono::milliseconds(1);
// Bound on waiting for the I/O thread to run a request (it never blocks, so this is a bug).
constexpr auto kIoAnswer = std::chrono::seconds(10);
constexpr auto kAcceptRetry = std::chrono::milliseconds(10);

constexpr std::size_t index_of(Direction d) { return d == Direction::client_to_server ? 0 : 1; }

void reset_socket(tcp::socket& s) {
  if (!s.is_open()) return;
  error_code ignored;
  s.set_option(asio::socket_base::linger(true, 0), ignored);
  s.close(ignored);
}

void check_probability(double p) {
  if (!(p >= 0.0 && p <= 1.0))
    throw std::invalid_argument("TcpProxy: a probability must be in [0, 1]");
}

struct DirectionFaults {
  std::chrono::nanoseconds delay{0};
  std::size_t max_chunk = 0;
  double drop = 0.0;
  double corrupt = 0.0;
};

struct CutRequest {
  bool armed = false;
  std::uint64_t bytes = 0;
  Direction direction = Direction::client_to_server;
  std::uint64_t generation = 0;  // bumped by each cut_after_bytes; 0 is never armed
};

// A pump's view of the armed cut: the generation it last saw and the bytes it may still
// forward under it (nullopt: no cut applies to this pump).
struct PumpCut {
  std::uint64_t generation = 0;
  std::optional<std::uint64_t> remaining;
};

// What to do with the next piece of a chunk.
struct Plan {
  std::size_t length = 0;               // bytes of the chunk this piece covers
  bool cut_now = false;                 // a cut with nothing left to forward: cut before it
  bool drop = false;                    // discard the piece
  std::optional<std::size_t> flip_bit;  // bit (byte * 8 + bit) of the piece to flip
  std::chrono::nanoseconds delay{0};
  bool cut_after = false;               // the piece exhausts the cut: cut once it is written
};

struct DirectionCounters {
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<std::uint64_t> chunks{0};
  std::atomic<std::uint64_t> dropped{0};
  std::atomic<std::uint64_t> corrupted{0};
};

// relaxed (every counter use below): counters are statistics; nothing is published through them.
void bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
  c.fetch_add(n, std::memory_order_relaxed);
}
std::uint64_t read_counter(const std::atomic<std::uint64_t>& c) {
  return c.load(std::memory_order_relaxed);
}

}  // namespace tcp_proxy_detail

using namespace tcp_proxy_detail;

struct TcpProxy::Impl {
  class Session;  // nested: it may name TcpProxy::Impl

  Impl(const std::string& host, std::uint16_t target_port);

  // Runs f on the I/O thread and waits for it (bounded by kIoAnswer).
  template <class F>
  void run_on_io(F f);

  // I/O thread only.
  void start_accept();
  void on_accepted(tcp::socket socket);
  void reset_backlog();
  void cut_sessions();
  void shutdown();
  void unregister(std::uint64_t id);

  // Any thread (takes m_mutex).
  Plan plan_piece(Direction d, std::size_t available, PumpCut& pump_cut);

  asio::io_context m_io{1};
  asio::executor_work_guard<asio::io_context::executor_type> m_work{m_io.get_executor()};
  tcp::acceptor m_acceptor{m_io};
  asio::steady_timer m_accept_retry{m_io};
  tcp::resolver::results_type m_target;
  std::uint16_t m_port = 0;
  std::thread m_thread;

  // I/O thread only.
  std::map<std::uint64_t, std::shared_ptr<Session>> m_sessions;
  std::uint64_t m_next_id = 0;

  mutable std::mutex m_mutex;  // guards the fault settings, the cut request and the generator
  std::array<DirectionFaults, 2> m_faults{};
  CutRequest m_cut;
  std::mt19937_64 m_rng{0x5eed'f3a7'0000'0001ULL};

  std::atomic<bool> m_refuse{false};
  std::atomic<std::uint64_t> m_accepted{0};
  std::atomic<std::uint64_t> m_refused{0};
  std::atomic<std::uint64_t> m_cut_count{0};
  std::atomic<std::uint64_t> m_active{0};
  std::array<DirectionCounters, 2> m_counters;
};

class TcpProxy::Impl::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(TcpProxy::Impl& proxy, std::uint64_t id, tcp::socket client)
      : m_proxy(proxy),
        m_id(id),
        m_client(std::move(client)),
        m_server(proxy.m_io),
        m_c2s(Direction::client_to_server, m_client, m_server, proxy.m_io),
        m_s2c(Direction::server_to_client, m_server, m_client, proxy.m_io),
        m_drain_timer(proxy.m_io) {}

  void start() {
    asio::async_connect(m_server, m_proxy.m_target,
                        [self = shared_from_this()](error_code ec, const tcp::endpoint&) {
                          self->on_connected(ec);
                        });
  }

  // Resets both sides now (idempotent). Returns whether this call closed the session.
  bool reset() {
    if (m_state == State::closed) return false;
    m_state = State::closed;
    reset_socket(m_client);
    reset_socket(m_server);
    m_c2s.timer.cancel();
    m_s2c.timer.cancel();
    m_drain_timer.cancel();
    m_proxy.unregister(m_id);  // callers hold a reference: *this outlives this call
    return true;
  }

  bool cutting() const { return m_state == State::draining; }

 private:
  enum class State { connecting, open, draining, closed };

  struct Pump {
    Pump(Direction d, tcp::socket& from_socket, tcp::socket& to_socket, asio::io_context& io)
        : direction(d), from(from_socket), to(to_socket), buffer(kReadBuffer), timer(io) {}
    Direction direction;
    tcp::socket& from;
    tcp::socket& to;
    std::vector<std::byte> buffer;
    std::size_t length = 0;  // bytes of the current chunk in buffer
    std::size_t offset = 0;  // bytes of it already handled
    std::size_t piece = 0;   // bytes of the piece being delayed or written
    bool cut_after = false;
    bool eof = false;
    asio::steady_timer timer;
    PumpCut cut;
  };

  DirectionCounters& counters(const Pump& p) {
    return m_proxy.m_counters[index_of(p.direction)];
  }

  void on_connected(error_code ec) {
    if (m_state != State::connecting) return;
    if (ec) {
      reset();
      return;
    }
    error_code ignored;
    m_server.set_option(tcp::no_delay(true), ignored);
    m_state = State::open;
    read(m_c2s);
    read(m_s2c);
  }

  void read(Pump& p) {
    p.from.async_read_some(asio::buffer(p.buffer),
                           [self = shared_from_this(), &p](error_code ec, std::size_t n) {
                             self->on_read(p, ec, n);
                           });
  }

  void on_read(Pump& p, error_code ec, std::size_t n) {
    if (m_state != State::open) return;
    if (ec == asio::error::eof) {
      p.eof = true;
      error_code ignored;
      p.to.shutdown(tcp::socket::shutdown_send, ignored);
      if (m_c2s.eof && m_s2c.eof) close_gracefully();
      return;
    }
    if (ec) {
      reset();
      return;
    }
    p.length = n;
    p.offset = 0;
    next_piece(p);
  }

  void next_piece(Pump& p) {
    for (;;) {
      if (p.offset == p.length) {
        read(p);
        return;
      }
      const Plan plan = m_proxy.plan_piece(p.direction, p.length - p.offset, p.cut);
      if (plan.cut_now) {
        begin_cut(p.to);
        return;
      }
      if (plan.drop) {
        bump(counters(p).dropped);
        p.offset += plan.length;
        continue;
      }
      if (plan.flip_bit) {
        p.buffer[p.offset + *plan.flip_bit / 8] ^= std::byte{1} << (*plan.flip_bit % 8);
        bump(counters(p).corrupted);
      }
      p.piece = plan.length;
      p.cut_after = plan.cut_after;
      if (plan.delay > std::chrono::nanoseconds::zero()) {
        p.timer.expires_after(plan.delay);
        p.timer.async_wait([self = shared_from_this(), &p](error_code wait_ec) {
          if (wait_ec || self->m_state != State::open) return;
          self->write(p);
        });
        return;
      }
      write(p);
      return;
    }
  }

  void write(Pump& p) {
    asio::async_write(p.to, asio::buffer(p.buffer.data() + p.offset, p.piece),
                      [self = shared_from_this(), &p](error_code ec, std::size_t n) {
                        self->on_write(p, ec, n);
                      });
  }

  void on_write(Pump& p, error_code ec, std::size_t n) {
    if (m_state != State::open) return;
    if (ec) {
      reset();
      return;
    }
    bump(counters(p).bytes, n);
    bump(counters(p).chunks);
    p.offset += p.piece;
    if (p.cut_after) {
      begin_cut(p.to);
      return;
    }
    next_piece(p);
  }

  void close_gracefully() {
    m_state = State::closed;
    error_code ignored;
    m_client.close(ignored);
    m_server.close(ignored);
    m_proxy.unregister(m_id);
  }

  // A cut_after_bytes fired: stop forwarding, wait (bounded) until `receiver` has no
  // unacknowledged bytes, then reset both sides.
  void begin_cut(tcp::socket& receiver) {
    m_state = State::draining;
    bump(m_proxy.m_cut_count);
    m_drain_receiver = &receiver;
    m_drain_deadline = std::chrono::steady_clock::now() + kDrainLimit;
    poll_drain();
  }

  void poll_drain() {
    const int fd = m_drain_receiver->native_handle();
    int queued = 0;
    int error = 0;
    socklen_t error_len = sizeof error;
    // A receiver that has failed (reset by its peer) will never acknowledge: reset at once.
    if (::ioctl(fd, SIOCOUTQ, &queued) != 0 || queued == 0 ||
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &error_len) != 0 || error != 0 ||
        std::chrono::steady_clock::now() >= m_drain_deadline) {
      reset();
      return;
    }
    m_drain_timer.expires_after(kDrainPoll);
    m_drain_timer.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->m_state != State::draining) return;
      self->poll_drain();
    });
  }

  TcpProxy::Impl& m_proxy;
  std::uint64_t m_id;
  tcp::socket m_client;
  tcp::socket m_server;
  Pump m_c2s;
  Pump m_s2c;
  asio::steady_timer m_drain_timer;
  tcp::socket* m_drain_receiver = nullptr;
  std::chrono::steady_clock::time_point m_drain_deadline{};
  State m_state = State::connecting;
};

TcpProxy::Impl::Impl(const std::string& host, std::uint16_t target_port) {
  tcp::resolver resolver(m_io);
  m_target = resolver.resolve(host, std::to_string(target_port));
  const tcp::endpoint local(asio::ip::make_address_v4("127.0.0.1"), 0);
  m_acceptor.open(local.protocol());
  m_acceptor.bind(local);
  m_acceptor.listen(asio::socket_base::max_listen_connections);
  // cut_all() drains the backlog with accept4(), which must not block.
  m_acceptor.non_blocking(true);
  m_port = m_acceptor.local_endpoint().port();
}

template <class F>
void TcpProxy::Impl::run_on_io(F f) {
  if (m_io.get_executor().running_in_this_thread()) {
    f();
    return;
  }
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  asio::post(m_io, [f = std::move(f), done]() mutable {
    f();
    done->set_value();
  });
  if (finished.wait_for(kIoAnswer) != std::future_status::ready)
    throw std::runtime_error("TcpProxy: the I/O thread did not answer within 10 s");
}

void TcpProxy::Impl::start_accept() {
  m_acceptor.async_accept([this](error_code ec, tcp::socket socket) {
    if (!m_acceptor.is_open()) return;
    if (ec) {
      // EMFILE and the like: try again shortly rather than spin.
      m_accept_retry.expires_after(kAcceptRetry);
      m_accept_retry.async_wait([this](error_code wait_ec) {
        if (!wait_ec && m_acceptor.is_open()) start_accept();
      });
      return;
    }
    on_accepted(std::move(socket));
    start_accept();
  });
}

void TcpProxy::Impl::on_accepted(tcp::socket socket) {
  bump(m_accepted);
  // relaxed: a flag read once per accept; no data is published with it.
  if (m_refuse.load(std::memory_order_relaxed)) {
    bump(m_refused);
    reset_socket(socket);
    return;
  }
  error_code ignored;
  socket.set_option(tcp::no_delay(true), ignored);
  const std::uint64_t id = m_next_id++;
  auto session = std::make_shared<Session>(*this, id, std::move(socket));
  m_sessions.emplace(id, session);
  bump(m_active);
  session->start();
}

void TcpProxy::Impl::reset_backlog() {
  for (;;) {
    const int fd = ::accept4(m_acceptor.native_handle(), nullptr, nullptr,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    bump(m_accepted);
    bump(m_cut_count);
    const ::linger abort_on_close{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof abort_on_close);
    ::close(fd);
  }
}

void TcpProxy::Impl::cut_sessions() {
  std::vector<std::shared_ptr<Session>> sessions;
  sessions.reserve(m_sessions.size());
  for (const auto& [id, session] : m_sessions) sessions.push_back(session);
  for (const auto& session : sessions) {
    const bool counted = session->cutting();  // a firing cut_after_bytes counted it already
    if (session->reset() && !counted) bump(m_cut_count);
  }
}

void TcpProxy::Impl::shutdown() {
  error_code ignored;
  m_acceptor.close(ignored);
  m_accept_retry.cancel();
  std::vector<std::shared_ptr<Session>> sessions;
  for (const auto& [id, session] : m_sessions) sessions.push_back(session);
  for (const auto& session : sessions) session->reset();
  m_work.reset();
  m_io.stop();
}

void TcpProxy::Impl::unregister(std::uint64_t id) {
  if (m_sessions.erase(id) > 0) {
    // relaxed: statistics only.
    m_active.fetch_sub(1, std::memory_order_relaxed);
  }
}

Plan TcpProxy::Impl::plan_piece(Direction d, std::size_t available, PumpCut& pump_cut) {
  const std::lock_guard lock(m_mutex);
  const DirectionFaults& faults = m_faults[index_of(d)];
  Plan plan;
  plan.length = faults.max_chunk > 0 ? std::min(available, faults.max_chunk) : available;
  if (m_cut.armed && m_cut.direction == d) {
    if (pump_cut.generation != m_cut.generation) {
      pump_cut.generation = m_cut.generation;
      pump_cut.remaining = m_cut.bytes;
    }
  } else {
    pump_cut.remaining.reset();
  }
  if (pump_cut.remaining && *pump_cut.remaining == 0) {
    plan.cut_now = true;
    m_cut.armed = false;
    return plan;
  }
  const auto chance = [this] { return static_cast<double>(m_rng() >> 11) * 0x1.0p-53; };
  if (faults.drop > 0.0 && chance() < faults.drop) {
    plan.drop = true;
    return plan;
  }
  if (pump_cut.remaining) {
    plan.length = static_cast<std::size_t>(
        std::min<std::uint64_t>(plan.length, *pump_cut.remaining));
    *pump_cut.remaining -= plan.length;
    if (*pump_cut.remaining == 0) {
      plan.cut_after = true;
      m_cut.armed = false;
    }
  }
  if (faults.corrupt > 0.0 && chance() < faults.corrupt)
    plan.flip_bit = static_cast<std::size_t>(m_rng() % (plan.length * 8));
  plan.delay = faults.delay;
  return plan;
}

TcpProxy::TcpProxy(std::string target_host, std::uint16_t target_port)
    : m_impl(std::make_unique<Impl>(target_host, target_port)) {
  m_impl->start_accept();
  m_impl->m_thread = std::thread([impl = m_impl.get()] { impl->m_io.run(); });
}

TcpProxy::~TcpProxy() {
  asio::post(m_impl->m_io, [impl = m_impl.get()] { impl->shutdown(); });
  m_impl->m_thread.join();
  // The I/O thread has stopped: sessions still referenced by destroyed handlers go with m_io.
  m_impl->m_sessions.clear();
}

std::uint16_t TcpProxy::port() const { return m_impl->m_port; }

void TcpProxy::cut_all() {
  // Two rounds: an accept the reactor completed before the first round ran may have its
  // handler queued behind it; the second round, posted after the first, runs after it.
  m_impl->run_on_io([impl = m_impl.get()] {
    impl->reset_backlog();
    impl->cut_sessions();
  });
  m_impl->run_on_io([impl = m_impl.get()] { impl->cut_sessions(); });
}

void TcpProxy::set_refuse(bool refuse) {
  // relaxed: see on_accepted().
  m_impl->m_refuse.store(refuse, std::memory_order_relaxed);
}

void TcpProxy::cut_after_bytes(std::uint64_t n, Direction d) {
  const std::lock_guard lock(m_impl->m_mutex);
  CutRequest& cut = m_impl->m_cut;
  cut.armed = true;
  cut.bytes = n;
  cut.direction = d;
  ++cut.generation;
}

void TcpProxy::cancel_cut_after_bytes() {
  const std::lock_guard lock(m_impl->m_mutex);
  m_impl->m_cut.armed = false;
}

void TcpProxy::set_delay(Direction d, std::chrono::nanoseconds delay) {
  const std::lock_guard lock(m_impl->m_mutex);
  m_impl->m_faults[index_of(d)].delay = std::max(delay, std::chrono::nanoseconds::zero());
}

void TcpProxy::set_max_chunk(Direction d, std::size_t max_chunk) {
  const std::lock_guard lock(m_impl->m_mutex);
  m_impl->m_faults[index_of(d)].max_chunk = max_chunk;
}

void TcpProxy::set_drop_probability(Direction d, double p) {
  check_probability(p);
  const std::lock_guard lock(m_impl->m_mutex);
  m_impl->m_faults[index_of(d)].drop = p;
}

void TcpProxy::set_corrupt_probability(Direction d, double p) {
  check_probability(p);
  const std::lock_guard lock(m_impl->m_mutex);
  m_impl->m_faults[index_of(d)].corrupt = p;
}

void TcpProxy::set_seed(std::uint64_t seed) {
  const std::lock_guard lock(m_impl->m_mutex);
  m_impl->m_rng.seed(seed);
}

void TcpProxy::clear_faults() {
  const std::lock_guard lock(m_impl->m_mutex);
  m_impl->m_faults = {};
}

std::uint64_t TcpProxy::connections_accepted() const { return read_counter(m_impl->m_accepted); }
std::uint64_t TcpProxy::connections_refused() const { return read_counter(m_impl->m_refused); }
std::uint64_t TcpProxy::connections_cut() const { return read_counter(m_impl->m_cut_count); }
std::uint64_t TcpProxy::active_connections() const { return read_counter(m_impl->m_active); }

std::uint64_t TcpProxy::bytes_forwarded(Direction d) const {
  return read_counter(m_impl->m_counters[index_of(d)].bytes);
}
std::uint64_t TcpProxy::chunks_forwarded(Direction d) const {
  return read_counter(m_impl->m_counters[index_of(d)].chunks);
}
std::uint64_t TcpProxy::chunks_dropped(Direction d) const {
  return read_counter(m_impl->m_counters[index_of(d)].dropped);
}
std::uint64_t TcpProxy::chunks_corrupted(Direction d) const {
  return read_counter(m_impl->m_counters[index_of(d)].corrupted);
}

}  // namespace ferry::testing
