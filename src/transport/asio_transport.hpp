// SPDX-License-Identifier: Apache-2.0
// What the Asio-based transports (tcp/tls, shm) share: the event loop and its threads, the
// set of open connections, the client's first connection and its reconnections, timers, and
// stop(). Layer: src/transport.
#pragma once

#include <boost/asio.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/communicator_impl.hpp"
#include "core/link.hpp"

namespace ferry::detail {

/// This process's locality (no shm path). Fields that cannot be read are zero.
framing::Locality local_locality();

/// The period of a connection's keep-alive timer: a keep-alive frame goes out within one
/// interval of silence, and a silent peer is noticed within a quarter of its timeout.
inline std::chrono::milliseconds keepalive_period(const ConnectionOptions& c) {
  return std::max(std::chrono::milliseconds(1), std::min(c.keepalive_interval, c.keepalive_timeout / 4));
}

/// A ferry code as the std::error_code a Link and a Session pass around.
inline std::error_code ferry_code(Errc e) { return make_error_code(e); }

/// Why a connection attempt or a live connection failed, as a ferry code with its context.
struct Failure {
  Errc errc = Errc::peer_lost;
  std::string what;
};

class AsioTransport;

/// Server, for a transport that answers no auto:// probes (grpc, mqtt): takes a client's hello
/// (decoded: decode_hello's result, why its reason) and fills the reply. Errc{}: the client is
/// accepted (session and next_expected set); otherwise the refusal, sent in reply.status.
Errc answer_hello(CommunicatorImpl& owner, const framing::Hello& hello, Errc decoded, const char* scheme,
                  const std::shared_ptr<Link>& link, framing::Hello& reply, std::shared_ptr<Session>& session,
                  std::uint64_t& next_expected, std::string& why);

/// Client: how to take a server's reply `bytes` that did not decode (decode_hello's `decoded`,
/// the hello it filled in, `why`). With checksums the wire is taken to lose and alter bytes: a
/// reply that is no hello (ours or the server's lost on the way, its first frames read in
/// place of its hello), or one of version 1 (no checksum vouches for it), is such damage:
/// peer_lost, and the client connects again (until connect_timeout, or the session's resume
/// timeout). A reply whose checksum matched, and any reply without checksums: as decoded.
Errc reply_error(const CommunicatorImpl& owner, Errc decoded, std::span<const std::byte> bytes, const framing::Hello& reply,
                 std::string& why);

/// Reads a peer's hello from a byte stream into `buf`: its first framing::kHelloPrefixSize
/// bytes, then the rest of the size framing::hello_size() reads from them (so a peer of
/// another version is read whole and answered, not left waiting). `read(buffer, handler)`
/// reads the whole buffer and calls handler(error_code, size_t); then `done(ec, e, why)`: an
/// I/O error, or hello_size()'s refusal (e, why), or neither (buf holds the whole hello).
/// `buf` must outlive the reads (a member of the connection that `read` keeps alive).
template <class Read, class Done>
void read_hello_bytes(std::vector<std::byte>& buf, Read read, Done done) {
  buf.assign(framing::kHelloPrefixSize, std::byte{0});
  read(boost::asio::buffer(buf), [&buf, read, done](const boost::system::error_code& ec, std::size_t) mutable {
    if (ec) return done(ec, Errc{}, std::string());
    std::size_t size = 0;
    std::string why;
    const Errc e = framing::hello_size(std::span<const std::byte, framing::kHelloPrefixSize>(buf.data(), framing::kHelloPrefixSize),
                                       size, why);
    if (e != Errc{}) return done(ec, e, why);
    buf.resize(size);
    read(boost::asio::buffer(buf.data() + framing::kHelloPrefixSize, size - framing::kHelloPrefixSize),
         [done](const boost::system::error_code& ec2, std::size_t) mutable { done(ec2, Errc{}, std::string()); });
  });
}

/// A link that the transport's stop() can abort.
class AsioLink : public Link {
 public:
  /// Immediate close from stop(): no callbacks into core beyond answering a write in flight.
  virtual void abort() = 0;
  /// Fault injection (Transport::cut_links()): fail as a broken connection does.
  virtual void cut() = 0;
};

class AsioTransport : public Transport {
 public:
  using Clock = std::chrono::steady_clock;
  using Done = std::function<void(std::optional<Failure>)>;

  explicit AsioTransport(CommunicatorImpl& owner);
  ~AsioTransport() override;

  std::string local_endpoint() const override { return m_local; }
  void schedule(std::chrono::milliseconds delay, std::function<void()> fn) override;
  void stop() override;
  void cut_links() override;

  CommunicatorImpl& owner() noexcept { return m_owner; }
  const CommunicatorImpl& owner() const noexcept { return m_owner; }
  boost::asio::io_context& io() noexcept { return m_io; }
  const ConnectionOptions& conn() const noexcept { return m_owner.options().connection; }
  bool stopping() const noexcept {
    // relaxed: a hint that only shortens work after stop(); stop() joins the threads.
    return m_stopping.load(std::memory_order_relaxed);
  }
  /// An open connection, for stop().
  void link_opened(const std::shared_ptr<AsioLink>& link);
  /// A connection closed; was_running: it carried a session (a drop may call for a reconnect).
  void link_ended(const std::shared_ptr<AsioLink>& link, bool was_running);
  /// The reason a server gave in its refusing hello, for the client's error.
  std::string refusal(const framing::Hello& reply) const;
  /// Client: the server's reply hello on `link` (to `remote`): a refusal, or our session
  /// attached (nullopt; session and next_expected set).
  std::optional<Failure> attach_reply(const framing::Hello& reply, const std::shared_ptr<Link>& link, const std::string& remote,
                                      std::shared_ptr<Session>& session, std::uint64_t& next_expected);

  /// auto:// server: the shm rendezvous socket that probes are told about ("" until set).
  void advertise_shm(std::string path);
  /// What a probe's reply says about this server: where it runs and its shm socket.
  framing::Locality locality() const;
  /// auto://: why this transport carries the session (prefixed to each link's detail()).
  void set_route(std::string route) { m_route = std::move(route); }
  const std::string& route() const noexcept { return m_route; }

 protected:
  /// Starts the I/O threads (after the derived class listens or resolves).
  void start_threads();
  /// Client: connects and handshakes, retrying what may pass (refused, reset, timed out)
  /// until connect_timeout. Throws ferry::Error.
  void connect_first();
  /// One client connection attempt; done reports the outcome of its handshake.
  virtual void connect(Done done) = 0;
  /// stop(): stop accepting (close the acceptor on its executor).
  virtual void stop_accepting() {}

  std::string m_local;
  /// connect_first(): retry what may pass until connect_timeout (false: one attempt, for
  /// auto:// trying shared memory before it settles on TCP).
  bool m_retry_connect = true;

 private:
  std::string m_route;
  mutable std::mutex m_advertise_mutex;
  std::string m_advertised_shm;
  void reconnect_later(std::chrono::milliseconds delay);
  /// One I/O thread. A handler that throws (std::bad_alloc, a throwing user callback) must not
  /// end the process: the loop goes on; the failing handler's connection times out on its own.
  void run_loop(bool poll_only = false) noexcept;

  CommunicatorImpl& m_owner;
  boost::asio::io_context m_io;
  std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> m_work;
  std::vector<std::thread> m_threads;
  std::mutex m_links_mutex;
  std::set<std::shared_ptr<AsioLink>> m_links;  // every open connection, for stop()
  std::atomic<bool> m_stopping{false};
  std::mutex m_stop_mutex;
  bool m_stopped = false;
};

}  // namespace ferry::detail
