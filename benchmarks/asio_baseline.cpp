// SPDX-License-Identifier: Apache-2.0
// ferry-asio-baseline: the plain Boost.Asio TCP/TLS sender and receiver that Ferry's TCP transport
// is measured against, run as two processes; no Ferry code in it. Layer: benchmarks/.
//
// Wire format: each message is [u32 little-endian length][payload]. A TCP client ends its stream
// with shutdown(send); an asio ssl::stream cannot half-close (its shutdown() waits for the peer's
// close_notify and drops data that arrives first), so a TLS client ends with the length
// kEndMarker instead. At the end the server answers with the u64 little-endian message count.
//
// Everything is blocking: one connection, one thread, the cheapest calls Asio has. A watchdog
// thread ends the process when nothing has moved for --timeout seconds, which bounds every
// blocking call without a timer on the hot path.
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = asio::ip::tcp;
using boost::system::error_code;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using TlsStream = ssl::stream<tcp::socket>;

constexpr std::uint32_t kEndMarker = 0xFFFF'FFFF;
constexpr std::size_t kMaxMessage = std::size_t{1} << 30;
// Small messages are read in chunks of this size and used in place.
constexpr std::size_t kChunkSize = 64 * 1024;
// Payloads from this size on are read straight into a message buffer (no copy through the chunk).
constexpr std::size_t kDirectReadMin = 16 * 1024;
// Bytes per read_some/write_some in a composed read or write. asio's transfer_all stops each call
// at 64 KiB; a blocking socket moves any amount in one system call, so don't cut it up.
constexpr std::size_t kMaxTransfer = std::size_t{1} << 30;

struct Options {
  bool server = false;
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  bool tls = false;
  std::string cert_dir;
  bool pingpong = false;
  bool json_out = false;
  std::string size_text;
  std::size_t size = 0;
  double seconds = 2.0;
  std::size_t batch = 1;
  std::size_t count = 10000;
  std::size_t warmup = 1000;
  int timeout_s = 30;
};

std::size_t parse_size(const std::string& text) {
  std::size_t pos = 0;
  unsigned long long value = 0;
  try {
    value = std::stoull(text, &pos);
  } catch (const std::exception&) {
    throw std::invalid_argument("--size '" + text + "' is not a number of bytes");
  }
  std::string unit = text.substr(pos);
  for (auto& c : unit)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (unit.empty() || unit == "B")
    return value;
  if (unit == "K" || unit == "KB" || unit == "KIB")
    return value << 10;
  if (unit == "M" || unit == "MB" || unit == "MIB")
    return value << 20;
  throw std::invalid_argument("unknown unit in --size '" + text + "' (use B, K or M)");
}

void store_le32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i)
    p[i] = static_cast<std::byte>(v >> (8 * i));
}
void store_le64(std::byte* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i)
    p[i] = static_cast<std::byte>(v >> (8 * i));
}
std::uint32_t load_le32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i)
    v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  return v;
}
std::uint64_t load_le64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i)
    v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

[[noreturn]] void fail(const std::string& what, const error_code& ec) {
  throw std::runtime_error(what + ": " + ec.message());
}
void check(const error_code& ec, const std::string& what) {
  if (ec)
    fail(what, ec);
}

// Ends the process with a message on stderr when nobody has called kick() for `timeout`.
// Thread: phase() and kick() from the one working thread; the watchdog runs its own thread.
class Watchdog {
public:
  Watchdog(const char* role, std::chrono::seconds timeout)
      : m_role(role), m_timeout(timeout), m_thread([this] { run(); }) {}
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog() {
    {
      const std::lock_guard lock(m_mutex);
      m_stop = true;
    }
    m_cv.notify_one();
    m_thread.join();
  }

  void phase(const char* what) noexcept {
    // relaxed: the string is a literal, only read for the error message.
    m_phase.store(what, std::memory_order_relaxed);
    kick();
  }
  void kick() noexcept {
    // relaxed: a flag polled every 100 ms; nothing is published through it.
    m_kicked.store(true, std::memory_order_relaxed);
  }

private:
  void run() {
    auto last_progress = Clock::now();
    std::unique_lock lock(m_mutex);
    while (!m_cv.wait_for(lock, std::chrono::milliseconds(100), [this] { return m_stop; })) {
      const auto now = Clock::now();
      // relaxed: see kick().
      if (m_kicked.exchange(false, std::memory_order_relaxed)) {
        last_progress = now;
      } else if (now - last_progress >= m_timeout) {
        // relaxed: see phase().
        std::fprintf(
            stderr, "ferry-asio-baseline %s: error: nothing happened for %lld s while %s\n", m_role,
            static_cast<long long>(m_timeout.count()), m_phase.load(std::memory_order_relaxed));
        std::_Exit(3);
      }
    }
  }

  alignas(64) std::atomic<bool> m_kicked{true};
  std::atomic<const char*> m_phase{"starting"};
  const char* m_role;
  std::chrono::seconds m_timeout;
  std::mutex m_mutex;
  std::condition_variable m_cv;
  bool m_stop = false;
  std::thread m_thread; // last: starts once the members above exist
};

// Completion condition for asio::read/asio::write: go on until `min_bytes` have moved (SIZE_MAX:
// until the buffers are full or empty), with no per-call cap, and tell the watchdog of each call.
struct Progress {
  Watchdog* watchdog;
  std::size_t min_bytes = SIZE_MAX;
  std::size_t operator()(const error_code& ec, std::size_t done) const {
    watchdog->kick();
    return ec || done >= min_bytes ? 0 : kMaxTransfer;
  }
};

template <typename Stream, typename Buffers>
void write_all(Stream& stream, const Buffers& buffers, Watchdog& watchdog, const char* what) {
  error_code ec;
  asio::write(stream, buffers, Progress{&watchdog}, ec);
  if (ec)
    fail(what, ec);
}

// Reads length-prefixed messages. Small ones come from 64 KiB chunk reads and are used in place;
// large ones are read straight into a reused message buffer with one scatter read that also takes
// the next 4-byte header, so a stream of large messages costs no read per header and no copy.
template <typename Stream> class MessageReader {
public:
  MessageReader(Stream& stream, Watchdog& watchdog)
      : m_stream(stream), m_watchdog(watchdog), m_chunk(kChunkSize) {}

  /// The next payload, valid until the next call; nullopt at the end of the stream (EOF or the
  /// end marker). Throws on an error, an oversized length, or a stream ending inside a message.
  std::optional<std::span<const std::byte>> next() {
    if (!fill(4)) {
      if (buffered() == 0)
        return std::nullopt;
      throw std::runtime_error("the stream ended inside a message header");
    }
    const std::uint32_t length = load_le32(m_chunk.data() + m_begin);
    m_begin += 4;
    if (length == kEndMarker)
      return std::nullopt;
    if (length > kMaxMessage)
      throw std::runtime_error("message length " + std::to_string(length) +
                               " is over the 1 GiB limit");
    if (length >= kDirectReadMin && buffered() < length)
      return read_direct(length);
    if (!fill(length))
      throw std::runtime_error("the stream ended inside a message");
    const std::span<const std::byte> payload(m_chunk.data() + m_begin, length);
    m_begin += length;
    return payload;
  }

  /// Reads exactly out.size() bytes (what is buffered first). Throws on EOF or an error.
  void read_exact(std::span<std::byte> out, const char* what) {
    const std::size_t have = std::min(buffered(), out.size());
    std::memcpy(out.data(), m_chunk.data() + m_begin, have);
    m_begin += have;
    error_code ec;
    asio::read(m_stream, asio::buffer(out.data() + have, out.size() - have), Progress{&m_watchdog},
               ec);
    if (ec)
      fail(what, ec);
  }

  /// When the first read returned data, if it has.
  std::optional<Clock::time_point> first_byte_time() const { return m_first_byte; }

private:
  std::size_t buffered() const { return m_end - m_begin; }

  // Reads until `want` (<= kChunkSize) bytes are buffered; false at EOF before that.
  bool fill(std::size_t want) {
    while (buffered() < want) {
      if (m_begin != 0) { // keep the partial message at the front, read into the rest
        std::memmove(m_chunk.data(), m_chunk.data() + m_begin, buffered());
        m_end -= m_begin;
        m_begin = 0;
      }
      error_code ec;
      const std::size_t n =
          m_stream.read_some(asio::buffer(m_chunk.data() + m_end, m_chunk.size() - m_end), ec);
      if (ec == asio::error::eof)
        return false;
      if (ec)
        fail("read", ec);
      if (!m_first_byte)
        m_first_byte = Clock::now();
      m_watchdog.kick();
      m_end += n;
    }
    return true;
  }

  std::span<const std::byte> read_direct(std::size_t length) {
    if (m_message.size() < length)
      m_message.resize(length);
    const std::size_t have = buffered();
    std::memcpy(m_message.data(), m_chunk.data() + m_begin, have);
    m_begin = m_end = 0;
    const std::size_t rest = length - have;
    const std::array<asio::mutable_buffer, 2> buffers{asio::buffer(m_message.data() + have, rest),
                                                      asio::buffer(m_chunk.data(), 4)};
    error_code ec;
    const std::size_t n = asio::read(m_stream, buffers, Progress{&m_watchdog, rest}, ec);
    if (n < rest) {
      if (ec == asio::error::eof)
        throw std::runtime_error("the stream ended inside a message");
      fail("read", ec);
    }
    m_end = n - rest; // 0 to 4 bytes of the next header
    return {m_message.data(), length};
  }

  Stream& m_stream;
  Watchdog& m_watchdog;
  std::vector<std::byte> m_chunk;
  std::size_t m_begin = 0; // unread bytes are m_chunk[m_begin, m_end)
  std::size_t m_end = 0;
  std::vector<std::byte> m_message;
  std::optional<Clock::time_point> m_first_byte;
};

// End of the client's messages: a TCP half-close, or the end marker under TLS.
void finish_writes(tcp::socket& socket, Watchdog&) {
  error_code ec;
  socket.shutdown(tcp::socket::shutdown_send, ec);
  if (ec)
    fail("shutdown", ec);
}
void finish_writes(TlsStream& stream, Watchdog& watchdog) {
  std::array<std::byte, 4> marker{};
  store_le32(marker.data(), kEndMarker);
  write_all(stream, asio::buffer(marker), watchdog, "write end marker");
}

// Closing: nothing more than the socket's destructor for TCP; a close_notify exchange for TLS.
void close_stream(tcp::socket&, Watchdog&) {}
void close_stream(TlsStream& stream, Watchdog& watchdog) {
  watchdog.phase("closing TLS");
  error_code ec;
  stream.shutdown(ec);
  if (ec && ec != asio::error::eof)
    fail("TLS shutdown", ec);
}

const char* transport_name(const Options& o) {
  return o.tls ? "tls" : "tcp";
}
const char* mode_name(const Options& o) {
  return o.pingpong ? "pingpong" : "stream";
}

// The negotiated protocol and cipher, which decide TLS throughput as much as the code does.
json with_tls_details(json r, TlsStream& stream) {
  r["tls_version"] = ::SSL_get_version(stream.native_handle());
  r["tls_cipher"] = ::SSL_CIPHER_get_name(::SSL_get_current_cipher(stream.native_handle()));
  return r;
}

json result_header(const Options& o, const char* role) {
  return json{
      {"impl", "asio"}, {"role", role}, {"mode", mode_name(o)}, {"transport", transport_name(o)}};
}

// ---------------------------------------------------------------------------------------------
// Server: receive (and echo in pingpong mode) until the end, reply with the count, report.

template <typename Stream> json serve(Stream& stream, const Options& o, Watchdog& watchdog) {
  MessageReader<Stream> reader(stream, watchdog);
  watchdog.phase("receiving messages");
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
  std::size_t size = 0;
  std::array<std::byte, 4> header{};
  while (const auto payload = reader.next()) {
    ++messages;
    bytes += payload->size();
    size = payload->size();
    if (o.pingpong) {
      store_le32(header.data(), static_cast<std::uint32_t>(payload->size()));
      const std::array<asio::const_buffer, 2> reply{asio::buffer(header),
                                                    asio::buffer(payload->data(), payload->size())};
      write_all(stream, reply, watchdog, "echo");
    }
  }
  const auto end = Clock::now();
  const auto first = reader.first_byte_time();
  const double seconds = first ? std::chrono::duration<double>(end - *first).count() : 0.0;

  watchdog.phase("sending the message count");
  std::array<std::byte, 8> count{};
  store_le64(count.data(), messages);
  write_all(stream, asio::buffer(count), watchdog, "write message count");
  close_stream(stream, watchdog);

  json r = result_header(o, "server");
  r["size"] = size;
  r["messages"] = messages;
  r["bytes"] = bytes;
  r["seconds"] = seconds;
  const double per_s = seconds > 0 ? 1.0 / seconds : 0.0;
  r["msgs_per_s"] = static_cast<double>(messages) * per_s;
  r["bytes_per_s"] = static_cast<double>(bytes) * per_s;
  r["gbit_per_s"] = static_cast<double>(bytes) * 8e-9 * per_s;
  return r;
}

ssl::context server_tls_context(const std::string& dir) {
  ssl::context ctx(ssl::context::tls_server);
  ::SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
  error_code ec;
  ctx.use_certificate_chain_file(dir + "/server.pem", ec);
  check(ec, "server certificate " + dir + "/server.pem");
  ctx.use_private_key_file(dir + "/server.key", ssl::context::pem, ec);
  check(ec, "server key " + dir + "/server.key");
  return ctx;
}

json run_server(const Options& o) {
  Watchdog watchdog("server", std::chrono::seconds(o.timeout_s));
  std::optional<ssl::context> tls_ctx;
  if (o.tls)
    tls_ctx.emplace(server_tls_context(o.cert_dir));

  asio::io_context io;
  tcp::resolver resolver(io);
  error_code ec;
  watchdog.phase("resolving the listen address");
  const auto endpoints = resolver.resolve(
      o.host, std::to_string(o.port), tcp::resolver::passive | tcp::resolver::numeric_service, ec);
  check(ec, "resolve " + o.host);
  const tcp::endpoint endpoint = endpoints.begin()->endpoint();
  tcp::acceptor acceptor(io);
  acceptor.open(endpoint.protocol(), ec);
  check(ec, "open a listening socket");
  acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  check(ec, "set SO_REUSEADDR");
  acceptor.bind(endpoint, ec);
  check(ec, "bind " + o.host + ":" + std::to_string(o.port));
  acceptor.listen(asio::socket_base::max_listen_connections, ec);
  check(ec, "listen");
  std::cout << "listening " << acceptor.local_endpoint().port() << std::endl;

  watchdog.phase("waiting for a connection");
  tcp::socket socket(io);
  acceptor.accept(socket, ec);
  check(ec, "accept");
  acceptor.close(); // one connection per run
  socket.set_option(tcp::no_delay(true), ec);
  check(ec, "set TCP_NODELAY");

  if (!o.tls)
    return serve(socket, o, watchdog);
  TlsStream stream(std::move(socket), *tls_ctx);
  watchdog.phase("in the TLS handshake");
  stream.handshake(ssl::stream_base::server, ec);
  check(ec, "TLS handshake");
  return with_tls_details(serve(stream, o, watchdog), stream);
}

// ---------------------------------------------------------------------------------------------
// Client: stream for --seconds (or ping-pong --count times), end, read the server's count.

template <typename Stream>
std::uint64_t read_count(MessageReader<Stream>& reader, Watchdog& watchdog) {
  watchdog.phase("waiting for the server's message count");
  std::array<std::byte, 8> count{};
  reader.read_exact(count, "read message count");
  return load_le64(count.data());
}

template <typename Stream>
json stream_messages(Stream& stream, const Options& o, Watchdog& watchdog) {
  std::vector<std::byte> payload(o.size);
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<std::byte>(i * 31 + 7);
  std::array<std::byte, 4> header{};
  store_le32(header.data(), static_cast<std::uint32_t>(o.size));
  // --batch messages per write: the same header and payload buffers, gathered by one write.
  std::vector<asio::const_buffer> batch;
  for (std::size_t i = 0; i < o.batch; ++i) {
    batch.push_back(asio::buffer(header));
    batch.push_back(asio::buffer(payload));
  }

  watchdog.phase("sending messages");
  std::uint64_t sent = 0;
  const auto start = Clock::now();
  const auto deadline =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  auto now = start;
  while (now < deadline) {
    write_all(stream, batch, watchdog, "write");
    sent += o.batch;
    now = Clock::now();
  }
  const double seconds = std::chrono::duration<double>(now - start).count();
  finish_writes(stream, watchdog);

  MessageReader<Stream> reader(stream, watchdog);
  const std::uint64_t acked = read_count(reader, watchdog);
  close_stream(stream, watchdog);
  if (acked != sent)
    throw std::runtime_error("the server counted " + std::to_string(acked) + " messages, " +
                             std::to_string(sent) + " were sent");

  json r = result_header(o, "client");
  r["size"] = o.size;
  r["batch"] = o.batch;
  r["messages"] = sent;
  r["seconds"] = seconds;
  r["msgs_per_s"] = static_cast<double>(sent) / seconds;
  r["gbit_per_s"] = static_cast<double>(sent) * static_cast<double>(o.size) * 8e-9 / seconds;
  return r;
}

template <typename Stream> json ping_pong(Stream& stream, const Options& o, Watchdog& watchdog) {
  std::vector<std::byte> payload(o.size);
  for (std::size_t i = 0; i < payload.size(); ++i)
    payload[i] = static_cast<std::byte>(i * 31 + 7);
  std::array<std::byte, 4> header{};
  store_le32(header.data(), static_cast<std::uint32_t>(o.size));
  const std::array<asio::const_buffer, 2> message{asio::buffer(header), asio::buffer(payload)};
  MessageReader<Stream> reader(stream, watchdog);
  std::vector<std::int64_t> round_trips_ns(o.count);

  watchdog.phase("in round trips");
  for (std::size_t i = 0; i < o.warmup + o.count; ++i) {
    const auto start = Clock::now();
    write_all(stream, message, watchdog, "write");
    const auto reply = reader.next();
    const auto end = Clock::now();
    if (!reply)
      throw std::runtime_error("the server ended the stream during round trips");
    if (reply->size() != o.size)
      throw std::runtime_error("echo of " + std::to_string(reply->size()) + " bytes, expected " +
                               std::to_string(o.size));
    if (i >= o.warmup)
      round_trips_ns[i - o.warmup] =
          std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
  }
  finish_writes(stream, watchdog);
  const std::uint64_t acked = read_count(reader, watchdog);
  close_stream(stream, watchdog);
  if (acked != o.warmup + o.count)
    throw std::runtime_error("the server counted " + std::to_string(acked) + " messages, " +
                             std::to_string(o.warmup + o.count) + " were sent");

  std::sort(round_trips_ns.begin(), round_trips_ns.end());
  const auto percentile = [&](double q) {
    const auto rank =
        static_cast<std::size_t>(q * static_cast<double>(round_trips_ns.size()) + 0.999999);
    return round_trips_ns[std::clamp<std::size_t>(rank, 1, round_trips_ns.size()) - 1];
  };
  double sum = 0;
  for (const auto ns : round_trips_ns)
    sum += static_cast<double>(ns);

  json r = result_header(o, "client");
  r["size"] = o.size;
  r["count"] = o.count;
  r["warmup"] = o.warmup;
  r["p50_ns"] = percentile(0.50);
  r["p99_ns"] = percentile(0.99);
  r["mean_ns"] = sum / static_cast<double>(round_trips_ns.size());
  r["min_ns"] = round_trips_ns.front();
  r["max_ns"] = round_trips_ns.back();
  return r;
}

template <typename Stream>
json client_session(Stream& stream, const Options& o, Watchdog& watchdog) {
  return o.pingpong ? ping_pong(stream, o, watchdog) : stream_messages(stream, o, watchdog);
}

// asio's host_name_verification, plus the reason for OpenSSL to report when the name is wrong.
struct VerifyHost {
  ssl::host_name_verification check_name;
  bool is_address;
  bool operator()(bool preverified, ssl::verify_context& ctx) const {
    if (check_name(preverified, ctx))
      return true;
    if (preverified)
      ::X509_STORE_CTX_set_error(ctx.native_handle(), is_address ? X509_V_ERR_IP_ADDRESS_MISMATCH
                                                                 : X509_V_ERR_HOSTNAME_MISMATCH);
    return false;
  }
};

json run_client(const Options& o) {
  Watchdog watchdog("client", std::chrono::seconds(o.timeout_s));
  error_code ec;
  std::optional<ssl::context> tls_ctx;
  if (o.tls) {
    tls_ctx.emplace(ssl::context::tls_client);
    ::SSL_CTX_set_min_proto_version(tls_ctx->native_handle(), TLS1_2_VERSION);
    tls_ctx->load_verify_file(o.cert_dir + "/ca.pem", ec);
    check(ec, "CA certificate " + o.cert_dir + "/ca.pem");
  }

  asio::io_context io;
  tcp::resolver resolver(io);
  watchdog.phase("connecting");
  const std::string address = o.host + ":" + std::to_string(o.port);
  const auto endpoints =
      resolver.resolve(o.host, std::to_string(o.port), tcp::resolver::numeric_service, ec);
  check(ec, "resolve " + o.host);
  tcp::socket socket(io);
  asio::connect(socket, endpoints, ec);
  check(ec, "connect to " + address);
  socket.set_option(tcp::no_delay(true), ec);
  check(ec, "set TCP_NODELAY");

  if (!o.tls)
    return client_session(socket, o, watchdog);
  TlsStream stream(std::move(socket), *tls_ctx);
  asio::ip::make_address(o.host, ec);
  const bool is_address = !ec;
  stream.set_verify_mode(ssl::verify_peer);
  stream.set_verify_callback(VerifyHost{ssl::host_name_verification(o.host), is_address});
  if (!is_address && ::SSL_set_tlsext_host_name(stream.native_handle(), o.host.c_str()) != 1) // SNI
    throw std::runtime_error("cannot set the TLS server name " + o.host);
  watchdog.phase("in the TLS handshake");
  stream.handshake(ssl::stream_base::client, ec);
  if (ec) {
    const long verify = ::SSL_get_verify_result(stream.native_handle());
    std::string what = "TLS handshake with " + address;
    if (verify != X509_V_OK)
      what += " (" + std::string(::X509_verify_cert_error_string(verify)) + ")";
    fail(what, ec);
  }
  return with_tls_details(client_session(stream, o, watchdog), stream);
}

void print_result(const json& r, bool json_out) {
  if (json_out) {
    std::cout << r.dump() << std::endl;
    return;
  }
  const std::string what =
      "asio " + r["transport"].get<std::string>() + " " + r["role"].get<std::string>();
  if (r.contains("p50_ns")) {
    std::printf("%s: %llu round trips of %llu B: p50 %.1f us, p99 %.1f us, mean %.1f us\n",
                what.c_str(), r["count"].get<unsigned long long>(),
                r["size"].get<unsigned long long>(), r["p50_ns"].get<double>() / 1e3,
                r["p99_ns"].get<double>() / 1e3, r["mean_ns"].get<double>() / 1e3);
  } else if (r["mode"] == "stream") {
    std::printf("%s: %llu messages of %llu B in %.3f s: %.0f msg/s, %.2f Gbit/s\n", what.c_str(),
                r["messages"].get<unsigned long long>(), r["size"].get<unsigned long long>(),
                r["seconds"].get<double>(), r["msgs_per_s"].get<double>(),
                r["gbit_per_s"].get<double>());
  } else {
    std::printf("%s: %llu messages of %llu B echoed\n", what.c_str(),
                r["messages"].get<unsigned long long>(), r["size"].get<unsigned long long>());
  }
  std::fflush(stdout);
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry-asio-baseline: plain Boost.Asio TCP/TLS sender and receiver (the baseline)"};
  app.require_subcommand(1);
  Options o;
  const auto add_common = [&o](CLI::App* cmd) {
    cmd->add_option("--port", o.port, "TCP port (server: 0 picks a free one)")->required();
    cmd->add_option("--host", o.host, "address to listen on / connect to")->capture_default_str();
    auto* cert_dir =
        cmd->add_option("--cert-dir", o.cert_dir, "directory with ca.pem, server.pem, server.key")
            ->check(CLI::ExistingDirectory);
    cmd->add_flag("--tls", o.tls, "TLS over the TCP connection")->needs(cert_dir);
    cmd->add_flag("--pingpong", o.pingpong, "round trips instead of streaming (both sides)");
    cmd->add_flag("--json", o.json_out, "print the result as one JSON object on one line");
    cmd->add_option("--timeout", o.timeout_s, "give up when nothing happens for this many seconds")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
  };
  auto* server_cmd = app.add_subcommand("server", "serve one connection, then print its result");
  add_common(server_cmd);
  auto* client_cmd = app.add_subcommand("client", "send to a server");
  add_common(client_cmd);
  client_cmd->add_option("--size", o.size_text, "payload bytes per message (suffix K or M allowed)")
      ->required();
  client_cmd->add_option("--seconds", o.seconds, "streaming time")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  client_cmd->add_option("--batch", o.batch, "messages gathered into one write")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{4096}));
  client_cmd->add_option("--count", o.count, "timed round trips (--pingpong)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  client_cmd->add_option("--warmup", o.warmup, "untimed round trips first (--pingpong)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  o.server = server_cmd->parsed();
  const char* role = o.server ? "server" : "client";
  try {
    if (!o.server) {
      o.size = parse_size(o.size_text);
      if (o.size > kMaxMessage)
        throw std::invalid_argument("--size is over the 1 GiB limit");
    }
    print_result(o.server ? run_server(o) : run_client(o), o.json_out);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-asio-baseline %s: error: %s\n", role, e.what());
    return 1;
  }
  return 0;
}
