// SPDX-License-Identifier: Apache-2.0
// The gRPC transport. Each client opens one bidirectional stream (the generic method kMethod,
// raw bytes both ways, no protobuf) and keeps it for the session's connection: its messages
// carry the same hello and frame batches as a TCP connection, pushed in both directions.
// Flow control is gRPC's: one write in flight per stream (the writer role waits for
// OnWriteDone), one read in flight (a paused reader does not ask for the next message), so
// HTTP/2's windows hold the peer back when our receive queue is full.
//
// gRPC's callback reactions (OnReadDone, OnWriteDone, OnDone) run on gRPC's threads; they only
// post to the connection's strand, where everything else runs, as in the TCP transport. The
// connection calls its stream only from the strand and never after close(): the client keeps
// a hold on its call and the server calls Finish() only there, so a reactor outlives every
// call into it.
// Layer: src/transport/grpc.
#include "transport/grpc/grpc_transport.hpp"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <boost/asio.hpp>

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <vector>

#include "core/frame_reader.hpp"
#include "core/link_writer.hpp"
#include "transport/asio_transport.hpp"

namespace ferry::detail::grpc_link {
namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using Done = AsioTransport::Done;

/// The largest gRPC message either side sends or accepts, set explicitly: gRPC's default
/// receive cap. A batch larger than this goes out as several messages (the frame reader
/// carries a frame across them as it does across TCP reads), so no peer can make us buffer
/// more than this per stream before the hello, or after it.
constexpr std::size_t kMaxGrpcMessage = std::size_t{4} << 20;

/// Why a stream ended, as a ferry code. connected: it had carried a session.
Errc from_status(const grpc::Status& s, bool connected) {
  switch (s.error_code()) {
    case grpc::StatusCode::OK:
    case grpc::StatusCode::CANCELLED:
      return Errc::peer_lost;
    case grpc::StatusCode::UNAVAILABLE:
      return connected ? Errc::peer_lost : Errc::not_found;
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return Errc::timed_out;
    case grpc::StatusCode::UNAUTHENTICATED:
    case grpc::StatusCode::PERMISSION_DENIED:
      return Errc::permission_denied;
    case grpc::StatusCode::UNIMPLEMENTED:
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
    case grpc::StatusCode::INVALID_ARGUMENT:
      return Errc::protocol_error;
    default:
      return Errc::peer_lost;
  }
}

std::string read_file(const std::filesystem::path& p, const char* what) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  if (!in || s.str().empty()) {
    throw Error(Errc::invalid_argument, std::string("grpcs: cannot read ") + what + " '" + p.string() + "'");
  }
  return s.str();
}

std::string host_port(const Endpoint& e, std::uint16_t port) {
  const bool v6 = e.host.find(':') != std::string::npos;
  return (v6 ? "[" + e.host + "]" : e.host) + ":" + std::to_string(port);
}

/// gRPC's peer URI ("ipv4:127.0.0.1:5000", "ipv6:%5B::1%5D:5000") as TCP's remote() writes
/// an address: "127.0.0.1:5000", "[::1]:5000".
std::string address_of(const std::string& uri) {
  std::string out;
  const std::size_t colon = uri.find(':');
  const std::string rest = colon == std::string::npos ? uri : uri.substr(colon + 1);
  for (std::size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == '%' && i + 2 < rest.size()) {
      out += static_cast<char>(std::stoi(rest.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else {
      out += rest[i];
    }
  }
  return out;
}

/// One byte buffer holding `bytes` (a copy).
grpc::ByteBuffer copy_buffer(std::span<const std::byte> bytes) {
  const grpc::Slice s(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&s, 1);
}

class GrpcTransport;
class Connection;

/// What a connection asks of its gRPC call. Strand only; nothing after close().
class Stream {
 public:
  virtual ~Stream() = default;
  virtual void read(grpc::ByteBuffer* into) = 0;
  virtual void write(const grpc::ByteBuffer* from) = 0;
  /// Ends the call: clean (the peer gets the end after what was written) or cancelled.
  virtual void close(bool clean) = 0;
  [[nodiscard]] virtual std::string peer() const = 0;
};

/// One client's stream, on either side. Everything runs on its strand except kick(),
/// resume_reading(), shutdown(), abort() and cut(), which post to it.
class Connection final : public AsioLink, public std::enable_shared_from_this<Connection> {
 public:
  enum class Role { server, client };

  Connection(GrpcTransport& transport, Role role);
  ~Connection() override;

  /// Binds the stream (before start()).
  void bind(Stream* stream) { m_stream = stream; }
  /// Handshake, then run. done(failure) reports the outcome (nullopt: running).
  void start(Done done);

  void kick() override;
  void resume_reading() override;
  void shutdown(std::error_code why) override;
  std::string transport() const override;
  std::string remote() const override { return m_remote; }
  void abort() override;
  void cut() override {
    asio::post(m_strand, [self = shared_from_this()] {
      if (self->m_running) self->fail(Errc::peer_lost, "connection cut (fault injection)");
    });
  }

  // Reactions, posted by the stream.
  void post_read_done(bool ok) {
    asio::post(m_strand, [self = shared_from_this(), ok] { self->on_read(ok); });
  }
  void post_write_done(bool ok) {
    asio::post(m_strand, [self = shared_from_this(), ok] { self->on_written(ok); });
  }
  void post_done(grpc::Status status) {
    asio::post(m_strand, [self = shared_from_this(), status = std::move(status)] { self->on_done(status); });
  }

 private:
  void on_read(bool ok);
  void on_written(bool ok);
  void on_done(const grpc::Status& status);
  void on_hello();
  void handshake_failed(Failure f);
  void run();
  void read_more();
  void process();
  void end_round();
  /// Writer role: fills the next batch (m_batch_slices) and its first gRPC message (m_out).
  bool next_batch();
  /// The batch's next gRPC message into m_out; false when the batch is all written.
  bool next_piece();
  /// Writer role, any thread: starts the next batch's write. False: not running (the caller
  /// hands the role to the strand).
  bool write_inline();
  void do_write();
  void on_tick();
  void fail(Errc errc, const std::string& what);
  void close_stream(bool clean);

  GrpcTransport& m_transport;
  const Role m_role;
  CommunicatorImpl& m_owner;
  asio::strand<asio::io_context::executor_type> m_strand;
  asio::steady_timer m_timer;
  Stream* m_stream = nullptr;  // null once closed
  std::string m_remote;
  Done m_handshake_done;
  std::shared_ptr<Session> m_session;
  bool m_running = false;
  bool m_failed = false;
  // Handshake: the client waits for its hello's write and the server's reply; the server
  // for its reply's write (refused: then it fails with m_refusal).
  bool m_hello_written = false;
  bool m_reply_read = false;
  std::optional<Failure> m_refusal;
  std::array<std::byte, framing::kHelloSize> m_hello_out{};

  // Reader.
  grpc::ByteBuffer m_in;
  bool m_reading = false;
  std::vector<grpc::Slice> m_slices;  // the last message read, fed up to (m_slice, m_offset)
  std::size_t m_slice = 0;
  std::size_t m_offset = 0;
  FrameReader m_reader;
  Clock::time_point m_last_rx{};

  // Writer (the role's holder).
  grpc::ByteBuffer m_out;
  std::vector<grpc::Slice> m_batch_slices;  // the batch being written, m_out its next message
  std::size_t m_batch_slice = 0;
  std::size_t m_batch_offset = 0;
  // Guards m_stream's end (close_stream()), m_writing and m_inline_open against a put() that
  // writes on its own thread (write_inline()); the strand reads m_stream without it, being
  // the only one to change it.
  std::mutex m_stream_mutex;
  bool m_writing = false;      // a write is in flight (gRPC allows one per stream)
  bool m_inline_open = false;  // running: a writer role holder may write on its thread
  LinkWriter m_writer;
  Clock::time_point m_last_tx{};
};

/// The client side of a stream.
class ClientStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>, public Stream {
 public:
  ClientStream(GrpcTransport& transport, std::shared_ptr<Connection> conn);
  void begin(grpc::GenericStub& stub) {
    stub.PrepareBidiStreamingCall(&m_ctx, kMethod, grpc::StubOptions(), this);
    // Two holds, so OnDone (which deletes us) comes only after both are released: the
    // connection's, released by close(), and the linger hold, released by close() when the
    // call is cancelled, or by the transport's stop() after a clean close (the server may
    // never end a call it no longer reads).
    AddMultipleHolds(2);
    StartCall();
  }
  void read(grpc::ByteBuffer* into) override { StartRead(into); }
  void write(const grpc::ByteBuffer* from) override { StartWrite(from); }
  void close(bool clean) override;
  /// The transport's stop(): ends a call left after a clean close.
  void end_linger() {
    m_ctx.TryCancel();
    RemoveHold();
  }
  std::string peer() const override { return m_peer; }
  void set_peer(std::string p) { m_peer = std::move(p); }

  void OnReadDone(bool ok) override { m_conn->post_read_done(ok); }
  void OnWriteDone(bool ok) override { m_conn->post_write_done(ok); }
  void OnDone(const grpc::Status& s) override;

 private:
  GrpcTransport& m_transport;
  std::shared_ptr<Connection> m_conn;
  grpc::ClientContext m_ctx;
  std::string m_peer;
};

/// The server side of a stream.
class ServerStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>, public Stream {
 public:
  ServerStream(GrpcTransport& transport, grpc::CallbackServerContext* ctx)
      : m_transport(transport), m_peer(address_of(ctx->peer())) {}
  void attach(std::shared_ptr<Connection> conn) { m_conn = std::move(conn); }
  void read(grpc::ByteBuffer* into) override { StartRead(into); }
  void write(const grpc::ByteBuffer* from) override { StartWrite(from); }
  void close(bool clean) override {
    Finish(clean ? grpc::Status::OK : grpc::Status(grpc::StatusCode::CANCELLED, "ferry: connection dropped"));
  }
  std::string peer() const override { return m_peer; }

  void OnReadDone(bool ok) override { m_conn->post_read_done(ok); }
  void OnWriteDone(bool ok) override { m_conn->post_write_done(ok); }
  /// The client went away (or the server shuts down): noticed even by a reader that is paused
  /// and asks for no message.
  void OnCancel() override { m_conn->post_read_done(false); }
  void OnDone() override;

 private:
  GrpcTransport& m_transport;
  std::shared_ptr<Connection> m_conn;
  std::string m_peer;
};

class GrpcTransport final : public AsioTransport {
 public:
  GrpcTransport(CommunicatorImpl& owner, const Endpoint& endpoint);
  ~GrpcTransport() override { stop(); }
  void stop() override;

  bool tls() const noexcept { return m_endpoint.scheme == Scheme::grpcs; }
  const Endpoint& endpoint() const noexcept { return m_endpoint; }

  /// Every reactor is counted from creation to OnDone: stop() waits for them all.
  void reactor_started() {
    const std::lock_guard lock(m_reactors_mutex);
    ++m_reactors;
  }
  void reactor_done() {
    const std::lock_guard lock(m_reactors_mutex);
    if (--m_reactors == 0) m_reactors_cv.notify_all();
  }
  /// A client call closed cleanly waits for the server's end, or for stop().
  void linger(ClientStream* s) {
    const std::lock_guard lock(m_linger_mutex);
    m_lingering.push_back(s);
  }
  /// Server: a new call (gRPC's thread).
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* accept(grpc::GenericCallbackServerContext* ctx);

 private:
  class Service final : public grpc::CallbackGenericService {
   public:
    explicit Service(GrpcTransport& t) : m_transport(t) {}
    grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* CreateReactor(
        grpc::GenericCallbackServerContext* ctx) override {
      return m_transport.accept(ctx);
    }

   private:
    GrpcTransport& m_transport;
  };

  void listen();
  void connect(Done done) override;

  const Endpoint m_endpoint;
  Service m_service{*this};
  std::unique_ptr<grpc::Server> m_server;
  std::shared_ptr<grpc::Channel> m_channel;
  std::optional<grpc::GenericStub> m_stub;
  std::mutex m_accept_mutex;  // accept() against stop(): a call either runs or is refused
  bool m_closing = false;
  std::mutex m_reactors_mutex;
  std::condition_variable m_reactors_cv;
  int m_reactors = 0;
  std::mutex m_grpc_stop_mutex;
  bool m_grpc_stopped = false;
  std::mutex m_linger_mutex;
  std::vector<ClientStream*> m_lingering;  // each keeps its linger hold: alive until end_linger()
};

// ---------------------------------------------------------------------------------------------
// Reactors

ClientStream::ClientStream(GrpcTransport& transport, std::shared_ptr<Connection> conn)
    : m_transport(transport), m_conn(std::move(conn)) {
  m_transport.reactor_started();
}

void ClientStream::close(bool clean) {
  if (clean) {
    StartWritesDone();
    m_transport.linger(this);
    RemoveHold();
    return;
  }
  m_ctx.TryCancel();
  RemoveHold();
  RemoveHold();
}

void ClientStream::OnDone(const grpc::Status& s) {
  m_conn->post_done(s);
  GrpcTransport& t = m_transport;
  delete this;  // NOLINT(cppcoreguidelines-owning-memory): gRPC's reactor life cycle
  t.reactor_done();
}

void ServerStream::OnDone() {
  // Nothing to tell the connection: OnDone comes after Finish(), which only its close makes.
  GrpcTransport& t = m_transport;
  delete this;  // NOLINT(cppcoreguidelines-owning-memory): gRPC's reactor life cycle
  t.reactor_done();
}

/// A call to a method other than Ferry's, or one that comes while the server stops.
class RefusingStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  RefusingStream(GrpcTransport& transport, grpc::Status status) : m_transport(transport) {
    m_transport.reactor_started();
    Finish(std::move(status));
  }
  void OnDone() override {
    GrpcTransport& t = m_transport;
    delete this;  // NOLINT(cppcoreguidelines-owning-memory): gRPC's reactor life cycle
    t.reactor_done();
  }

 private:
  GrpcTransport& m_transport;
};

// ---------------------------------------------------------------------------------------------
// Connection

Connection::Connection(GrpcTransport& transport, Role role)
    : m_transport(transport),
      m_role(role),
      m_owner(transport.owner()),
      m_strand(asio::make_strand(transport.io())),
      m_timer(m_strand),
      m_reader(m_owner),
      m_writer(transport.conn().merge_size) {}

Connection::~Connection() {
  // A write whose completion was dropped (the event loop stopped): nothing reads its buffers
  // any more (gRPC holds its own references to what it still sends), so what it carried may
  // fail now.
  if (m_writer.pending && m_session) m_session->write_failed(m_writer.record);
}

std::string Connection::transport() const { return m_transport.tls() ? "grpcs" : "grpc"; }

void Connection::start(Done done) {
  m_handshake_done = std::move(done);
  asio::post(m_strand, [self = shared_from_this()] {
    self->m_remote = self->m_stream ? self->m_stream->peer() : std::string("?");
    self->m_timer.expires_after(self->m_transport.conn().handshake_timeout);
    self->m_timer.async_wait([self](const error_code& e) {
      if (!e && !self->m_running && !self->m_failed) {
        self->handshake_failed({Errc::timed_out, "handshake with " + self->m_remote + " timed out"});
      }
    });
    if (self->m_failed || !self->m_stream) return;
    if (self->m_role == Role::client) {
      framing::Hello hello;
      self->m_owner.client_hello(hello, true);
      framing::encode_hello(hello, self->m_hello_out);
      self->m_out = copy_buffer(self->m_hello_out);
      self->m_writing = true;
      self->m_stream->write(&self->m_out);
    }
    self->m_reading = true;
    self->m_stream->read(&self->m_in);
  });
}

void Connection::on_hello() {
  grpc::Slice one;
  if (!m_in.DumpToSingleSlice(&one).ok()) {
    return handshake_failed({Errc::protocol_error, "handshake with " + m_remote + ": a first message of " +
                                                       std::to_string(m_in.Length()) + " bytes is not a Ferry hello"});
  }
  m_in.Clear();
  framing::Hello hello;
  std::string why;
  const Errc decoded =
      framing::decode_hello(std::span<const std::byte>(reinterpret_cast<const std::byte*>(one.begin()), one.size()), hello, why);
  std::uint64_t next_expected = 1;
  if (m_role == Role::server) {
    framing::Hello reply;
    const Errc e = answer_hello(m_owner, hello, decoded, "grpc", shared_from_this(), reply, m_session, next_expected, why);
    if (e != Errc{}) {
      m_refusal = Failure{e, "refused client " + m_remote + ": " + why};
    } else {
      start_framing(m_reader, m_writer, m_session, next_expected, reply.flags);
    }
    framing::encode_hello(reply, m_hello_out);
    m_out = copy_buffer(m_hello_out);
    m_writing = true;
    m_stream->write(&m_out);
    return;  // run() (or the refusal) once the reply is written
  }
  if (decoded != Errc{}) {
    const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(one.begin()), one.size());
    return handshake_failed({reply_error(m_owner, decoded, bytes, hello, why), "handshake with " + m_remote + ": " + why});
  }
  if (auto f = m_transport.attach_reply(hello, shared_from_this(), m_remote, m_session, next_expected)) {
    return handshake_failed(std::move(*f));
  }
  start_framing(m_reader, m_writer, m_session, next_expected, hello.flags);
  m_reply_read = true;
  if (m_hello_written) run();
}

void Connection::handshake_failed(Failure f) {
  if (m_failed) return;
  m_failed = true;
  close_stream(false);
  m_timer.cancel();
  if (m_session) m_session->link_down(this, ferry_code(f.errc));
  auto done = std::move(m_handshake_done);
  m_transport.link_ended(shared_from_this(), false);
  if (done) done(std::move(f));
}

void Connection::run() {
  m_running = true;
  {
    const std::lock_guard lock(m_stream_mutex);
    m_inline_open = m_stream != nullptr;
  }
  m_last_rx = Clock::now();
  m_last_tx = m_last_rx;
  if (auto done = std::move(m_handshake_done)) done(std::nullopt);
  on_tick();
  read_more();
  kick();  // anything queued before the connection came up (a resend after a reconnect)
}

void Connection::on_read(bool ok) {
  m_reading = false;
  if (m_failed) return;
  if (!ok) {
    // The stream ended: the client learns why from its call's status (on_done()).
    if (!m_running && m_role == Role::client) return close_stream(false);
    if (!m_running) return handshake_failed({Errc::peer_lost, "handshake with " + m_remote + ": the stream ended"});
    return fail(Errc::peer_lost, "the stream from " + m_remote + " ended");
  }
  if (!m_running) return on_hello();
  m_last_rx = Clock::now();
  m_slices.clear();
  if (!m_in.Dump(&m_slices).ok()) return fail(Errc::protocol_error, "from " + m_remote + ": unreadable message");
  m_in.Clear();
  m_slice = 0;
  m_offset = 0;
  process();
  if (m_failed) return;
  end_round();
  read_more();
}

void Connection::process() {
  while (m_slice < m_slices.size()) {
    const grpc::Slice& s = m_slices[m_slice];
    const std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(s.begin()) + m_offset, s.size() - m_offset);
    Errc e{};
    std::string why;
    m_offset += m_reader.feed(rest, e, why);
    if (e != Errc{}) return fail(e, "from " + m_remote + ": " + why);
    if (m_offset < s.size()) return;  // the receive queue is full: resume_reading() goes on
    ++m_slice;
    m_offset = 0;
  }
}

void Connection::end_round() {
  if (!m_reader.round_open()) return;
  // One gRPC message is one of the peer's writes: the next one comes when it wrote again.
  m_reader.end_round(true, m_slice == m_slices.size());
}

void Connection::read_more() {
  if (m_failed || m_reading || !m_stream || m_reader.paused() || m_slice < m_slices.size()) return;
  m_reading = true;
  m_stream->read(&m_in);
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

void Connection::kick() {
  if (m_writer.claim() && !write_inline()) asio::post(m_strand, [self = shared_from_this()] { self->do_write(); });
}

bool Connection::write_inline() {
  // The role holder writes on its own thread: a put() then costs no hop to the strand. The
  // write's completion still comes to the strand (on_written()).
  const std::lock_guard lock(m_stream_mutex);
  if (!m_inline_open) return false;
  if (!next_batch()) return true;  // nothing due: the role is given up
  m_writing = true;
  m_stream->write(&m_out);
  return true;
}

bool Connection::next_batch() {
  if (!m_writer.next(*m_session)) return false;
  // Small pieces (headers, merged small messages: the batch's staging buffer, reused for the
  // next batch) are copied; large pieces of owned payloads are handed to gRPC as slices that
  // keep the payload alive until gRPC is done with them, which may be after OnWriteDone or
  // after the call is cancelled. A borrowed payload's bytes belong to the caller, who may free
  // them once its put fails: gRPC could still be sending them then, so they are copied.
  std::vector<grpc::Slice> slices;
  const auto& bufs = m_writer.batch.buffers();
  slices.reserve(bufs.size());
  for (const auto& b : bufs) {
    std::shared_ptr<const Payload> owner;
    if (b.size() > framing::Batch::kCopyBelow) {
      for (const auto& p : m_writer.record.payloads) {
        if (p->borrowed()) continue;
        const auto bytes = p->bytes();
        if (b.data() >= bytes.data() && b.data() + b.size() <= bytes.data() + bytes.size()) {
          owner = p;
          break;
        }
      }
    }
    if (!owner) {
      slices.emplace_back(b.data(), b.size());
      continue;
    }
    auto* keep = new std::shared_ptr<const Payload>(std::move(owner));  // NOLINT(cppcoreguidelines-owning-memory): freed by the slice
    slices.emplace_back(const_cast<std::byte*>(b.data()), b.size(),  // NOLINT(cppcoreguidelines-pro-type-const-cast): gRPC only reads
                        [](void* p) { delete static_cast<std::shared_ptr<const Payload>*>(p); }, keep);
  }
  m_batch_slices = std::move(slices);
  m_batch_slice = 0;
  m_batch_offset = 0;
  next_piece();
  return true;
}

bool Connection::next_piece() {
  // Up to kMaxGrpcMessage bytes of the batch into m_out; slices are cut, not copied.
  std::vector<grpc::Slice> piece;
  std::size_t bytes = 0;
  while (m_batch_slice < m_batch_slices.size() && bytes < kMaxGrpcMessage) {
    const grpc::Slice& sl = m_batch_slices[m_batch_slice];
    const std::size_t take = std::min(sl.size() - m_batch_offset, kMaxGrpcMessage - bytes);
    piece.push_back(m_batch_offset == 0 && take == sl.size() ? sl : sl.sub(m_batch_offset, m_batch_offset + take));
    bytes += take;
    m_batch_offset += take;
    if (m_batch_offset == sl.size()) {
      ++m_batch_slice;
      m_batch_offset = 0;
    }
  }
  if (piece.empty()) return false;
  m_out = grpc::ByteBuffer(piece.data(), piece.size());
  return true;
}

void Connection::do_write() {
  if (m_failed || !m_session || !m_running || !m_stream) return m_writer.drop();  // run() kicks again
  if (!next_batch()) return;
  const std::lock_guard lock(m_stream_mutex);
  m_writing = true;
  m_stream->write(&m_out);
}

void Connection::on_written(bool ok) {
  {
    const std::lock_guard lock(m_stream_mutex);
    m_writing = false;
  }
  if (!m_running && !m_failed) {  // a hello went out
    if (!ok) {
      if (m_role == Role::client) return close_stream(false);  // on_done() says why
      return handshake_failed({Errc::peer_lost, "handshake reply to " + m_remote + ": the stream ended"});
    }
    m_out.Clear();
    if (m_role == Role::server) {
      if (m_refusal) {
        Failure f = *m_refusal;
        // Finish cleanly: the client reads our refusing hello before the end.
        close_stream(true);
        m_failed = true;
        m_timer.cancel();
        auto done = std::move(m_handshake_done);
        m_transport.link_ended(shared_from_this(), false);
        if (done) done(std::move(f));
        return;
      }
      return run();
    }
    m_hello_written = true;
    if (m_reply_read) run();
    return;
  }
  if (!m_writer.pending) return;  // a hello's completion after a failure
  m_out.Clear();
  if (!m_failed && ok && next_piece()) {  // the rest of a batch larger than one gRPC message
    const std::lock_guard lock(m_stream_mutex);
    if (m_stream) {
      m_writing = true;
      m_stream->write(&m_out);
      return;
    }
    ok = false;
  }
  m_writer.pending = false;
  m_batch_slices.clear();
  if (m_failed || !ok) {
    m_session->write_failed(m_writer.record);
    m_writer.drop();
    if (m_failed) return;
    return fail(Errc::peer_lost, "write to " + m_remote + ": the stream ended");
  }
  m_last_tx = Clock::now();
  m_session->written(m_writer.record);
  do_write();
}

void Connection::on_done(const grpc::Status& status) {
  if (m_failed) return;
  const Errc e = from_status(status, m_running);
  const std::string why = status.error_message().empty() ? std::string("the call ended") : status.error_message();
  if (!m_running) return handshake_failed({e, "gRPC call to " + m_remote + ": " + why});
  fail(e, "gRPC call to " + m_remote + " ended: " + why);
}

void Connection::on_tick() {
  if (m_failed) return;
  const auto now = Clock::now();
  const auto& c = m_transport.conn();
  if (!m_reader.paused() && now - m_last_rx >= c.keepalive_timeout) {
    return fail(Errc::peer_lost, "no frame from " + m_remote + " for " + std::to_string(c.keepalive_timeout.count()) + " ms");
  }
  if (now - m_last_tx >= c.keepalive_interval) {
    m_writer.want_keepalive();
    kick();
  }
  m_timer.expires_after(keepalive_period(c));
  m_timer.async_wait([self = shared_from_this()](const error_code& ec) {
    if (!ec) self->on_tick();
  });
}

void Connection::fail(Errc errc, const std::string& what) {
  if (m_failed) return;
  if (!m_running) return handshake_failed({errc, what});
  m_failed = true;
  m_reader.wake_pending();
  close_stream(false);
  m_timer.cancel();
  if (m_session) m_session->link_down(this, ferry_code(errc));
  m_transport.link_ended(shared_from_this(), true);
}

void Connection::shutdown(std::error_code why) {
  asio::post(m_strand, [self = shared_from_this(), why] {
    if (self->m_failed) return;
    self->m_reader.wake_pending();
    self->m_failed = true;
    // A clean end (both close frames exchanged): the peer gets the end of the stream after
    // what we wrote.
    self->close_stream(why == ferry_code(Errc::closed));
    self->m_timer.cancel();
    self->m_transport.link_ended(self, false);
  });
}

void Connection::abort() {
  asio::post(m_strand, [self = shared_from_this()] {
    self->m_failed = true;
    self->close_stream(false);
    self->m_timer.cancel();
  });
}

void Connection::close_stream(bool clean) {
  const std::lock_guard lock(m_stream_mutex);
  m_inline_open = false;
  if (!m_stream) return;
  Stream* s = std::exchange(m_stream, nullptr);
  // With a write still in flight, cancel: gRPC allows no half-close then.
  s->close(clean && !m_writing);
}

// ---------------------------------------------------------------------------------------------
// GrpcTransport

GrpcTransport::GrpcTransport(CommunicatorImpl& owner, const Endpoint& endpoint)
    : AsioTransport(owner), m_endpoint(endpoint) {
  if (owner.purpose() == Purpose::server) {
    listen();
    start_threads();
    return;
  }
  const SecurityOptions& sec = owner.options().security;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(kMaxGrpcMessage));
  args.SetMaxSendMessageSize(static_cast<int>(kMaxGrpcMessage));
  // Our own connection (gRPC shares subchannels between channels of a process otherwise), and
  // a prompt reconnection after a drop (Ferry resumes the session over it).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 10);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 10);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  // HTTP/2 pings on Ferry's keep-alive schedule: a connection that went silent is dropped by
  // gRPC too, so the next call (a resumption) opens a new one instead of queueing on it.
  const auto& c = owner.options().connection;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(c.keepalive_interval.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(c.keepalive_timeout.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (tls()) {
    if (!sec.verify_hostname) throw Error(Errc::invalid_argument, "grpcs: verify_hostname false is not supported");
    grpc::SslCredentialsOptions o;
    if (!sec.ca.empty()) o.pem_root_certs = read_file(sec.ca, "CA file");
    if (!sec.certificate.empty() || !sec.key.empty()) {
      o.pem_cert_chain = read_file(sec.certificate, "certificate chain");
      o.pem_private_key = read_file(sec.key, "private key");
    }
    if (!sec.server_name.empty()) args.SetSslTargetNameOverride(sec.server_name);
    creds = grpc::SslCredentials(o);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  m_channel = grpc::CreateCustomChannel(host_port(m_endpoint, m_endpoint.port), creds, args);
  m_stub.emplace(m_channel);
  start_threads();
  try {
    connect_first();
  } catch (...) {
    stop();
    throw;
  }
}

void GrpcTransport::listen() {
  const SecurityOptions& sec = owner().options().security;
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (tls()) {
    if (sec.certificate.empty() || sec.key.empty()) {
      throw Error(Errc::invalid_argument, "grpcs: a server needs security.certificate and security.key");
    }
    grpc::SslServerCredentialsOptions o(sec.require_client_certificate
                                            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                            : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
    if (sec.require_client_certificate) {
      if (sec.ca.empty()) throw Error(Errc::invalid_argument, "grpcs: require_client_certificate needs security.ca");
      o.pem_root_certs = read_file(sec.ca, "CA file");
    }
    o.pem_key_cert_pairs.push_back({read_file(sec.key, "private key"), read_file(sec.certificate, "certificate chain")});
    creds = grpc::SslServerCredentials(o);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(host_port(m_endpoint, m_endpoint.port), creds, &port);
  b.RegisterCallbackGenericService(&m_service);
  b.SetMaxReceiveMessageSize(static_cast<int>(kMaxGrpcMessage));
  b.SetMaxSendMessageSize(static_cast<int>(kMaxGrpcMessage));
  // Clients ping on their keep-alive schedule (see the client's channel): allow it.
  const auto& c = owner().options().connection;
  b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                       static_cast<int>(std::min<std::int64_t>(c.keepalive_interval.count(), 1000)));
  b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  m_server = b.BuildAndStart();
  if (!m_server || port == 0) {
    m_server.reset();
    throw Error(Errc::address_in_use, "listen on " + m_endpoint.to_string() + ": gRPC could not bind it (in use, or a bad host)");
  }
  Endpoint local = m_endpoint;
  local.port = static_cast<std::uint16_t>(port);
  m_local = local.to_string();
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* GrpcTransport::accept(grpc::GenericCallbackServerContext* ctx) {
  if (ctx->method() != kMethod) {
    return new RefusingStream(*this, grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "not a Ferry method: " + ctx->method()));
  }
  const std::lock_guard lock(m_accept_mutex);
  if (m_closing) return new RefusingStream(*this, grpc::Status(grpc::StatusCode::UNAVAILABLE, "the Ferry server is closing"));
  auto conn = std::make_shared<Connection>(*this, Connection::Role::server);
  auto* s = new ServerStream(*this, ctx);  // NOLINT(cppcoreguidelines-owning-memory): deleted in OnDone
  reactor_started();
  s->attach(conn);
  conn->bind(s);
  link_opened(conn);
  conn->start(nullptr);
  return s;
}

void GrpcTransport::connect(Done done) {
  // Under m_accept_mutex, as accept(): a connection either is in the link set before stop()
  // aborts the set, or is never made.
  const std::lock_guard lock(m_accept_mutex);
  if (m_closing) {
    if (done) done(Failure{Errc::closed, "the communicator is closing"});
    return;
  }
  auto conn = std::make_shared<Connection>(*this, Connection::Role::client);
  auto* s = new ClientStream(*this, conn);  // NOLINT(cppcoreguidelines-owning-memory): deleted in OnDone
  s->set_peer(host_port(m_endpoint, m_endpoint.port));
  conn->bind(s);
  s->begin(*m_stub);  // before anything can abort the connection (and close the call)
  link_opened(conn);
  conn->start(std::move(done));
}

void GrpcTransport::stop() {
  {
    const std::lock_guard lock(m_accept_mutex);
    m_closing = true;
  }
  AsioTransport::stop();  // every connection's stream is closed (abort) before it returns
  const std::lock_guard lock(m_grpc_stop_mutex);
  if (m_grpc_stopped) return;
  m_grpc_stopped = true;
  std::vector<ClientStream*> lingering;
  {
    const std::lock_guard linger_lock(m_linger_mutex);
    lingering.swap(m_lingering);
  }
  // OnDone may run in here: it takes only m_reactors_mutex, which nothing here holds.
  for (ClientStream* c : lingering) c->end_linger();
  if (m_server) m_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  {
    std::unique_lock r(m_reactors_mutex);
    m_reactors_cv.wait(r, [&] { return m_reactors == 0; });
  }
  // The reactions that came after the event loop stopped (a write's completion, say) were
  // posted to it: run them, so every write in flight is answered and its puts fail now.
  io().restart();
  for (;;) {
    try {
      io().poll();
      break;
    } catch (...) {  // NOLINT(bugprone-empty-catch): a failing handler must not stop the others
    }
  }
}

}  // namespace

std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint) {
  return std::make_unique<GrpcTransport>(owner, endpoint);
}

}  // namespace ferry::detail::grpc_link
