// SPDX-License-Identifier: Apache-2.0
// The shared-memory transport. A server listens on a Unix socket (the rendezvous); for each
// client it checks the peer's credentials, creates two byte rings in anonymous memory (memfd,
// hugepages when available) and four wake-up sockets, and hands the six descriptors over the socket
// with its hello. Frames then travel through the rings; the socket stays open only as the
// peer-death signal (its EOF). Nothing is ever named in /dev/shm, so nothing is left there
// after a crash of either side.
//
// Waiting: a side that finds its ring empty (or its peer's ring full) polls briefly, then
// announces that it sleeps in the ring's wait line and waits for its wake-up socket in the
// event loop. The other side sends on it only when the announcement is up, so a stream
// makes no system call per message, and an idle server with many clients sleeps in one
// epoll_wait (Asio's), with no thread and no spinning per client. A thread in get() about to
// sleep announces its own wake-up socket instead (the ring's wait word says which), so the peer's
// next message wakes that thread directly: one wake-up per message, not the event loop's
// and then get()'s.
//
// Writing happens on the caller's thread (put() copies into the ring directly) unless the
// ring is full or the batch carries the close frame; the strand continues then.
// Layer: src/transport/shm.
#include "transport/shm/shm_transport.hpp"

#include <boost/asio.hpp>

#include <fcntl.h>
#include <time.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <thread>
#include <vector>

#include <ferry/shm/process.hpp>
#include <ferry/shm/ring.hpp>

#include "core/frame_reader.hpp"
#include "core/link_writer.hpp"
#include "framing/frame.hpp"
#include "transport/asio_transport.hpp"

namespace ferry::detail::shm_link {
namespace {

namespace asio = boost::asio;
using local_socket = asio::local::stream_protocol::socket;
using Clock = std::chrono::steady_clock;

/// The time stamps of the keep-alive check, taken on every read and write: CLOCK_MONOTONIC_COARSE
/// costs a memory read where steady_clock costs a clock read (tens of ns in a VM, per message);
/// its few milliseconds of resolution are far below any keep-alive setting.
struct StampClock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<StampClock>;
  static time_point now() noexcept {
    timespec ts{};
    (void)::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
  }
};
using boost::system::error_code;
using Done = AsioTransport::Done;
using ferry::shm::ByteRing;
using ferry::shm::Segment;
using ShmStatus = ferry::shm::Status;

/// Descriptors handed from the server to the client with its hello, in this order.
/// Each side has two wake-up channels (see WakeChannel): the event loop's, and the one a thread
/// in get() sleeps on when it announced so in the ring (layout::kSleepingSecond). The client
/// gets the waker's end of the server's channels and the sleeper's end of its own.
enum FdIndex : std::size_t {
  kClientToServer,
  kServerToClient,
  kServerEvent,
  kClientEvent,
  kServerGetterEvent,
  kClientGetterEvent,
  kFdCount
};
/// Larger records gain nothing (the copy dominates) and would hold back the consumer.
constexpr std::size_t kMaxRecord = std::size_t{64} << 10;
/// The reader settles a round (wakes get(), acknowledges) at least every this many records.
constexpr unsigned kRecordsPerRound = 8;
/// A get() that reads the ring itself takes at most this many records, then returns.
constexpr unsigned kPollRecords = 64;

Failure translate(const error_code& ec, const std::string& context) {
  Failure f;
  f.what = context + ": " + ec.message();
  if (ec == asio::error::connection_refused || ec == boost::system::errc::no_such_file_or_directory) {
    f.errc = Errc::not_found;
  } else if (ec == asio::error::access_denied || ec == boost::system::errc::permission_denied) {
    f.errc = Errc::permission_denied;
  } else if (ec == asio::error::timed_out) {
    f.errc = Errc::timed_out;
  } else {
    f.errc = Errc::peer_lost;
  }
  return f;
}

/// An owned descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : m_fd(fd) {}
  Fd(Fd&& o) noexcept : m_fd(std::exchange(o.m_fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      m_fd = std::exchange(o.m_fd, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  [[nodiscard]] int get() const noexcept { return m_fd; }
  int release() noexcept { return std::exchange(m_fd, -1); }
  void reset() noexcept {
    if (m_fd >= 0) ::close(m_fd);
    m_fd = -1;
  }

 private:
  int m_fd = -1;
};

/// One wake-up channel: a datagram socket pair. The sleeper keeps one end and waits for it to
/// be readable; the waker sends a byte on the other (ferry::shm::wake_fd_notify()). Sockets,
/// not eventfds: both sides would share an eventfd's file status flags, so a hostile peer
/// could clear O_NONBLOCK and have our next read or write block. MSG_DONTWAIT makes each call
/// non-blocking whatever the flags, and each end is its own open file description.
struct WakeChannel {
  Fd sleeper;
  Fd waker;
};

WakeChannel make_wake_channel() {
  std::array<int, 2> sv{-1, -1};
  if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv.data()) != 0) {
    throw Error(Errc::unavailable, std::string("socketpair: ") + std::strerror(errno));
  }
  return {Fd(sv[0]), Fd(sv[1])};
}

/// True when fd is a Unix datagram socket (a descriptor from the peer is checked before use).
bool is_wake_socket(int fd) {
  int type = 0;
  int domain = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_DGRAM) return false;
  len = sizeof domain;
  return ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && domain == AF_UNIX;
}

/// Takes one wake-up from a sleeper's end. A peer sends one per sleep we announce (its
/// exchange of the ring's wait word lets one waker through), so one receive empties the end;
/// extra datagrams from a misbehaving peer only cost a spurious wake-up each.
void drain_wake(int fd) noexcept {
  std::array<std::byte, 16> sink{};
  (void)::recv(fd, sink.data(), sink.size(), MSG_DONTWAIT);
}

/// Sends bytes with descriptors attached (SCM_RIGHTS), non-blocking. False: errno set.
bool send_with_fds(int sock, std::span<const std::byte> bytes, std::span<const int> fds) {
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};  // NOLINT(cppcoreguidelines-pro-type-const-cast): sendmsg() only reads
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * kFdCount)> control{};
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  const ssize_t n = ::sendmsg(sock, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n == static_cast<ssize_t>(bytes.size())) return true;
  if (n >= 0) errno = EAGAIN;  // a hello-sized send into an empty socket buffer is never short
  return false;
}

/// Receives up to bytes.size() bytes, non-blocking; descriptors that come along are appended
/// to fds (owned). Returns recvmsg()'s result (-1: errno set; 0: EOF).
ssize_t recv_with_fds(int sock, std::span<std::byte> bytes, std::vector<Fd>& fds) {
  iovec iov{bytes.data(), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * 16)> control{};
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  const ssize_t n = ::recvmsg(sock, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd = -1;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.emplace_back(fd);
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    errno = EPROTO;  // more descriptors than a server ever sends: the ones we got are closed
    return -1;
  }
  return n;
}

std::string human_bytes(std::uint64_t n) {
  if (n >= (std::uint64_t{1} << 30) && n % (std::uint64_t{1} << 30) == 0) return std::to_string(n >> 30) + " GiB";
  if (n >= (std::uint64_t{1} << 20) && n % (std::uint64_t{1} << 20) == 0) return std::to_string(n >> 20) + " MiB";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n >> 10) + " KiB";
  return std::to_string(n) + " B";
}

std::string describe(const Segment& seg) {
  const auto& info = seg.info();
  std::string out = "ring " + human_bytes(seg.spec().capacity) + ", " + human_bytes(info.page_size) + " pages (" +
                    info.backing + (info.thp_advised ? ", THP advised" : "") + ")";
  if (!info.fallback.empty()) out += ", no hugepages: " + info.fallback;
  return out;
}

class ShmTransport;

/// One client's connection, on either side. Everything runs on its strand except kick(),
/// resume_reading() and shutdown(), and the writer role, which whoever wins it in kick()
/// holds, on any thread.
class Connection final : public AsioLink, public std::enable_shared_from_this<Connection> {
 public:
  enum class Role { server, client };

  Connection(ShmTransport& transport, Role role);
  ~Connection() override;

  local_socket& socket() noexcept { return m_socket; }
  /// After the socket is connected: handshake, then run. done(failure) reports the outcome
  /// of the handshake (nullopt: running).
  void start(Done done);

  void kick() override;
  void resume_reading() override;
  bool poll_receive(bool last, int* wake_fd, bool woken) override;
  void shutdown(std::error_code why) override;
  std::string transport() const override { return "shm"; }
  std::string remote() const override { return m_remote; }
  std::string detail() const override;
  void abort() override;
  void cut() override {
    asio::post(m_strand, [self = shared_from_this()] {
      if (self->m_running) self->fail(Errc::peer_lost, "connection cut (fault injection)");
    });
  }

 private:
  enum class WriteResult { done, blocked, failed };

  // Handshake.
  void server_start();
  void refuse(Errc e, const std::string& why);
  void on_client_hello();
  void client_read_reply();
  void on_server_reply(std::vector<Fd> fds);
  void handshake_failed(Failure f);
  void run();

  // Reading. The reader role (the consumer end and the frame reader) is held by the strand
  // or by a thread in get() (poll_receive()), one at a time.
  enum class Consumed { empty, more, paused, error };
  void arm_event();
  void on_event();
  void arm_socket();
  void on_socket_readable();
  /// Strand: reads until the ring is empty (spinning a little), then sleeps on its wake-up socket.
  void read_ring();
  /// The reader role. claim_reader() on the strand also asks a holder to hand back.
  bool claim_reader(bool strand) noexcept;
  /// Gives the role up; posts read_ring() when the strand asked for it meanwhile, unless
  /// `post` is false: a get() that is spinning gives the role up between two polls, and its
  /// last poll (which always follows) posts instead. Posting at each poll woke the strand
  /// again and again while get() read: each wake-up made the strand announce its sleep in the
  /// ring, and the peer's next write then paid a wake-up system call (3% of round trips).
  void release_reader(bool post = true);
  /// Role holder: reads up to max_records records (0: no limit). error: e and what set.
  Consumed consume(unsigned max_records, Errc& e, std::string& what);
  /// The socket reached EOF and the ring is drained.
  void peer_gone();
  /// Role holder: takes a resume_reading() that came meanwhile.
  void apply_resume() noexcept;
  /// The link goes away: get() learns of what was delivered (when no reader in get() holds
  /// the reader, which does it itself).
  void wake_pending_getters();

  // Writing.
  bool next_batch();
  WriteResult write_batch();
  bool write_inline();
  void do_write();
  void continue_write();
  /// Strand, writer role held for a batch that will not be written: answers it, drops the role.
  void write_failed_on_strand();
  /// The link goes down while the strand holds the writer role for a blocked batch.
  void drop_blocked_write();
  void finish_write();

  void on_tick();
  void fail(Errc errc, const std::string& what);
  void close_all();

  ShmTransport& m_transport;
  const Role m_role;
  CommunicatorImpl& m_owner;
  asio::strand<asio::io_context::executor_type> m_strand;
  local_socket m_socket;
  asio::steady_timer m_timer;
  std::string m_remote;
  std::string m_detail;
  Done m_handshake_done;
  std::shared_ptr<Session> m_session;
  bool m_running = false;
  bool m_failed = false;
  bool m_peer_eof = false;  // the socket reached EOF: fail once the ring is drained
  // Client: the server process (pid and start time, from the socket's credentials). When it
  // is dead the session cannot resume (a new server has no sessions): it ends at once.
  ferry::shm::layout::Identity m_peer_identity = 0;
  unsigned m_exit_checks = 0;  // EOF from a server still alive: re-checks before resuming
  std::array<std::byte, framing::kHelloSize> m_hello_out{};
  // Server: the client's hello (read_hello_bytes). Client: the server's reply, its prefix
  // first, then as long as the prefix says.
  std::vector<std::byte> m_hello_in = std::vector<std::byte>(framing::kHelloPrefixSize);
  std::size_t m_hello_got = 0;
  std::vector<Fd> m_received_fds;

  // Declared before the rings: the producer's close in its destructor may write m_peer_event.
  Fd m_peer_event;                                // the peer sleeps on it: we write it
  Fd m_peer_getter_event;                         // the peer's get() sleeps on it: we write it
  std::optional<asio::posix::stream_descriptor> m_event;  // we sleep on it
  Fd m_getter_event;  // a thread in our get() sleeps on it (poll_receive()); kept until the end
  bool m_getter_armed = false;  // the reader role's: m_getter_event was handed to a get()
  std::optional<Segment> m_tx_segment;
  std::optional<Segment> m_rx_segment;
  std::optional<ByteRing::Producer> m_tx;  // the writer role's
  std::optional<ByteRing::Consumer> m_rx;  // the strand's
  std::size_t m_max_record = kMaxRecord;

  // Reader (the reader role's holder).
  FrameReader m_reader;
  std::size_t m_record_offset = 0;  // bytes of the peeked record already fed (after a pause)
  // sync(shm.reader): exchange(true) claims the role, store(false) gives it up (seq_cst: the
  // store is followed by the load of m_strand_wants_read, as in the writer role's handshake).
  std::atomic<bool> m_reading{false};
  std::atomic<bool> m_strand_wants_read{false};  // the strand found the role taken
  std::atomic<bool> m_poisoned{false};  // a reader in get() met bad input: the strand fails
  std::atomic<bool> m_resume_pending{false};  // resume_reading() came: the next holder resumes
  // relaxed everywhere: a time stamp for the keep-alive check, set by whichever thread read.
  std::atomic<StampClock::rep> m_last_rx{0};

  // Writer (the role's holder).
  LinkWriter m_writer;
  const std::vector<std::span<const std::byte>>* m_wbufs = nullptr;
  std::size_t m_wi = 0;       // buffer being copied
  std::size_t m_woff = 0;     // offset in it
  std::size_t m_wleft = 0;    // bytes of the batch not yet in the ring
  bool m_write_blocked = false;  // strand: the ring is full, the role waits for the wake-up
  // sync(shm.open) release in run(), acquire in write_inline(): the rings are set up.
  std::atomic<bool> m_open{false};
  // relaxed everywhere: a time stamp for the keep-alive timer, set by whichever thread wrote.
  std::atomic<StampClock::rep> m_last_tx{0};
};

class ShmTransport final : public AsioTransport {
 public:
  /// path: the rendezvous socket (auto://: the one the server advertised); empty: derived
  /// from endpoint's name and the options.
  ShmTransport(CommunicatorImpl& owner, const Endpoint& endpoint, std::filesystem::path path, std::string route,
               bool retry_connect, std::optional<PeerId> expected_server);
  /// auto:// client: the id of the server it probed; the shm server must be that one.
  const std::optional<PeerId>& expected_server() const noexcept { return m_expected_server; }
  const Endpoint& endpoint() const noexcept { return m_endpoint; }
  const std::filesystem::path& path() const noexcept { return m_path; }
  ~ShmTransport() override { stop(); }

  const ShmOptions& shm() const noexcept { return owner().options().shm; }
  std::chrono::microseconds spin() const noexcept { return m_spin; }
  bool reads_on_caller() const override { return true; }
  std::chrono::microseconds poll_spin() const override { return shm().spin; }
  /// Server: whether a client with these credentials may connect; why set when not.
  bool allowed(const ucred& cred, std::string& why) const;

 private:
  void listen();
  void accept();
  void connect(Done done) override;
  void stop_accepting() override;

  const Endpoint m_endpoint;
  std::filesystem::path m_path;
  std::optional<asio::local::stream_protocol::acceptor> m_acceptor;
  std::uint64_t m_socket_inode = 0;  // to unlink only our own socket
  std::chrono::microseconds m_spin{0};
  std::optional<PeerId> m_expected_server;
};

// ---------------------------------------------------------------------------------------------
// Connection: handshake

std::string Connection::detail() const { return m_transport.route() + m_detail; }

Connection::Connection(ShmTransport& transport, Role role)
    : m_transport(transport),
      m_role(role),
      m_owner(transport.owner()),
      m_strand(asio::make_strand(transport.io())),
      m_socket(m_strand),
      m_timer(m_strand),
      m_reader(m_owner),
      m_writer(transport.conn().merge_size) {}

Connection::~Connection() {
  // A write whose completion was dropped (the event loop stopped): nothing reads its buffers
  // any more, so what it carried may fail now.
  if (m_writer.pending && m_session) m_session->write_failed(m_writer.record);
}

void Connection::start(Done done) {
  m_handshake_done = std::move(done);
  m_timer.expires_after(m_transport.conn().handshake_timeout);
  m_timer.async_wait([self = shared_from_this()](const error_code& e) {
    if (!e && !self->m_running && !self->m_failed) {
      self->handshake_failed({Errc::timed_out, "handshake with " + self->m_remote + " timed out"});
    }
  });
  if (m_role == Role::server) return server_start();
  m_remote = m_transport.endpoint().to_string();
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(m_socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return handshake_failed({Errc::system, std::string("SO_PEERCRED: ") + std::strerror(errno)});
  }
  // The memory comes from the server: only our own user (or root) may hand it to us.
  if (cred.uid != ::geteuid() && cred.uid != 0) {
    return handshake_failed({Errc::permission_denied, "the server at " + m_remote + " runs as uid " +
                                                          std::to_string(cred.uid) + ", neither this user nor root"});
  }
  if (cred.pid > 0) {
    const auto pid = static_cast<std::uint64_t>(cred.pid);
    m_peer_identity = ferry::shm::layout::make_identity(pid, ferry::shm::process_start_time(pid));
  }
  framing::Hello hello;
  m_owner.client_hello(hello, false);
  framing::encode_hello(hello, m_hello_out);
  asio::async_write(m_socket, asio::buffer(m_hello_out), [self = shared_from_this()](const error_code& ec, std::size_t) {
    if (self->m_failed) return;
    if (ec) return self->handshake_failed(translate(ec, "handshake with " + self->m_remote));
    self->client_read_reply();
  });
}

void Connection::server_start() {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(m_socket.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return handshake_failed({Errc::system, std::string("SO_PEERCRED: ") + std::strerror(errno)});
  }
  m_remote = "pid " + std::to_string(cred.pid) + " uid " + std::to_string(cred.uid);
  std::string why;
  if (!m_transport.allowed(cred, why)) return refuse(Errc::permission_denied, why);
  auto self = shared_from_this();
  read_hello_bytes(
      m_hello_in, [self](auto buffer, auto handler) { asio::async_read(self->m_socket, buffer, std::move(handler)); },
      [self](const error_code& ec, Errc e, const std::string& bad) {
        if (self->m_failed) return;
        if (ec) return self->handshake_failed(translate(ec, "handshake with " + self->m_remote));
        if (e != Errc{}) return self->handshake_failed({e, "handshake with " + self->m_remote + ": " + bad});
        self->on_client_hello();
      });
}

void Connection::refuse(Errc e, const std::string& why) {
  framing::Hello reply;
  reply.id = m_owner.options().id;
  reply.max_chunk = m_owner.max_chunk();
  reply.max_message = m_owner.options().connection.message_size;
  reply.status = static_cast<std::uint32_t>(e);
  framing::encode_hello(reply, m_hello_out);
  asio::async_write(m_socket, asio::buffer(m_hello_out), [self = shared_from_this(), e, why](const error_code&, std::size_t) {
    self->handshake_failed({e, "refused client " + self->m_remote + ": " + why});
  });
}

void Connection::on_client_hello() {
  framing::Hello hello;
  std::string why;
  const Errc decoded = framing::decode_hello(m_hello_in, hello, why);
  if (decoded != Errc{}) {
    if (decoded == Errc::version_mismatch) return refuse(decoded, why);
    return handshake_failed({decoded, "handshake with " + m_remote + ": " + why});
  }
  // The rings and wake-up channels first: a failure refuses the client before a session exists.
  const ShmOptions& opt = m_transport.shm();
  WakeChannel server_loop;
  WakeChannel server_getter;
  WakeChannel client_loop;
  WakeChannel client_getter;
  try {
    ferry::shm::SegmentOptions so;
    so.huge_pages = opt.huge_pages ? ferry::shm::HugePages::prefer : ferry::shm::HugePages::off;
    m_rx_segment.emplace(Segment::create_anonymous(ByteRing::spec(opt.ring_size), so));
    m_tx_segment.emplace(Segment::create_anonymous(ByteRing::spec(opt.ring_size), so));
    server_loop = make_wake_channel();
    server_getter = make_wake_channel();
    client_loop = make_wake_channel();
    client_getter = make_wake_channel();
    m_rx.emplace(*m_rx_segment);
    m_tx.emplace(*m_tx_segment, ferry::shm::ProducerOptions{{}, std::numeric_limits<std::uint32_t>::max()});
  } catch (const Error& e) {
    return refuse(Errc::unavailable, std::string("cannot set up shared memory: ") + e.what());
  }
  m_detail = describe(*m_tx_segment);
  const std::array<int, kFdCount> fds{m_rx_segment->fd(),         m_tx_segment->fd(),
                                      server_loop.waker.get(),    client_loop.sleeper.get(),
                                      server_getter.waker.get(),  client_getter.sleeper.get()};
  m_event.emplace(m_strand, server_loop.sleeper.release());
  m_getter_event = std::move(server_getter.sleeper);
  m_peer_event = std::move(client_loop.waker);
  m_peer_getter_event = std::move(client_getter.waker);

  framing::Hello reply;
  std::uint64_t next_expected = 1;
  const Errc e = m_owner.accept_client(hello, shared_from_this(), reply, m_session, next_expected, why);
  if (e != Errc{}) {
    m_session.reset();
    return refuse(e, why);
  }
  framing::encode_hello(reply, m_hello_out);
  m_reader.start(m_session, next_expected);
  if (!send_with_fds(m_socket.native_handle(), m_hello_out, fds)) {
    return fail(Errc::peer_lost, "handshake reply to " + m_remote + ": " + std::strerror(errno));
  }
  // The client's copies are in flight in the socket: it holds the memory from now on.
  run();
}

void Connection::client_read_reply() {
  m_socket.async_wait(local_socket::wait_read, [self = shared_from_this()](const error_code& ec) {
    if (self->m_failed) return;
    if (ec) return self->handshake_failed(translate(ec, "handshake with " + self->m_remote));
    const std::span<std::byte> rest(self->m_hello_in.data() + self->m_hello_got, self->m_hello_in.size() - self->m_hello_got);
    const ssize_t n = recv_with_fds(self->m_socket.native_handle(), rest, self->m_received_fds);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return self->client_read_reply();
    if (n <= 0) {
      return self->handshake_failed({Errc::peer_lost, "handshake with " + self->m_remote + ": " +
                                                          (n == 0 ? std::string("the server closed the socket") : std::strerror(errno))});
    }
    self->m_hello_got += static_cast<std::size_t>(n);
    if (self->m_hello_got == framing::kHelloPrefixSize) {  // now its size (another version's too)
      std::size_t size = 0;
      std::string why;
      const Errc e = framing::hello_size(
          std::span<const std::byte, framing::kHelloPrefixSize>(self->m_hello_in.data(), framing::kHelloPrefixSize), size, why);
      if (e != Errc{}) return self->handshake_failed({e, "handshake with " + self->m_remote + ": " + why});
      self->m_hello_in.resize(size);
    }
    if (self->m_hello_got < self->m_hello_in.size()) return self->client_read_reply();
    self->on_server_reply(std::move(self->m_received_fds));
  });
}

void Connection::on_server_reply(std::vector<Fd> fds) {
  framing::Hello hello;
  std::string why;
  const Errc decoded = framing::decode_hello(m_hello_in, hello, why);
  if (decoded != Errc{}) return handshake_failed({decoded, "handshake with " + m_remote + ": " + why});
  if (hello.status != 0) {
    return handshake_failed({static_cast<Errc>(hello.status),
                             "server " + m_remote + " refused the connection: " + m_transport.refusal(hello)});
  }
  // Everything from the server is checked before use: six descriptors, two ring segments of
  // a sane size, four wake-up sockets.
  const auto bad = [&](const std::string& what) {
    handshake_failed({Errc::protocol_error, "handshake with " + m_remote + ": " + what});
  };
  if (fds.size() != kFdCount) return bad("expected " + std::to_string(kFdCount) + " descriptors, got " + std::to_string(fds.size()));
  for (const std::size_t i : {std::size_t{kServerEvent}, std::size_t{kClientEvent}, std::size_t{kServerGetterEvent},
                              std::size_t{kClientGetterEvent}}) {
    if (!is_wake_socket(fds[i].get())) return bad("the wake-up descriptors are not Unix datagram sockets");
  }
  // Only a sealed memfd cannot be shrunk under us (a SIGBUS on the next access).
  for (const std::size_t i : {std::size_t{kClientToServer}, std::size_t{kServerToClient}}) {
    if (::fcntl(fds[i].get(), F_GET_SEALS) < 0) return bad("a ring descriptor is not a memfd");
  }
  if (m_transport.expected_server() && hello.id != *m_transport.expected_server()) {
    return bad("the shared-memory server (id " + hello.id.to_string() + ") is not the server probed over TCP (id " +
               m_transport.expected_server()->to_string() + ")");
  }
  try {
    m_tx_segment.emplace(Segment::open_fd(fds[kClientToServer].get(), ByteRing::spec(0)));
    m_rx_segment.emplace(Segment::open_fd(fds[kServerToClient].get(), ByteRing::spec(0)));
    for (const Segment* s : {&*m_tx_segment, &*m_rx_segment}) {
      if (s->spec().capacity < 4096 || s->spec().capacity > (std::uint64_t{1} << 30)) {
        return bad("ring of " + std::to_string(s->spec().capacity) + " bytes");
      }
    }
    m_tx.emplace(*m_tx_segment, ferry::shm::ProducerOptions{{}, std::numeric_limits<std::uint32_t>::max()});
    m_rx.emplace(*m_rx_segment);
  } catch (const Error& e) {
    return bad(std::string("cannot use the rings: ") + e.what());
  }
  m_detail = describe(*m_tx_segment);
  m_peer_event = std::move(fds[kServerEvent]);
  m_peer_getter_event = std::move(fds[kServerGetterEvent]);
  m_event.emplace(m_strand, fds[kClientEvent].release());
  m_getter_event = std::move(fds[kClientGetterEvent]);
  std::uint64_t next_expected = 1;
  if (auto f = m_transport.attach_reply(hello, shared_from_this(), m_remote, m_session, next_expected)) {
    return handshake_failed(std::move(*f));
  }
  m_reader.start(m_session, next_expected);
  run();
}

void Connection::handshake_failed(Failure f) {
  if (m_failed) return;
  m_failed = true;
  close_all();
  if (m_session) m_session->link_down(this, ferry_code(f.errc));
  auto done = std::move(m_handshake_done);
  m_transport.link_ended(shared_from_this(), false);
  if (done) done(std::move(f));
}

void Connection::run() {
  m_running = true;
  const auto now = StampClock::now().time_since_epoch().count();
  // relaxed: see m_last_rx.
  m_last_rx.store(now, std::memory_order_relaxed);
  // relaxed: see m_last_tx.
  m_last_tx.store(now, std::memory_order_relaxed);
  m_tx->set_peer_wake_fd(m_peer_event.get(), m_peer_getter_event.get());
  m_rx->set_peer_wake_fd(m_peer_event.get(), m_peer_getter_event.get());
  m_max_record = std::min<std::size_t>(kMaxRecord, m_tx->capacity() / 8);
  // sync(shm.open) release: the rings above are set up; pairs with the acquire in write_inline().
  m_open.store(true, std::memory_order_release);
  if (auto done = std::move(m_handshake_done)) done(std::nullopt);
  on_tick();
  arm_event();
  arm_socket();
  read_ring();
  kick();  // anything queued before the connection came up (a resend after a reconnect)
}

// ---------------------------------------------------------------------------------------------
// Connection: reading

void Connection::arm_event() {
  m_event->async_wait(asio::posix::stream_descriptor::wait_read, [self = shared_from_this()](const error_code& ec) {
    if (ec || self->m_failed) return;
    self->on_event();
  });
}

void Connection::on_event() {
  drain_wake(m_event->native_handle());
  if (m_write_blocked) continue_write();
  if (m_failed) return;
  read_ring();
  if (!m_failed) arm_event();
}

void Connection::arm_socket() {
  m_socket.async_wait(local_socket::wait_read, [self = shared_from_this()](const error_code& ec) {
    if (ec || self->m_failed) return;
    self->on_socket_readable();
  });
}

void Connection::on_socket_readable() {
  std::byte b{};
  const ssize_t n = ::recv(m_socket.native_handle(), &b, 1, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return arm_socket();
  if (n > 0) return fail(Errc::protocol_error, "from " + m_remote + ": unexpected bytes on the rendezvous socket");
  // EOF or an error: the peer is gone. What it committed to the ring is still ours to read.
  m_peer_eof = true;
  read_ring();
}

bool Connection::claim_reader(bool strand) noexcept {
  // sync(shm.reader) seq_cst store: the holder's release() must see it, or our exchange below
  // sees the role free (store-then-load on both sides).
  if (strand) m_strand_wants_read.store(true, std::memory_order_seq_cst);
  // sync(shm.reader) seq_cst exchange: claims the role; the previous holder's writes to the
  // reader's state happen before (its seq_cst store of false).
  if (m_reading.exchange(true, std::memory_order_seq_cst)) return false;
  // relaxed: we hold the role now; a stale true only costs one extra read_ring().
  if (strand) m_strand_wants_read.store(false, std::memory_order_relaxed);
  return true;
}

void Connection::release_reader(bool post) {
  // sync(shm.reader) seq_cst store: partner of the exchange in claim_reader().
  m_reading.store(false, std::memory_order_seq_cst);
  if (!post) return;  // m_strand_wants_read stays set for the caller's last poll
  // sync(shm.reader) seq_cst exchange: pairs with the store in claim_reader(strand): the
  // strand wanted to read while we held the role; it reads now.
  if (m_strand_wants_read.exchange(false, std::memory_order_seq_cst)) {
    asio::post(m_strand, [self = shared_from_this()] { self->read_ring(); });
  }
}

Connection::Consumed Connection::consume(unsigned max_records, Errc& e, std::string& what) {
  unsigned records = 0;
  bool got = false;
  Consumed result = Consumed::empty;
  for (;;) {
    if (max_records != 0 && records >= max_records) {
      result = Consumed::more;
      break;
    }
    std::span<const std::byte> record;
    const ShmStatus st = m_rx->try_peek(record);
    if (st == ShmStatus::would_block) break;
    if (st != ShmStatus::ok) {
      m_reader.end_round(true, true);
      e = st == ShmStatus::closed ? Errc::peer_lost : Errc::protocol_error;
      what = st == ShmStatus::closed ? m_remote + " closed its ring"
                                     : "from " + m_remote + ": corrupt ring (" + ferry::shm::to_string(st) + ")";
      return Consumed::error;
    }
    got = true;
    std::string why;
    m_record_offset += m_reader.feed(record.subspan(m_record_offset), e, why);
    if (e != Errc{}) {
      what = "from " + m_remote + ": " + why;
      return Consumed::error;
    }
    if (m_reader.close_pending()) {  // a reader in get() left the peer's close to the strand
      if (m_record_offset == record.size()) {
        m_rx->release();
        m_record_offset = 0;
      }
      result = Consumed::more;
      break;
    }
    if (m_record_offset < record.size()) {  // the receive queue is full: resume_reading() goes on
      m_rx->flush();
      m_reader.end_round(false, false);
      result = Consumed::paused;
      break;
    }
    m_rx->release();
    m_record_offset = 0;
    if (++records % kRecordsPerRound == 0) m_reader.end_round(false, true);
  }
  // relaxed: see m_last_rx.
  if (got) m_last_rx.store(StampClock::now().time_since_epoch().count(), std::memory_order_relaxed);
  // A bounded read (get()'s) settles its round as an idle one, acknowledging what it took:
  // the rest waits for the next get(), and the peer must not wait for that ack meanwhile.
  if (result != Consumed::paused) m_reader.end_round(result == Consumed::empty || max_records != 0, true);
  return result;
}

void Connection::read_ring() {
  if (!m_running || m_failed) return;
  if (!claim_reader(true)) return;  // a thread in get() reads; it hands back when done
  apply_resume();
  const auto spin = m_transport.spin();
  for (;;) {
    if (m_reader.close_pending()) m_reader.apply_close();
    if (m_reader.paused()) {
      // A dead peer never frees the ring we write to: waiting for our receive queue to drain
      // would leave our puts to it pending for good. What it sent and we did not take was never
      // acknowledged to it.
      if (!m_peer_eof) break;
      release_reader();
      return fail(Errc::peer_lost, m_remote + " closed the rendezvous socket (exited or was killed)");
    }
    // relaxed: set by a reader in get() before it released the role (ordered by it).
    if (m_poisoned.load(std::memory_order_relaxed)) break;
    m_rx->end_sleep();
    Errc e{};
    std::string what;
    Consumed c = Consumed::error;
    try {
      c = consume(0, e, what);
    } catch (const std::exception& x) {  // out of memory in the receive queue
      e = Errc::internal;
      what = std::string("reading from ") + m_remote + ": " + x.what();
    }
    if (c == Consumed::error) {
      release_reader();
      return fail(e, what);
    }
    if (c == Consumed::paused || m_failed) break;
    if (m_peer_eof) {
      release_reader();
      return peer_gone();
    }
    if (spin.count() > 0 && !m_owner.getters_waiting()) {
      // Poll a little: a message that follows closely then costs neither side a wake-up. Not
      // when get() waits: it should run now, and it reads the ring itself when it does.
      const auto until = Clock::now() + spin;
      bool more = false;
      for (unsigned i = 0; !more; ++i) {
        std::span<const std::byte> record;
        more = m_rx->try_peek(record) != ShmStatus::would_block;
        if (!more && (i & 63) == 63 && Clock::now() >= until) break;
        if (!more) ferry::shm::cpu_relax();
      }
      if (more) continue;
    }
    if (!m_rx->announce_sleep()) continue;
    break;  // on_event() resumes
  }
  release_reader();
}

bool Connection::poll_receive(bool last, int* wake_fd, bool woken) {
  if (wake_fd != nullptr) *wake_fd = -1;
  // sync(shm.open) acquire: pairs with the release in run(); the rings are set up.
  // relaxed: m_poisoned, see read_ring().
  if (!m_open.load(std::memory_order_acquire) || m_poisoned.load(std::memory_order_relaxed)) return false;
  if (!claim_reader(false)) return false;
  if (m_getter_armed && last && wake_fd == nullptr) {  // a get() hands its wake-up back
    m_getter_armed = false;
    // Withdrawn before the peer took it: no wake-up was sent for it, and no system call is
    // made. One that was sent (the peer took the announcement; one for an earlier one arriving
    // late; one a peer sends unasked) is read here when it is, or once it woke a sleep.
    if (!m_rx->withdraw_second_sleep() || woken) drain_wake(m_getter_event.get());
  }
  apply_resume();
  const std::uint64_t before = m_reader.delivered();
  if (!m_reader.paused() && !m_reader.close_pending()) {
    m_rx->end_sleep();
    Errc e{};
    std::string what;
    // The peer's close ends the session, which runs on_disconnect: never on the caller's thread.
    m_reader.set_defer_close(true);
    Consumed c = Consumed::error;
    try {
      c = consume(kPollRecords, e, what);
    } catch (...) {  // out of memory in the receive queue: give the role back, then report
      m_reader.set_defer_close(false);
      // relaxed: read by release_reader() below, on this thread.
      m_strand_wants_read.store(true, std::memory_order_relaxed);
      release_reader();
      throw;
    }
    m_reader.set_defer_close(false);
    // relaxed: read by release_reader() below, on this thread.
    if (m_reader.close_pending()) m_strand_wants_read.store(true, std::memory_order_relaxed);
    switch (c) {
      case Consumed::error:
        // relaxed: published by release_reader()'s seq_cst store.
        m_poisoned.store(true, std::memory_order_relaxed);
        asio::post(m_strand, [self = shared_from_this(), e, what] { self->fail(e, what); });
        break;
      case Consumed::more:
        // Not ours to drain: get() returns what it has, the strand reads on.
        // relaxed: read by release_reader() below, on this thread.
        if (last) m_strand_wants_read.store(true, std::memory_order_relaxed);
        break;
      case Consumed::empty:
        // Polled again at once unless last: no wake-up needed until then. A get() about to
        // sleep is woken by the peer itself (one wake-up, not the event loop's and then
        // get()'s); it polls again when awake, which announces the event loop's sleep.
        if (last && wake_fd != nullptr && m_getter_event.get() >= 0) {
          if (m_rx->announce_sleep(true)) {
            *wake_fd = m_getter_event.get();
            m_getter_armed = true;
          } else {
            // relaxed: as above.
            m_strand_wants_read.store(true, std::memory_order_relaxed);
          }
        } else if (last) {
          // A get() leaving (with a message, or for a caller that polls): the strand sleeps,
          // but the caller is likely back within microseconds, so the peer waits a moment for
          // its next poll rather than wake the strand (layout::kSleepingSoon).
          if (!m_rx->announce_sleep(false, true)) {
            // relaxed: as above.
            m_strand_wants_read.store(true, std::memory_order_relaxed);
          }
        }
        break;
      case Consumed::paused:
        break;  // resume_reading() posts read_ring()
    }
  }
  const bool got = m_reader.delivered() != before;
  release_reader(last);
  return got;
}

void Connection::peer_gone() {
  // A killed server's descriptors close a moment before the kernel shows it dead: look again
  // for up to 50 ms before treating the drop as resumable.
  if (m_role == Role::client && m_peer_identity != 0 && m_exit_checks < 10 && ferry::shm::is_alive(m_peer_identity)) {
    ++m_exit_checks;
    auto t = std::make_shared<asio::steady_timer>(m_strand, std::chrono::milliseconds(5));
    t->async_wait([self = shared_from_this(), t](const error_code&) { self->read_ring(); });
    return;
  }
  fail(Errc::peer_lost, m_remote + " closed the rendezvous socket (exited or was killed)");
}

void Connection::resume_reading() {
  // sync(shm.resume) release: pairs with the acquire exchange in apply_resume().
  m_resume_pending.store(true, std::memory_order_release);
  asio::post(m_strand, [self = shared_from_this()] { self->read_ring(); });
}

void Connection::apply_resume() noexcept {
  // sync(shm.resume) acquire: pairs with the release store in resume_reading().
  if (m_resume_pending.exchange(false, std::memory_order_acquire) && m_reader.paused()) m_reader.resume();
}

void Connection::wake_pending_getters() {
  // A reader in get() holds the reader: it wakes them itself at the end of its round.
  if (!claim_reader(false)) return;
  m_reader.wake_pending();
  release_reader();
}

// ---------------------------------------------------------------------------------------------
// Connection: writing

void Connection::kick() {
  if (m_writer.claim()) {
    if (!write_inline()) asio::post(m_strand, [self = shared_from_this()] { self->do_write(); });
  }
}

bool Connection::next_batch() {
  if (!m_writer.next(*m_session)) return false;
  m_wbufs = &m_writer.batch.buffers();
  m_wi = 0;
  m_woff = 0;
  m_wleft = m_writer.batch.bytes();
  return true;
}

Connection::WriteResult Connection::write_batch() {
  const auto& bufs = *m_wbufs;
  while (m_wleft > 0) {
    const std::size_t want = std::min(m_wleft, m_max_record);
    std::span<std::byte> out;
    const ShmStatus st = m_tx->try_reserve(want, out);
    if (st == ShmStatus::would_block) {
      if (m_tx->announce_sleep(want)) return WriteResult::blocked;
      continue;  // space came meanwhile
    }
    if (st != ShmStatus::ok) return WriteResult::failed;  // the peer closed its end, or corrupt
    std::size_t done = 0;
    while (done < want) {
      const auto& b = bufs[m_wi];
      const std::size_t take = std::min(b.size() - m_woff, want - done);
      std::memcpy(out.data() + done, b.data() + m_woff, take);
      done += take;
      m_woff += take;
      if (m_woff == b.size()) {
        ++m_wi;
        m_woff = 0;
      }
    }
    m_tx->commit(want);
    m_wleft -= want;
  }
  m_tx->flush();
  return WriteResult::done;
}

void Connection::finish_write() {
  m_writer.pending = false;
  // relaxed: see m_last_tx.
  m_last_tx.store(StampClock::now().time_since_epoch().count(), std::memory_order_relaxed);
  m_session->written(m_writer.record);
}

bool Connection::write_inline() {
  // sync(shm.open) acquire: pairs with the release in run(); m_session and the rings are set.
  if (!m_open.load(std::memory_order_acquire)) return false;
  if (!next_batch()) return true;
  // The close frame goes from the strand: its written() may end the session, and the end's
  // callbacks (on_disconnect) run on Ferry's threads, never on the caller's.
  if (m_writer.record.close) {
    asio::post(m_strand, [self = shared_from_this()] {
      if (self->m_failed) return self->write_failed_on_strand();
      self->m_write_blocked = true;
      self->continue_write();
    });
    return true;
  }
  switch (write_batch()) {
    case WriteResult::done: {
      const bool more = m_writer.record.more;
      finish_write();
      // One batch per caller: more that is due is written on the strand (which takes the role
      // as it is), so a put() never writes other threads' messages for long.
      if (more || m_writer.release()) asio::post(m_strand, [self = shared_from_this()] { self->do_write(); });
      return true;
    }
    case WriteResult::blocked:
      asio::post(m_strand, [self = shared_from_this()] {
        self->m_write_blocked = true;
        self->continue_write();
      });
      return true;
    case WriteResult::failed:
      asio::post(m_strand, [self = shared_from_this()] { self->write_failed_on_strand(); });
      return true;
  }
  return true;
}

void Connection::write_failed_on_strand() {
  m_write_blocked = true;
  drop_blocked_write();
  if (!m_failed) fail(Errc::peer_lost, m_remote + " closed its ring");
}

void Connection::drop_blocked_write() {
  if (!m_write_blocked) return;
  m_write_blocked = false;
  m_writer.pending = false;
  m_session->write_failed(m_writer.record);
  m_writer.drop();
}

void Connection::continue_write() {
  if (!m_write_blocked) return;
  if (m_failed) return write_failed_on_strand();
  m_tx->end_sleep();
  switch (write_batch()) {
    case WriteResult::blocked:
      return;  // announced again: on_event() calls back
    case WriteResult::failed:
      return write_failed_on_strand();
    case WriteResult::done:
      break;
  }
  m_write_blocked = false;
  finish_write();
  do_write();
}

void Connection::do_write() {
  if (m_failed || !m_session || !m_running) return m_writer.drop();  // run() kicks again
  for (;;) {
    if (!next_batch()) return;
    switch (write_batch()) {
      case WriteResult::blocked:
        m_write_blocked = true;
        return;
      case WriteResult::failed:
        return write_failed_on_strand();
      case WriteResult::done:
        break;
    }
    finish_write();
  }
}

// ---------------------------------------------------------------------------------------------
// Connection: life cycle

void Connection::on_tick() {
  if (m_failed) return;
  const auto now = StampClock::now();
  const auto& c = m_transport.conn();
  // relaxed: see m_last_rx.
  const StampClock::time_point last_rx{StampClock::duration(m_last_rx.load(std::memory_order_relaxed))};
  bool reading = true;  // a paused reader, or one in get() right now, is not a silent peer
  if (now - last_rx >= c.keepalive_timeout && claim_reader(false)) {
    reading = m_reader.paused();
    release_reader();
  }
  if (!reading) {
    return fail(Errc::peer_lost, "no frame from " + m_remote + " for " + std::to_string(c.keepalive_timeout.count()) + " ms");
  }
  // relaxed: see m_last_tx.
  if (now - StampClock::time_point(StampClock::duration(m_last_tx.load(std::memory_order_relaxed))) >= c.keepalive_interval) {
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
  // sync(shm.open) release: polls that start after it read nothing.
  m_open.store(false, std::memory_order_release);
  // relaxed: as m_open, a reason for polls to read nothing more.
  m_poisoned.store(true, std::memory_order_relaxed);
  // A reader in get() holds the reader for at most kPollRecords records: wait for it, so no
  // delivery from this connection reaches the session after link_down() (a resumed session
  // would see it twice). The strand never holds the reader here.
  while (!claim_reader(false)) std::this_thread::yield();
  m_reader.wake_pending();
  release_reader();
  drop_blocked_write();
  close_all();
  const bool peer_dead = m_role == Role::client && m_peer_eof && m_peer_identity != 0 &&
                         !ferry::shm::is_alive(m_peer_identity);
  if (m_session) m_session->link_down(this, ferry_code(errc), !peer_dead);
  m_transport.link_ended(shared_from_this(), true);
}

void Connection::shutdown(std::error_code /*why: a clean close or not, nothing to drain either way*/) {
  asio::post(m_strand, [self = shared_from_this()] {
    if (self->m_failed) return;
    self->wake_pending_getters();
    // Everything written is in the ring, which the peer keeps mapped: nothing to drain.
    self->m_failed = true;
    self->drop_blocked_write();
    self->close_all();
    self->m_transport.link_ended(self, false);
  });
}

void Connection::abort() {
  asio::post(m_strand, [self = shared_from_this()] {
    self->m_failed = true;
    self->drop_blocked_write();
    self->close_all();
  });
}

void Connection::close_all() {
  // The rings and the peer's wake-up socket stay until the destructor: a writer on another thread
  // may still be copying into the ring and waking the peer.
  // sync(shm.open) release: writers that see it hand over to the strand, which drops the role.
  m_open.store(false, std::memory_order_release);
  error_code ec;
  m_timer.cancel();
  m_socket.close(ec);
  if (m_event) m_event->close(ec);
}

// ---------------------------------------------------------------------------------------------
// ShmTransport

ShmTransport::ShmTransport(CommunicatorImpl& owner, const Endpoint& endpoint, std::filesystem::path path, std::string route,
                           bool retry_connect, std::optional<PeerId> expected_server)
    : AsioTransport(owner), m_endpoint(endpoint), m_path(std::move(path)), m_expected_server(expected_server) {
  set_route(std::move(route));
  m_retry_connect = retry_connect;
  cpu_set_t cpus;
  CPU_ZERO(&cpus);
  const bool several_cpus = ::sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) >= 2;
  m_spin = several_cpus ? shm().spin : std::chrono::microseconds::zero();
  if (m_path.empty()) m_path = rendezvous_path(shm(), m_endpoint.path, owner.purpose() == Purpose::server);
  m_local = m_endpoint.to_string();
  if (owner.purpose() == Purpose::server) {
    listen();
    start_threads();
    asio::post(m_acceptor->get_executor(), [this] { accept(); });
    return;
  }
  start_threads();
  try {
    connect_first();
  } catch (...) {
    stop();
    throw;
  }
}

bool ShmTransport::allowed(const ucred& cred, std::string& why) const {
  if (cred.uid == ::geteuid()) return true;
  const auto& o = shm();
  if (std::find(o.allow_uids.begin(), o.allow_uids.end(), cred.uid) != o.allow_uids.end()) return true;
  if (std::find(o.allow_gids.begin(), o.allow_gids.end(), cred.gid) != o.allow_gids.end()) return true;
  why = "uid " + std::to_string(cred.uid) + " (gid " + std::to_string(cred.gid) +
        ") is not this server's user and not in shm.allow_uids / allow_gids";
  return false;
}

void ShmTransport::listen() {
  const std::string where = "listen on " + m_endpoint.to_string() + " (" + m_path.string() + ")";
  const asio::local::stream_protocol::endpoint ep(m_path.string());
  m_acceptor.emplace(asio::make_strand(io()));
  error_code ec;
  m_acceptor->open(ep.protocol(), ec);
  if (!ec) m_acceptor->bind(ep, ec);
  if (ec == asio::error::address_in_use) {
    // A socket file is there. A live server answers on it; a dead one's file refuses.
    local_socket probe(io());
    error_code pe;
    probe.connect(ep, pe);
    if (!pe) throw Error(Errc::address_in_use, where + ": a server is already listening there");
    if (pe != asio::error::connection_refused) throw Error(Errc::address_in_use, where + ": " + pe.message());
    ::unlink(m_path.c_str());  // left by a server that died
    ec.clear();
    m_acceptor->bind(ep, ec);
  }
  if (ec) {
    const Failure f = translate(ec, where);
    throw Error(f.errc == Errc::peer_lost ? Errc::system : f.errc, f.what);
  }
  // Other users reach the socket only when they are allowed in (the check is allowed()).
  const bool others = !shm().allow_uids.empty() || !shm().allow_gids.empty();
  if (::chmod(m_path.c_str(), others ? 0666 : 0600) != 0) {
    const int err = errno;
    ::unlink(m_path.c_str());
    throw Error(Errc::system, where + ": chmod: " + std::strerror(err));
  }
  struct stat st {};
  if (::stat(m_path.c_str(), &st) == 0) m_socket_inode = st.st_ino;
  m_acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    ::unlink(m_path.c_str());
    throw Error(Errc::system, where + ": " + ec.message());
  }
}

void ShmTransport::accept() {
  if (stopping()) return;
  auto conn = std::make_shared<Connection>(*this, Connection::Role::server);
  m_acceptor->async_accept(conn->socket(), [this, conn](const error_code& ec) {
    if (stopping() || ec == asio::error::operation_aborted) return;
    if (!ec) {
      link_opened(conn);
      asio::post(conn->socket().get_executor(), [conn] { conn->start(nullptr); });
    } else {
      // Out of descriptors or similar: keep accepting (a pause avoids a busy loop).
      auto t = std::make_shared<asio::steady_timer>(io(), std::chrono::milliseconds(50));
      t->async_wait([this, t](const error_code&) { accept(); });
      return;
    }
    accept();
  });
}

void ShmTransport::stop_accepting() {
  if (!m_acceptor) return;
  asio::post(m_acceptor->get_executor(), [this] {
    error_code ec;
    m_acceptor->close(ec);
  });
  // Remove our socket file (not one a newer server put in its place).
  struct stat st {};
  if (::stat(m_path.c_str(), &st) == 0 && st.st_ino == m_socket_inode) ::unlink(m_path.c_str());
}

void ShmTransport::connect(Done done) {
  auto link = std::make_shared<Connection>(*this, Connection::Role::client);
  link_opened(link);
  auto timer = std::make_shared<asio::steady_timer>(link->socket().get_executor(), conn().connect_timeout);
  timer->async_wait([link](const error_code& ec) {
    if (!ec) {
      error_code ignored;
      link->socket().close(ignored);  // the connect completes with operation_aborted
    }
  });
  const asio::local::stream_protocol::endpoint ep(m_path.string());
  link->socket().async_connect(ep, [this, link, timer, done = std::move(done)](const error_code& ec) mutable {
    timer->cancel();
    if (ec) {
      link_ended(link, false);
      const std::string where = "connect to " + m_endpoint.to_string() + " (" + m_path.string() + ")";
      Failure f = ec == asio::error::operation_aborted ? Failure{Errc::timed_out, where + ": timed out"} : translate(ec, where);
      if (f.errc == Errc::not_found) f.what = where + ": no server is listening";
      return done(f);
    }
    link->start(std::move(done));
  });
}

}  // namespace

namespace {
/// The rendezvous directory, and whether it is a default one (checked for its owner).
std::filesystem::path rendezvous_dir(const ShmOptions& options, bool& default_dir) {
  default_dir = false;
  if (!options.directory.empty()) return options.directory;
  if (const char* env = std::getenv("FERRY_SHM_DIR"); env != nullptr && *env != '\0') return env;
  default_dir = true;
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
    return std::filesystem::path(xdg) / "ferry";
  }
  return "/tmp/ferry-" + std::to_string(::geteuid());
}
}  // namespace

std::filesystem::path rendezvous_path(const ShmOptions& options, std::string_view name, bool create) {
  namespace fs = std::filesystem;
  bool default_dir = false;
  const fs::path dir = rendezvous_dir(options, default_dir);
  if (create && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw Error(Errc::permission_denied, "shm: cannot create the rendezvous directory " + dir.string() + ": " + std::strerror(errno));
  }
  if (default_dir) {
    // Nobody else may own, replace or write into the default directory: its sockets carry the
    // owner's trust (a client connects to whatever is listening there).
    struct stat st {};
    if (::lstat(dir.c_str(), &st) == 0 &&
        (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 022) != 0)) {
      throw Error(Errc::permission_denied, "shm: the rendezvous directory " + dir.string() +
                                               " is not a directory owned by this user and closed to others");
    }
  }
  fs::path path = dir / (std::string(name) + ".sock");
  if (path.string().size() >= sizeof(sockaddr_un{}.sun_path)) {
    throw Error(Errc::invalid_argument, "shm: the rendezvous path " + path.string() + " is longer than a Unix socket allows (" +
                                            std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes)");
  }
  return path;
}

std::unique_ptr<AsioTransport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint, std::filesystem::path path,
                                              std::string route, bool retry_connect, std::optional<PeerId> expected_server) {
  return std::make_unique<ShmTransport>(owner, endpoint, std::move(path), std::move(route), retry_connect, expected_server);
}

std::filesystem::path listening_path(const Transport& transport) {
  return static_cast<const ShmTransport&>(transport).path();
}

}  // namespace ferry::detail::shm_link

namespace ferry {

std::filesystem::path shm_directory(const ShmOptions& options) {
  bool default_dir = false;
  return detail::shm_link::rendezvous_dir(options, default_dir);
}

}  // namespace ferry
