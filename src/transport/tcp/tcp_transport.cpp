// SPDX-License-Identifier: Apache-2.0
// The TCP and TLS transport: Boost.Asio with `workers` threads on one io_context, a strand per
// connection, scatter-gather writes of merged frames, reads straight into message buffers, and
// per-connection handshake and keep-alive timers. Layer: src/transport/tcp.
#include "transport/tcp/tcp_transport.hpp"

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>

#include <sys/socket.h>
#include <sys/uio.h>

#include <atomic>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/frame_reader.hpp"
#include "core/link_writer.hpp"
#include "framing/frame.hpp"
#include "transport/asio_transport.hpp"

namespace ferry::detail::tcp {
namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;
using Done = AsioTransport::Done;

constexpr std::size_t kReadBuffer = std::size_t{64} << 10;
constexpr std::size_t kDirectReadAbove = std::size_t{16} << 10;  // read straight into the message
// A put() writes on its own thread when the connection is idle, or when the batch is large
// enough that merging more into it gains nothing. A small batch soon after the previous write
// is a stream: the strand writes it, and merges what the producer queues meanwhile.
constexpr std::size_t kInlineAlwaysFrom = std::size_t{16} << 10;
constexpr auto kInlineIdleAfter = std::chrono::microseconds(10);

Failure translate(const error_code& ec, const std::string& context) {
  Failure f;
  f.what = context + ": " + ec.message();
  if (ec.category() == asio::error::get_ssl_category() || ec.category() == ssl::error::get_stream_category()) {
    const std::string msg = ec.message();
    f.errc = msg.find("certificate") != std::string::npos ? Errc::permission_denied : Errc::protocol_error;
    if (ec == ssl::error::stream_truncated) f.errc = Errc::peer_lost;
    return f;
  }
  if (ec == asio::error::connection_refused || ec == asio::error::host_unreachable ||
      ec == asio::error::network_unreachable) {
    f.errc = Errc::not_found;
  } else if (ec == asio::error::timed_out) {
    f.errc = Errc::timed_out;
  } else if (ec == asio::error::address_in_use) {
    f.errc = Errc::address_in_use;
  } else if (ec == asio::error::access_denied) {
    f.errc = Errc::permission_denied;
  } else {
    f.errc = Errc::peer_lost;  // eof, reset, broken pipe, aborted...
  }
  return f;
}

class TcpTransport;

/// Asio's transfer_all caps each system call at 64 KiB; a 2 MiB message or a merged batch
/// goes out (and comes in) in one call instead, as a hand-written loop would.
struct TransferAllUnlimited {
  std::size_t operator()(const error_code& ec, std::size_t) const noexcept {
    return ec ? 0 : std::numeric_limits<std::size_t>::max();
  }
};

/// Plain TCP or TLS over TCP: the one place the two differ.
class Stream {
 public:
  Stream(const asio::strand<asio::io_context::executor_type>& strand, ssl::context* tls) {
    if (tls) {
      m_tls.emplace(strand, *tls);
    } else {
      m_plain.emplace(strand);
    }
  }
  tcp::socket& socket() noexcept { return m_tls ? m_tls->next_layer() : *m_plain; }
  bool tls() const noexcept { return m_tls.has_value(); }
  ssl::stream<tcp::socket>& tls_stream() noexcept { return *m_tls; }

  template <class Buffers, class Handler>
  void async_read_some(const Buffers& b, Handler&& h) {
    if (m_tls) {
      m_tls->async_read_some(b, std::forward<Handler>(h));
    } else {
      m_plain->async_read_some(b, std::forward<Handler>(h));
    }
  }
  template <class Buffers, class Handler>
  void async_read_exactly(const Buffers& b, Handler&& h) {
    if (m_tls) {
      asio::async_read(*m_tls, b, TransferAllUnlimited{}, std::forward<Handler>(h));
    } else {
      asio::async_read(*m_plain, b, TransferAllUnlimited{}, std::forward<Handler>(h));
    }
  }
  template <class Buffers, class Handler>
  void async_write_all(const Buffers& b, Handler&& h) {
    if (m_tls) {
      asio::async_write(*m_tls, b, TransferAllUnlimited{}, std::forward<Handler>(h));
    } else {
      asio::async_write(*m_plain, b, TransferAllUnlimited{}, std::forward<Handler>(h));
    }
  }

 private:
  std::optional<tcp::socket> m_plain;
  std::optional<ssl::stream<tcp::socket>> m_tls;
};

/// One connection. Everything runs on its strand except kick(), resume_reading() and
/// shutdown(), and the writer role (next_batch(), write_inline()), which whoever wins it in
/// kick() holds, on any thread.
class Connection final : public AsioLink, public std::enable_shared_from_this<Connection> {
 public:
  enum class Role { server, client };

  Connection(TcpTransport& transport, Role role);
  ~Connection() override;

  tcp::socket& socket() noexcept { return m_stream.socket(); }
  /// After the TCP connection is up: (TLS handshake,) Ferry hello, then run. done(failure)
  /// reports the outcome of the handshake (nullopt: running).
  void start(Done done);

  void kick() override;
  void resume_reading() override;
  void shutdown(std::error_code why) override;
  std::string transport() const override { return m_stream.tls() ? "tls" : "tcp"; }
  std::string remote() const override { return m_remote; }
  std::string detail() const override;
  void abort() override;
  void cut() override {
    asio::post(m_strand, [self = shared_from_this()] {
      if (self->m_running) self->fail(Errc::peer_lost, "connection cut (fault injection)");
    });
  }

 private:
  void tls_handshake();
  void send_hello();
  void read_hello();
  /// The peer's hello is in m_hello_in: decode it, then on_hello() or refuse.
  void hello_read();
  /// A hello that did not decode (e): a server answers a version mismatch, then closes.
  void bad_hello(Errc e, const std::string& why);
  void on_hello(const framing::Hello& hello);
  void handshake_failed(Failure f);
  void run();

  void read_more();
  void on_read(const error_code& ec, std::size_t n, bool direct);
  /// Feeds the buffered bytes to the frame reader.
  void process();
  /// After a read round: wake get() once, account received bytes, acknowledge if due.
  void end_round();
  /// The writer role's next batch from the session (m_writer, m_wbufs). False: nothing is due
  /// and the role was released (or handed to a concurrent kick()).
  bool next_batch();
  /// Writer role, on the strand: write batches until nothing is due.
  void do_write();
  /// Writer role, any thread (plain TCP): one batch with one non-blocking sendmsg() on the
  /// caller's thread, so an idle connection costs a put() no thread hand-off. Whatever does
  /// not fit in the socket buffer goes on as an async write on the strand. False: the inline
  /// path is not open (TLS, not running, closed); the caller hands the role to the strand.
  bool write_inline();
  /// Writer role, any thread: m_wbufs is written by an async write on the strand.
  void write_rest_on_strand();
  /// The async write of m_wbufs completed (strand).
  void on_written(const error_code& ec);
  void on_tick();
  void fail(Errc errc, const std::string& what);
  void close_socket();

  TcpTransport& m_transport;
  const Role m_role;
  CommunicatorImpl& m_owner;
  asio::strand<asio::io_context::executor_type> m_strand;
  Stream m_stream;
  asio::steady_timer m_timer;
  std::string m_remote;
  Done m_handshake_done;
  std::shared_ptr<Session> m_session;
  bool m_running = false;
  bool m_failed = false;
  bool m_draining = false;  // clean close: our FIN sent, discarding until the peer's EOF
  Clock::time_point m_drain_deadline{};

  // Handshake.
  std::array<std::byte, framing::kHelloSize> m_hello_out{};
  std::vector<std::byte> m_hello_in;  // the prefix, then the whole hello (hello_size says how long)
  std::array<std::byte, framing::kLocalitySize> m_locality_out{};

  // Reader.
  std::vector<std::byte> m_rbuf;
  std::size_t m_rbegin = 0;
  std::size_t m_rend = 0;
  bool m_reading = false;
  FrameReader m_reader;
  Clock::time_point m_last_rx{};

  // Writer (the role's holder owns m_writer's batch and record, and m_wbufs, m_iov).
  LinkWriter m_writer;
  std::vector<asio::const_buffer> m_wbufs;
  std::vector<iovec> m_iov;
  // relaxed everywhere: a time stamp for the keep-alive timer, set by whichever thread wrote.
  std::atomic<Clock::rep> m_last_tx{0};
  // The descriptor inline writes use: -1 until run() (plain TCP only) and from close_socket()
  // on. Held across each inline sendmsg() so the strand cannot close (and the kernel reuse)
  // the descriptor under it.
  std::mutex m_inline_mutex;
  int m_inline_fd = -1;
};

class TcpTransport final : public AsioTransport {
 public:
  TcpTransport(CommunicatorImpl& owner, const Endpoint& endpoint, std::string route);
  const Endpoint& endpoint() const noexcept { return m_endpoint; }
  ~TcpTransport() override { stop(); }

  ssl::context* tls() noexcept { return m_tls ? &*m_tls : nullptr; }

 private:
  void setup_tls();
  void listen();
  void accept();
  void resolve();
  void connect(Done done) override;
  void stop_accepting() override;

  const Endpoint m_endpoint;
  std::optional<ssl::context> m_tls;
  std::optional<tcp::acceptor> m_acceptor;
  tcp::resolver::results_type m_resolved;
};

// ---------------------------------------------------------------------------------------------
// Connection

std::string Connection::detail() const { return m_transport.route(); }

Connection::Connection(TcpTransport& transport, Role role)
    : m_transport(transport),
      m_role(role),
      m_owner(transport.owner()),
      m_strand(asio::make_strand(transport.io())),
      m_stream(m_strand, transport.tls()),
      m_timer(m_strand),
      m_rbuf(kReadBuffer),
      m_reader(m_owner),
      m_writer(transport.conn().merge_size) {
  // A batch has at most kMaxBuffers + 2 pieces: the writer role never allocates for them.
  m_wbufs.reserve(framing::Batch::kMaxBuffers + 4);
  m_iov.reserve(framing::Batch::kMaxBuffers + 4);
}

Connection::~Connection() {
  // A write whose completion handler was dropped (the event loop stopped): nothing reads its
  // buffers any more, so what it carried may fail now.
  if (m_writer.pending && m_session) m_session->write_failed(m_writer.record);
}

void Connection::start(Done done) {
  m_handshake_done = std::move(done);
  error_code ec;
  m_stream.socket().set_option(tcp::no_delay(true), ec);
  const auto ep = m_stream.socket().remote_endpoint(ec);
  m_remote = ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
  m_timer.expires_after(m_transport.conn().handshake_timeout);
  m_timer.async_wait([self = shared_from_this()](const error_code& e) {
    if (!e && !self->m_running && !self->m_failed) {
      self->handshake_failed({Errc::timed_out, "handshake with " + self->m_remote + " timed out"});
    }
  });
  if (m_stream.tls()) {
    tls_handshake();
  } else if (m_role == Role::client) {
    send_hello();
  } else {
    read_hello();
  }
}

void Connection::tls_handshake() {
  auto& s = m_stream.tls_stream();
  if (m_role == Role::client) {
    const SecurityOptions& sec = m_owner.options().security;
    const std::string name = sec.server_name.empty() ? m_transport.endpoint().host : sec.server_name;
    error_code ec;
    asio::ip::make_address(name, ec);
    if (ec) SSL_set_tlsext_host_name(s.native_handle(), name.c_str());  // SNI for names only
    if (sec.verify_hostname) s.set_verify_callback(ssl::host_name_verification(name));
  }
  s.async_handshake(m_role == Role::client ? ssl::stream_base::client : ssl::stream_base::server,
                    [self = shared_from_this()](const error_code& ec) {
                      if (self->m_failed) return;
                      if (ec) {
                        self->handshake_failed(translate(ec, "TLS handshake with " + self->m_remote));
                      } else if (self->m_role == Role::client) {
                        self->send_hello();
                      } else {
                        self->read_hello();
                      }
                    });
}

void Connection::send_hello() {
  framing::Hello hello;
  m_owner.client_hello(hello, true);
  framing::encode_hello(hello, m_hello_out);
  m_stream.async_write_all(asio::buffer(m_hello_out), [self = shared_from_this()](const error_code& ec, std::size_t) {
    if (self->m_failed) return;
    if (ec) return self->handshake_failed(translate(ec, "handshake with " + self->m_remote));
    self->read_hello();
  });
}

void Connection::read_hello() {
  auto self = shared_from_this();
  read_hello_bytes(
      m_hello_in, [self](auto buffer, auto handler) { self->m_stream.async_read_exactly(buffer, std::move(handler)); },
      [self](const error_code& ec, Errc e, std::string why) {
        if (self->m_failed) return;
        if (ec) return self->handshake_failed(translate(ec, "handshake with " + self->m_remote));
        if (e != Errc{} && self->m_role == Role::client) e = reply_error(self->m_owner, e, {}, framing::Hello{}, why);
        if (e != Errc{}) return self->bad_hello(e, why);
        self->hello_read();
      });
}

void Connection::hello_read() {
  framing::Hello hello;
  std::string why;
  Errc e = framing::decode_hello(m_hello_in, hello, why);
  if (e != Errc{} && m_role == Role::client) e = reply_error(m_owner, e, m_hello_in, hello, why);
  if (e != Errc{}) return bad_hello(e, why);
  on_hello(hello);
}

void Connection::bad_hello(Errc e, const std::string& why) {
  if (m_role == Role::server && e == Errc::version_mismatch) {
    // Tell the client why before closing: a hello in our version with the status.
    framing::Hello reply;
    reply.id = m_owner.options().id;
    reply.max_chunk = m_owner.max_chunk();
    reply.max_message = m_owner.options().connection.message_size;
    reply.status = static_cast<std::uint32_t>(Errc::version_mismatch);
    framing::encode_hello(reply, m_hello_out);
    m_stream.async_write_all(asio::buffer(m_hello_out), [self = shared_from_this(), why](const error_code&, std::size_t) {
      self->handshake_failed({Errc::version_mismatch, why});
    });
    return;
  }
  // A damaged hello (peer_lost) decides nothing: no session; a client connects again.
  handshake_failed({e, "handshake with " + m_remote + ": " + why});
}

void Connection::on_hello(const framing::Hello& hello) {
  std::string why;
  std::uint64_t next_expected = 1;
  if (m_role == Role::server && (hello.flags & framing::kHelloProbe) != 0) {
    // An auto:// client asks where we run: our hello and locality, then close; no session.
    framing::Hello reply;
    reply.id = m_owner.options().id;
    reply.max_chunk = m_owner.max_chunk();
    reply.max_message = m_owner.options().connection.message_size;
    reply.flags = framing::kHelloProbe;
    framing::encode_hello(reply, m_hello_out);
    framing::encode_locality(m_transport.locality(), m_locality_out);
    const std::array<asio::const_buffer, 2> out{asio::buffer(m_hello_out), asio::buffer(m_locality_out)};
    m_stream.async_write_all(out, [self = shared_from_this()](const error_code&, std::size_t) {
      self->handshake_failed({Errc::closed, "probe answered"});  // closes the connection
    });
    return;
  }
  if (m_role == Role::server) {
    framing::Hello reply;
    const Errc e = m_owner.accept_client(hello, shared_from_this(), reply, m_session, next_expected, why);
    if (e != Errc{}) {
      m_session.reset();
      reply.status = static_cast<std::uint32_t>(e);
      reply.flags = 0;
    }
    framing::encode_hello(reply, m_hello_out);
    start_framing(m_reader, m_writer, m_session, next_expected, reply.flags);
    m_stream.async_write_all(asio::buffer(m_hello_out), [self = shared_from_this(), e, why](const error_code& ec, std::size_t) {
      if (self->m_failed) return;
      if (e != Errc{}) return self->handshake_failed({e, "refused client: " + why});
      if (ec) return self->fail(translate(ec, "handshake").errc, "handshake reply");
      self->run();
    });
    return;
  }
  if (auto f = m_transport.attach_reply(hello, shared_from_this(), m_remote, m_session, next_expected)) {
    return handshake_failed(std::move(*f));
  }
  start_framing(m_reader, m_writer, m_session, next_expected, hello.flags);
  run();
}

void Connection::handshake_failed(Failure f) {
  if (m_failed) return;
  m_failed = true;
  close_socket();
  if (m_session) m_session->link_down(this, ferry_code(f.errc));
  auto done = std::move(m_handshake_done);
  m_transport.link_ended(shared_from_this(), false);
  if (done) done(std::move(f));
}

void Connection::run() {
  m_running = true;
  m_last_rx = Clock::now();
  // relaxed: see m_last_tx.
  m_last_tx.store(m_last_rx.time_since_epoch().count(), std::memory_order_relaxed);
  if (!m_stream.tls()) {
    const std::lock_guard lock(m_inline_mutex);
    m_inline_fd = m_stream.socket().native_handle();
  }
  if (auto done = std::move(m_handshake_done)) done(std::nullopt);
  on_tick();
  read_more();
  kick();  // anything queued before the connection came up (a resend after a reconnect)
}

void Connection::kick() {
  if (m_writer.claim()) {
    if (!write_inline()) asio::post(m_strand, [self = shared_from_this()] { self->do_write(); });
  }
}

bool Connection::next_batch() {
  if (!m_writer.next(*m_session)) return false;
  m_wbufs.clear();
  for (const auto& b : m_writer.batch.buffers()) m_wbufs.emplace_back(b.data(), b.size());
  return true;
}

void Connection::do_write() {
  if (m_failed || !m_session || !m_running) return m_writer.drop();  // run() kicks again
  if (!next_batch()) return;
  m_stream.async_write_all(m_wbufs, [self = shared_from_this()](const error_code& ec, std::size_t) {
    self->on_written(ec);
  });
}

bool Connection::write_inline() {
  // Held from the fill to the hand-off: a batch handed to the strand is posted before
  // close_socket() can run, so TcpTransport::stop()'s poll() still answers it.
  std::unique_lock lock(m_inline_mutex);
  if (m_inline_fd < 0) return false;
  // m_session was set before run() published m_inline_fd under this mutex.
  if (!next_batch()) return true;
  // relaxed: see m_last_tx.
  const Clock::time_point last_tx{Clock::duration(m_last_tx.load(std::memory_order_relaxed))};
  // The close frame goes from the strand: its written() may end the session, and the end's
  // callbacks (on_disconnect) run on Ferry's threads, never on the caller's.
  if (m_writer.record.close || (m_writer.batch.bytes() < kInlineAlwaysFrom && Clock::now() - last_tx < kInlineIdleAfter)) {
    write_rest_on_strand();
    return true;
  }
  m_iov.clear();
  std::size_t total = 0;
  for (const auto& b : m_wbufs) {
    m_iov.push_back(iovec{const_cast<void*>(b.data()), b.size()});  // NOLINT(cppcoreguidelines-pro-type-const-cast): sendmsg() only reads
    total += b.size();
  }
  msghdr msg{};
  msg.msg_iov = m_iov.data();
  msg.msg_iovlen = m_iov.size();
  const ssize_t n = ::sendmsg(m_inline_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  const int err = errno;
  if (n >= 0 && static_cast<std::size_t>(n) == total) {
    lock.unlock();
    const bool more = m_writer.record.more;
    m_writer.pending = false;
    // relaxed: see m_last_tx.
    m_last_tx.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
    m_session->written(m_writer.record);
    // One batch per caller: more that is due is written on the strand, so a put() never
    // writes other threads' messages for long.
    if (more || m_writer.release()) asio::post(m_strand, [self = shared_from_this()] { self->do_write(); });
    return true;
  }
  if (n < 0 && err != EAGAIN && err != EWOULDBLOCK && err != EINTR) {
    asio::post(m_strand, [self = shared_from_this(), ec = error_code(err, boost::system::system_category())] {
      self->on_written(ec);
    });
    return true;
  }
  // The socket buffer is full: the rest goes as an async write on the strand.
  std::size_t done = n > 0 ? static_cast<std::size_t>(n) : 0;
  std::size_t skip = 0;
  while (done >= m_wbufs[skip].size()) done -= m_wbufs[skip++].size();
  m_wbufs.erase(m_wbufs.begin(), m_wbufs.begin() + static_cast<std::ptrdiff_t>(skip));
  m_wbufs.front() += done;
  write_rest_on_strand();
  return true;
}

void Connection::write_rest_on_strand() {
  asio::post(m_strand, [self = shared_from_this()] {
    if (self->m_failed) return self->on_written(asio::error::operation_aborted);
    self->m_stream.async_write_all(self->m_wbufs, [self](const error_code& ec, std::size_t) { self->on_written(ec); });
  });
}

void Connection::on_written(const error_code& ec) {
  m_writer.pending = false;
  if (m_failed || ec) {
    m_session->write_failed(m_writer.record);
    m_writer.drop();
    if (m_failed) return;
    const Failure f = translate(ec, "write to " + m_remote);
    return fail(f.errc, f.what);
  }
  // relaxed: see m_last_tx.
  m_last_tx.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
  m_session->written(m_writer.record);
  do_write();
}

void Connection::read_more() {
  if (m_failed || m_reading || m_reader.paused()) return;
  if (m_reader.in_payload() && m_rbegin == m_rend) {
    const std::span<std::byte> target = m_reader.chunk_target();
    if (target.size() >= kDirectReadAbove) {
      m_reading = true;
      m_stream.async_read_exactly(asio::buffer(target.data(), target.size()),
                                  [self = shared_from_this()](const error_code& ec, std::size_t n) {
                                    self->on_read(ec, n, true);
                                  });
      return;
    }
  }
  if (m_rbegin == m_rend) m_rbegin = m_rend = 0;  // the reader keeps split headers itself
  m_reading = true;
  m_stream.async_read_some(asio::buffer(m_rbuf.data() + m_rend, m_rbuf.size() - m_rend),
                           [self = shared_from_this()](const error_code& ec, std::size_t n) {
                             self->on_read(ec, n, false);
                           });
}

void Connection::on_read(const error_code& ec, std::size_t n, bool direct) {
  m_reading = false;
  if (m_failed) return;
  if (ec) {
    if (m_draining) return close_socket();
    const Failure f = translate(ec, "read from " + m_remote);
    return fail(f.errc, f.what);
  }
  m_last_rx = Clock::now();
  if (m_draining) {  // the session ended cleanly: discard until the peer's EOF
    m_rbegin = m_rend = 0;
    return read_more();
  }
  if (direct) {
    m_reader.advance(n);
  } else {
    m_rend += n;
  }
  process();
  if (m_failed) return;
  end_round();
  read_more();
}

void Connection::end_round() {
  if (!m_reader.round_open()) return;
  // Nothing pending in the socket: no read round follows at once.
  error_code ec;
  const bool socket_idle = m_stream.socket().available(ec) == 0;
  m_reader.end_round(socket_idle, m_rbegin == m_rend);
}

void Connection::process() {
  Errc e{};
  std::string why;
  m_rbegin += m_reader.feed(std::span<const std::byte>(m_rbuf.data() + m_rbegin, m_rend - m_rbegin), e, why);
  if (e != Errc{}) fail(e, "from " + m_remote + ": " + why);
}

void Connection::resume_reading() {
  asio::post(m_strand, [self = shared_from_this()] {
    if (!self->m_reader.paused() || self->m_failed) return;
    self->m_reader.resume();
    self->m_last_rx = Clock::now();
    self->process();
    if (self->m_failed) return;
    self->end_round();
    self->read_more();
  });
}

void Connection::on_tick() {
  if (m_failed) return;
  const auto now = Clock::now();
  const auto& c = m_transport.conn();
  if (m_draining) {
    if (now >= m_drain_deadline) return close_socket();
  } else {
    if (!m_reader.paused() && now - m_last_rx >= c.keepalive_timeout) {
      return fail(Errc::peer_lost, "no frame from " + m_remote + " for " +
                                       std::to_string(c.keepalive_timeout.count()) + " ms");
    }
    // relaxed: see m_last_tx.
    if (now - Clock::time_point(Clock::duration(m_last_tx.load(std::memory_order_relaxed))) >= c.keepalive_interval) {
      m_writer.want_keepalive();
      kick();
    }
  }
  m_timer.expires_after(keepalive_period(c));
  m_timer.async_wait([self = shared_from_this()](const error_code& ec) {
    if (!ec) self->on_tick();
  });
}

void Connection::fail(Errc errc, const std::string& what) {
  (void)what;
  if (m_failed) return;
  if (!m_running) return handshake_failed({errc, what});
  m_failed = true;
  m_reader.wake_pending();
  close_socket();
  if (m_session) m_session->link_down(this, ferry_code(errc));
  m_transport.link_ended(shared_from_this(), true);
}

void Connection::shutdown(std::error_code why) {
  asio::post(m_strand, [self = shared_from_this(), why] {
    if (self->m_failed || self->m_draining) return;
    self->m_reader.wake_pending();
    if (why == ferry_code(Errc::closed) && self->m_running) {
      // A clean end: let the bytes already written arrive (closing with unread input would
      // reset the connection and could destroy them), send FIN, wait briefly for the peer's.
      self->m_draining = true;
      self->m_reader.resume();
      {
        const std::lock_guard lock(self->m_inline_mutex);  // nothing more is written
        self->m_inline_fd = -1;
      }
      self->m_drain_deadline = Clock::now() + std::chrono::seconds(2);
      error_code ec;
      self->m_stream.socket().shutdown(tcp::socket::shutdown_send, ec);
      self->read_more();
      return;
    }
    self->m_failed = true;
    self->close_socket();
    self->m_transport.link_ended(self, false);
  });
}

void Connection::abort() {
  asio::post(m_strand, [self = shared_from_this()] {
    self->m_failed = true;
    self->close_socket();
  });
}

void Connection::close_socket() {
  error_code ec;
  m_timer.cancel();
  {
    const std::lock_guard lock(m_inline_mutex);  // no inline sendmsg() is using the descriptor
    m_inline_fd = -1;
  }
  m_stream.socket().close(ec);
  if (m_draining) {
    m_draining = false;
    m_failed = true;
    m_transport.link_ended(shared_from_this(), false);
  }
}

// ---------------------------------------------------------------------------------------------
// TcpTransport

TcpTransport::TcpTransport(CommunicatorImpl& owner, const Endpoint& endpoint, std::string route)
    : AsioTransport(owner), m_endpoint(endpoint) {
  set_route(std::move(route));
  if (m_endpoint.scheme == Scheme::tls) setup_tls();
  if (owner.purpose() == Purpose::server) {
    listen();
    start_threads();
    asio::post(m_acceptor->get_executor(), [this] { accept(); });
    return;
  }
  resolve();
  start_threads();
  try {
    connect_first();
  } catch (...) {
    stop();
    throw;
  }
}

void TcpTransport::stop_accepting() {
  if (!m_acceptor) return;
  asio::post(m_acceptor->get_executor(), [this] {
    error_code ec;
    m_acceptor->close(ec);
  });
}

void TcpTransport::setup_tls() {
  const SecurityOptions& sec = owner().options().security;
  const bool server = owner().purpose() == Purpose::server;
  m_tls.emplace(server ? ssl::context::tls_server : ssl::context::tls_client);
  error_code ec;
  m_tls->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                         ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1,
                     ec);
  const auto load = [&](const char* what, const std::filesystem::path& p, auto&& fn) {
    error_code e;
    fn(p.string(), e);
    if (e) throw Error(Errc::invalid_argument, std::string("tls: cannot use ") + what + " '" + p.string() + "': " + e.message());
  };
  if (server) {
    if (sec.certificate.empty() || sec.key.empty()) {
      throw Error(Errc::invalid_argument, "tls: a server needs security.certificate and security.key");
    }
    load("certificate chain", sec.certificate, [&](const std::string& p, error_code& e) { m_tls->use_certificate_chain_file(p, e); });
    load("private key", sec.key, [&](const std::string& p, error_code& e) { m_tls->use_private_key_file(p, ssl::context::pem, e); });
    if (sec.require_client_certificate) {
      if (sec.ca.empty()) throw Error(Errc::invalid_argument, "tls: require_client_certificate needs security.ca");
      load("CA file", sec.ca, [&](const std::string& p, error_code& e) { m_tls->load_verify_file(p, e); });
      m_tls->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    }
    return;
  }
  if (sec.ca.empty()) {
    m_tls->set_default_verify_paths(ec);
    if (ec) throw Error(Errc::unavailable, "tls: no system certificate store: " + ec.message());
  } else {
    load("CA file", sec.ca, [&](const std::string& p, error_code& e) { m_tls->load_verify_file(p, e); });
  }
  m_tls->set_verify_mode(ssl::verify_peer);
  if (!sec.certificate.empty() || !sec.key.empty()) {
    load("certificate chain", sec.certificate, [&](const std::string& p, error_code& e) { m_tls->use_certificate_chain_file(p, e); });
    load("private key", sec.key, [&](const std::string& p, error_code& e) { m_tls->use_private_key_file(p, ssl::context::pem, e); });
  }
}

void TcpTransport::listen() {
  error_code ec;
  tcp::resolver resolver(io());
  const auto results = resolver.resolve(m_endpoint.host, std::to_string(m_endpoint.port), tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    throw Error(Errc::invalid_argument, "listen on " + m_endpoint.to_string() + ": cannot resolve host: " + ec.message());
  }
  const tcp::endpoint ep = *results.begin();
  m_acceptor.emplace(asio::make_strand(io()));
  m_acceptor->open(ep.protocol(), ec);
  if (!ec) m_acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) m_acceptor->bind(ep, ec);
  if (!ec) m_acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    const Failure f = translate(ec, "listen on " + m_endpoint.to_string());
    throw Error(f.errc == Errc::peer_lost ? Errc::system : f.errc, f.what);
  }
  Endpoint local = m_endpoint;
  local.port = m_acceptor->local_endpoint(ec).port();
  m_local = local.to_string();
}

void TcpTransport::accept() {
  if (stopping()) return;
  auto conn = std::make_shared<Connection>(*this, Connection::Role::server);
  m_acceptor->async_accept(conn->socket(), [this, conn](const error_code& ec) {
    if (stopping() || ec == asio::error::operation_aborted) return;
    if (!ec) {
      link_opened(conn);
      asio::post(conn->socket().get_executor(), [conn] { conn->start(nullptr); });
    }
    // Out of descriptors or similar: keep accepting (a pause avoids a busy loop).
    if (ec && ec != asio::error::operation_aborted) {
      auto t = std::make_shared<asio::steady_timer>(io(), std::chrono::milliseconds(50));
      t->async_wait([this, t](const error_code&) { accept(); });
      return;
    }
    accept();
  });
}

void TcpTransport::connect(Done done) {
  auto link = std::make_shared<Connection>(*this, Connection::Role::client);
  link_opened(link);
  auto timer = std::make_shared<asio::steady_timer>(link->socket().get_executor(), conn().connect_timeout);
  timer->async_wait([link](const error_code& ec) {
    if (!ec) {
      error_code ignored;
      link->socket().close(ignored);  // the connect completes with operation_aborted
    }
  });
  asio::async_connect(link->socket(), m_resolved,
                      [this, link, timer, done = std::move(done)](const error_code& ec, const tcp::endpoint&) mutable {
                        timer->cancel();
                        if (ec) {
                          link_ended(link, false);
                          const Failure f = ec == asio::error::operation_aborted
                                                ? Failure{Errc::timed_out, "connect to " + m_endpoint.to_string() + ": timed out"}
                                                : translate(ec, "connect to " + m_endpoint.to_string());
                          return done(f);
                        }
                        link->start(std::move(done));
                      });
}

void TcpTransport::resolve() {
  error_code ec;
  tcp::resolver resolver(io());
  m_resolved = resolver.resolve(m_endpoint.host, std::to_string(m_endpoint.port), ec);
  if (ec || m_resolved.empty()) {
    throw Error(Errc::not_found, "connect to " + m_endpoint.to_string() + ": cannot resolve host: " + ec.message());
  }
  m_local = m_endpoint.to_string();
}

}  // namespace

std::unique_ptr<AsioTransport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint, std::string route) {
  return std::make_unique<TcpTransport>(owner, endpoint, std::move(route));
}

std::optional<framing::Locality> probe(const CommunicatorImpl& owner, const Endpoint& endpoint, PeerId& server_id,
                                       std::string& why) {
  asio::io_context io;
  tcp::resolver resolver(io);
  error_code ec;
  const auto resolved = resolver.resolve(endpoint.host, std::to_string(endpoint.port), ec);
  if (ec || resolved.empty()) {
    why = "cannot resolve " + endpoint.host + ": " + ec.message();
    return std::nullopt;
  }
  tcp::socket socket(io);
  framing::Hello hello;
  hello.id = owner.options().id;
  hello.max_chunk = owner.max_chunk();
  hello.max_message = owner.options().connection.message_size;
  hello.flags = framing::kHelloProbe;
  std::array<std::byte, framing::kHelloSize> out{};
  framing::encode_hello(hello, out);
  std::vector<std::byte> hello_in;
  std::array<std::byte, framing::kLocalitySize> locality_in{};
  error_code result = asio::error::timed_out;
  Errc refused{};  // the reply's prefix said no (not a Ferry server, damaged)
  std::string step = "connect";
  asio::async_connect(socket, resolved, [&](const error_code& e, const tcp::endpoint&) {
    if (e) return void(result = e);
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);  // result stays timed_out until the reply is read
    step = "handshake";
    asio::async_write(socket, asio::buffer(out), [&](const error_code& w, std::size_t) {
      if (w) return void(result = w);
      // The hello as long as its prefix says (a server of another version answers with its
      // own and closes), then the locality block of a probe's answer.
      read_hello_bytes(
          hello_in, [&](auto buffer, auto handler) { asio::async_read(socket, buffer, std::move(handler)); },
          [&](const error_code& r, Errc said, const std::string& bad) {
            if (r || said != Errc{}) {
              result = r ? r : error_code{};
              refused = said;
              why = bad;
              return;
            }
            asio::async_read(socket, asio::buffer(locality_in), [&](const error_code& l, std::size_t) {
              // A refusal (another version, say) comes without a locality block: decoded below.
              result = l == asio::error::eof ? error_code{} : l;
            });
          });
    });
  });
  io.run_for(owner.options().connection.connect_timeout);
  if (refused != Errc{}) return std::nullopt;
  if (result) {
    why = step + " (probe) to " + endpoint.host + ":" + std::to_string(endpoint.port) + ": " + result.message();
    return std::nullopt;
  }
  framing::Hello reply;
  Errc e = framing::decode_hello(hello_in, reply, why);
  if (e != Errc{}) return std::nullopt;
  if ((reply.flags & framing::kHelloProbe) == 0 || reply.status != 0) {
    why = "the server did not answer the locality probe";
    return std::nullopt;
  }
  server_id = reply.id;
  framing::Locality locality;
  e = framing::decode_locality(locality_in, locality, why);
  if (e != Errc{}) return std::nullopt;
  return locality;
}

}  // namespace ferry::detail::tcp
