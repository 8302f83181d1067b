// SPDX-License-Identifier: Apache-2.0
// ferry::rpc: request/reply calls on the Communicator (same-host microservice RPC, and the
// same client code across hosts). Public API (pimpl: no transport header reaches users).
//
// A service is a Communicator server whose workers run named methods; a client is a
// Communicator client that matches each reply to its call by a correlation id, so calls from
// many threads are pipelined on one connection. Every transport carries it unchanged: shm://,
// tcp://, tls://, grpc://, mqtt:// and auto://.
//
//   ferry::rpc::Server server("shm://geometry");
//   server.handle<Point, double>("norm", [](const Point& p) { return std::hypot(p.x, p.y); });
//   server.start();
//
//   ferry::rpc::Client client("geometry");                  // a bare name is shm://geometry
//   double n = client.call<double>("norm", Point{3, 4});     // 5
//
// Failures are ferry::Error, thrown by call() and Call::get():
//   Errc::timed_out      no reply within the call's timeout (a late reply is dropped);
//   Errc::cancelled      Call::cancel();
//   Errc::peer_lost      the connection to the server dropped while the call was pending (the
//                        server may or may not have run it), or it is down now (the call was
//                        not sent); not_found or timed_out when connecting again fails;
//   Errc::closed         the client was closed;
//   Errc::message_too_large  the request exceeds the server's limit (nothing was sent);
//   Errc::would_block    the connection's send queue is full;
//   and, as ferry::rpc::RemoteError (a ferry::Error), what the server answered:
//   Errc::not_found      no such method;
//   Errc::unavailable    the server is shutting down and took no new calls;
//   Errc::remote_error   the handler threw (the message is its what());
//   any other code       the handler threw a ferry::Error with that code.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include <ferry/bytes.hpp>
#include <ferry/codec.hpp>
#include <ferry/error.hpp>
#include <ferry/options.hpp>
#include <ferry/peer_id.hpp>

namespace ferry::rpc {

/// The longest method name, in bytes.
inline constexpr std::size_t kMaxMethodName = 255;

/// A failure the server reported (as opposed to one seen by the client itself).
class RemoteError : public Error {
 public:
  using Error::Error;
};

/// What a handler knows about the call it runs.
struct CallContext {
  PeerId peer;              ///< the calling client
  std::string_view method;  ///< valid during the call
  /// When the caller gives up (time_point::max() when it set no timeout). A handler that
  /// finishes later has its reply dropped by the client.
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  [[nodiscard]] bool expired() const noexcept { return std::chrono::steady_clock::now() >= deadline; }
};

/// A method: the request's bytes in, the reply's bytes out. Throwing fails the call: a
/// ferry::Error keeps its code, any other exception becomes Errc::remote_error; either way the
/// caller's error message carries what().
using Handler = std::function<Bytes(std::span<const std::byte> request, const CallContext& context)>;

struct ServerOptions {
  /// Threads that run handlers, each taking the next call as it is free (so at most this many
  /// calls run at once). 0: one per CPU, at least 2.
  unsigned workers = 0;
};

struct ServerStats {
  std::uint64_t calls = 0;           ///< requests taken by a worker
  std::uint64_t failed = 0;          ///< ... answered with an error (handler threw, unknown method)
  std::uint64_t refused = 0;         ///< ... answered `unavailable` during shutdown
  std::uint64_t expired = 0;         ///< ... not run (sent too late) or not answered (finished late)
  std::uint64_t bad_requests = 0;    ///< messages that are not requests (dropped)
  std::uint64_t unsent = 0;          ///< replies that could not be queued (client gone, queue full)
  std::uint64_t in_flight = 0;       ///< handlers running now
  std::uint64_t sessions = 0;        ///< client sessions (connected, or kept for resumption)
};

/// A service. Configure with handle(), then start(). Thread-safe after start().
class Server {
 public:
  /// Nothing is opened yet: start() does. options.endpoint is where the service listens (a
  /// bare name means shm://name).
  explicit Server(Options options, ServerOptions server = {});
  /// Server(Options with endpoint = service).
  explicit Server(std::string_view service, ServerOptions server = {});
  Server(Server&&) noexcept;
  Server& operator=(Server&&) noexcept;
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  /// shutdown(), swallowing its errors.
  ~Server();

  /// Adds a method (before start(); throws Errc::invalid_argument after it, for an empty or
  /// too long name, or a name already taken).
  void handle(std::string method, Handler handler);
  /// A typed method: f is callable as Resp(const Req&) or Resp(const Req&, const CallContext&);
  /// the request is decoded and the reply encoded with ferry::Codec. A request that does not
  /// decode fails the call with Errc::protocol_error.
  template <Encodable Req, Encodable Resp, class F>
  void handle(std::string method, F f) {
    handle(std::move(method), Handler([f = std::move(f)](std::span<const std::byte> in, const CallContext& ctx) {
             const Req request = Codec<Req>::decode(in);
             if constexpr (std::is_invocable_v<F&, const Req&, const CallContext&>) {
               return encode_reply<Resp>(f(request, ctx));
             } else {
               return encode_reply<Resp>(f(request));
             }
           }));
  }

  /// Opens the Communicator (throws what ferry::open() throws) and starts the workers.
  void start();
  /// Graceful: new calls are answered Errc::unavailable, the running ones finish and their
  /// replies are sent (the Communicator closes after `drain` even if some still run, waiting up
  /// to its close_timeout for the replies to be acknowledged), and it returns once every
  /// handler has returned. Idempotent; any thread but a handler (Errc::invalid_argument).
  void shutdown(std::chrono::nanoseconds drain = std::chrono::seconds(10));
  /// Blocks until shutdown() has finished (called from another thread).
  void wait();

  /// The endpoint in use (a tcp port 0 resolved); after start().
  [[nodiscard]] std::string local_endpoint() const;
  [[nodiscard]] ServerStats stats() const;

 private:
  template <class Resp, class R>
  static Bytes encode_reply(R&& reply) {
    if constexpr (std::is_same_v<std::remove_cvref_t<R>, Bytes> && std::is_rvalue_reference_v<R&&>) {
      return std::move(reply);
    } else {
      return Codec<Resp>::encode(reply);
    }
  }
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

struct ClientOptions {
  /// The timeout of a call() given none.
  std::chrono::nanoseconds timeout = std::chrono::seconds(10);
};

struct ClientStats {
  std::uint64_t calls = 0;         ///< calls started
  std::uint64_t failed = 0;        ///< ... that ended in an error (timed out and cancelled included)
  std::uint64_t timed_out = 0;
  std::uint64_t cancelled = 0;
  std::uint64_t late_replies = 0;  ///< replies to calls already ended, or whose Call was dropped
  std::uint64_t bad_replies = 0;   ///< messages that are not replies (dropped)
  std::uint64_t reconnects = 0;    ///< new connections after the session with the server ended
};

class Client;

/// An asynchronous call (a future). Copyable (shared state); any thread may wait. Waiting
/// reads the connection on the waiting thread, so a reply costs no hand-off between threads.
class Call {
 public:
  Call() = default;
  /// The call has its reply or its error. Never blocks; when no thread is waiting on this
  /// connection it reads what has arrived (so polling ready() alone makes progress).
  [[nodiscard]] bool ready() const noexcept;
  /// Waits up to timeout (the call's own deadline still applies); false if still pending.
  [[nodiscard]] bool wait_for(std::chrono::nanoseconds timeout) const;
  /// Waits for the reply and returns it, or throws its error. Once: the reply moves out.
  [[nodiscard]] Bytes get();
  template <Encodable T>
  [[nodiscard]] T get_as() {
    Bytes reply = get();
    if constexpr (std::is_same_v<T, Bytes>) {
      return reply;
    } else {
      return Codec<T>::decode(reply.span());
    }
  }
  /// Ends the call with Errc::cancelled unless it has already ended; its reply, should one
  /// come, is dropped. The server is not told (its handler may still run).
  void cancel() noexcept;

  struct State;

 private:
  friend class Client;
  explicit Call(std::shared_ptr<State> state) noexcept : m_state(std::move(state)) {}
  std::shared_ptr<State> m_state;
};

/// A connection to a service. Thread-safe: any thread may call; calls from many threads share
/// the connection. When the session with the server ends (the server died or restarted and the
/// session could not resume), the next call connects again.
class Client {
 public:
  /// Connects (before it returns, within options.connection.connect_timeout; throws what
  /// ferry::open() throws). options.endpoint: a URL, or a bare name meaning shm://name.
  explicit Client(Options options, ClientOptions client = {});
  /// Client(Options with endpoint = service).
  explicit Client(std::string_view service, ClientOptions client = {});
  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  ~Client();

  /// Calls method with request and waits for the reply (see the errors at the top).
  [[nodiscard]] Bytes call(std::string_view method, std::span<const std::byte> request,
                           std::chrono::nanoseconds timeout);
  [[nodiscard]] Bytes call(std::string_view method, std::span<const std::byte> request);
  /// Starts a call and returns at once; the request is queued in order with the others.
  [[nodiscard]] Call async_call(std::string_view method, std::span<const std::byte> request,
                                std::chrono::nanoseconds timeout);
  [[nodiscard]] Call async_call(std::string_view method, std::span<const std::byte> request);

  /// Typed: the request encoded and the reply decoded with ferry::Codec (Bytes and std::string
  /// requests go as they are, without a copy of their own).
  template <Encodable Resp, Encodable Req>
  [[nodiscard]] Resp call(std::string_view method, const Req& request, std::chrono::nanoseconds timeout) {
    return decoded<Resp>(with_bytes(request, [&](std::span<const std::byte> b) { return call(method, b, timeout); }));
  }
  template <Encodable Resp, Encodable Req>
  [[nodiscard]] Resp call(std::string_view method, const Req& request) {
    return call<Resp>(method, request, default_timeout());
  }
  template <Encodable Req>
  [[nodiscard]] Call async_call(std::string_view method, const Req& request, std::chrono::nanoseconds timeout) {
    return with_bytes(request, [&](std::span<const std::byte> b) { return async_call(method, b, timeout); });
  }

  /// Fails the pending calls with Errc::closed and closes the connection. Idempotent.
  void close();
  [[nodiscard]] ClientStats stats() const;
  /// The server's id on the current connection.
  [[nodiscard]] PeerId server() const;
  [[nodiscard]] std::chrono::nanoseconds default_timeout() const noexcept;

 private:
  template <class Req, class F>
  static decltype(auto) with_bytes(const Req& request, F&& f) {
    if constexpr (std::is_same_v<Req, Bytes>) {
      return f(request.span());
    } else if constexpr (std::is_same_v<Req, std::string>) {
      return f(std::as_bytes(std::span(request.data(), request.size())));
    } else {
      const Bytes b = Codec<Req>::encode(request);
      return f(b.span());
    }
  }
  template <class Resp>
  static Resp decoded(Bytes&& reply) {
    if constexpr (std::is_same_v<Resp, Bytes>) {
      return std::move(reply);
    } else {
      return Codec<Resp>::decode(reply.span());
    }
  }
  struct Impl;
  std::shared_ptr<Impl> m_impl;
};

/// A service name or URL as an endpoint: a string without "://" is shm://<name>.
[[nodiscard]] std::string service_endpoint(std::string_view service);

}  // namespace ferry::rpc
