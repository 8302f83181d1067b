// SPDX-License-Identifier: Apache-2.0
// The MQTT transport. The server and each client are clients of the broker (paho.mqtt.cpp's
// async_client); a Ferry connection is a pair of topics (mqtt_transport.hpp draws them and the
// publish header) carrying the same hello and frame batches as a TCP connection, with a
// sequence number per publish so that a publish the broker loses or repeats is detected, never
// parsed as part of the stream.
//
// Flow control is Ferry's own: each side sends at most a window of publishes and bytes that
// its peer has not acknowledged (acknowledged once the peer's reader has consumed them), so
// the broker never holds more than that window per connection (Mosquitto drops what exceeds
// its per-client queue), a paused reader holds its peer back, and paho never has more queued
// than the window either (paho refuses publishes beyond its max_buffered_messages, and
// finishes a publish larger than the socket's free send buffer only when its poll times out).
//
// paho's callbacks (messages, a lost connection) run on paho's thread; they only look up the
// connection and post to its strand, where everything else runs, as in the TCP transport.
// Layer: src/transport/mqtt.
#include "transport/mqtt/mqtt_transport.hpp"

#include <mqtt/async_client.h>

#include <boost/asio.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <vector>

#include "core/frame_reader.hpp"
#include "core/link_writer.hpp"
#include "transport/asio_transport.hpp"
#include "transport/mqtt/broker_socket.hpp"

namespace ferry::detail::mqtt_link {

namespace {

template <typename T>
void put_le(std::byte* p, T v) noexcept {
  for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
template <typename T>
T get_le(const std::byte* p) noexcept {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(p[i]) << (8 * i));
  return v;
}

}  // namespace

void encode_pub_header(const PubHeader& h, std::span<std::byte, kPubHeaderSize> out) noexcept {
  std::memset(out.data(), 0, out.size());
  out[0] = static_cast<std::byte>(h.kind);
  put_le<std::uint32_t>(out.data() + 4, h.window_pubs);
  put_le<std::uint64_t>(out.data() + 8, h.seq);
  put_le<std::uint64_t>(out.data() + 16, h.ack);
  put_le<std::uint64_t>(out.data() + 24, h.window_bytes);
}

Errc decode_pub_header(std::span<const std::byte> publish, PubHeader& out, std::string& why) {
  if (publish.size() < kPubHeaderSize) {
    why = "a publish of " + std::to_string(publish.size()) + " bytes is shorter than Ferry's header";
    return Errc::protocol_error;
  }
  const std::byte* p = publish.data();
  const auto kind = static_cast<std::uint8_t>(p[0]);
  if (kind < 1 || kind > 4) {
    why = "unknown publish kind " + std::to_string(kind);
    return Errc::protocol_error;
  }
  if (p[1] != std::byte{0} || p[2] != std::byte{0} || p[3] != std::byte{0}) {
    why = "reserved publish header bytes are not zero";
    return Errc::protocol_error;
  }
  out.kind = static_cast<Kind>(kind);
  out.window_pubs = get_le<std::uint32_t>(p + 4);
  out.seq = get_le<std::uint64_t>(p + 8);
  out.ack = get_le<std::uint64_t>(p + 16);
  out.window_bytes = get_le<std::uint64_t>(p + 24);
  const std::size_t body = publish.size() - kPubHeaderSize;
  const bool gone = out.kind == Kind::gone;
  if (gone ? (out.window_pubs != 0 || out.window_bytes != 0 || out.ack != 0)
           : (out.window_pubs == 0 || out.window_pubs > 65535 || out.window_bytes == 0 ||
              out.window_bytes > (std::uint64_t{1} << 40))) {
    why = "bad window fields in a publish header";
    return Errc::protocol_error;
  }
  if ((out.kind == Kind::data) != (out.seq != 0)) {
    why = "a publish's sequence number does not match its kind";
    return Errc::protocol_error;
  }
  if ((out.kind == Kind::ack || gone) && body != 0) {
    why = "an ack or will publish with a body";
    return Errc::protocol_error;
  }
  if (out.kind == Kind::reset && body != 4) {
    why = "a reset publish whose body is not 4 bytes";
    return Errc::protocol_error;
  }
  if (out.kind == Kind::data && body == 0) {
    why = "an empty data publish";
    return Errc::protocol_error;
  }
  return Errc{};
}

namespace {

namespace asio = boost::asio;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;
using Done = AsioTransport::Done;
/// How long a broker connection's set-up step may go unacknowledged before it is issued again.
constexpr std::chrono::milliseconds kSetupCheck{1000};

std::string random_hex(std::size_t digits) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(digits, '0');
  for (auto& c : s) c = kHex[rng() & 15];
  return s;
}

bool is_hex(std::string_view s, std::size_t digits) {
  return s.size() == digits && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

std::span<const std::byte> bytes_of(const mqtt::const_message_ptr& m) {
  const auto& p = m->get_payload_ref();
  return {reinterpret_cast<const std::byte*>(p.data()), p.size()};
}

class MqttTransport;

/// paho runs one receive thread for every client of the process, and it waits in poll() on the
/// sockets it had when the wait began, for up to 1 s: a second client's connect, a disconnect,
/// or the rest of a partly written publish waits for that poll to end. Each transport
/// subscribes to a wake topic of its own; while one waits for paho, it publishes an empty
/// message to the others' (the broker echoes it to their sockets, the poll returns, and the
/// next one watches every socket). Only matters with several clients in one process.
class WakeRegistry {
 public:
  static WakeRegistry& get() {
    static WakeRegistry r;
    return r;
  }
  void add(MqttTransport* t) {
    const std::lock_guard lock(m_mutex);
    m_live.push_back(t);
  }
  /// After it returns, no poke() touches t.
  void remove(MqttTransport* t) {
    std::unique_lock lock(m_mutex);
    m_live.erase(std::remove(m_live.begin(), m_live.end(), t), m_live.end());
    m_idle.wait(lock, [&] { return m_poking == 0; });
  }
  /// Wakes paho's receive thread through the others' connections. Calls into paho without
  /// the registry's lock: paho calls us back holding its own.
  void poke(const MqttTransport* self);

 private:
  std::mutex m_mutex;
  std::condition_variable m_idle;
  std::vector<MqttTransport*> m_live;
  int m_poking = 0;  // poke() calls using a copy of m_live
};

/// One Ferry connection over the broker. Everything runs on its strand except kick(),
/// resume_reading(), shutdown(), abort(), cut() and arrived(), which post to it.
class Connection final : public AsioLink, public std::enable_shared_from_this<Connection> {
 public:
  enum class Role { server, client };

  Connection(MqttTransport& transport, Role role, std::string key, std::string tag);
  ~Connection() override;

  /// Handshake, then run. done(failure) reports the outcome (nullopt: running).
  void start(Done done);
  /// A publish for this connection (paho's thread).
  void arrived(mqtt::const_message_ptr m) {
    asio::post(m_strand, [self = shared_from_this(), m = std::move(m)] { self->on_publish(m); });
  }
  /// The broker connection that carried this connection ended, or the peer's last will came.
  void lost(Errc errc, std::string what) {
    asio::post(m_strand, [self = shared_from_this(), errc, what = std::move(what)] { self->fail(errc, what, false); });
  }
  const std::string& key() const noexcept { return m_key; }
  const std::string& tag() const noexcept { return m_tag; }

  void kick() override;
  void resume_reading() override;
  void shutdown(std::error_code why) override;
  std::string transport() const override;
  std::string remote() const override { return m_remote; }
  std::string detail() const override;
  void abort() override;
  void cut() override {
    asio::post(m_strand, [self = shared_from_this()] {
      if (self->m_running) self->fail(Errc::peer_lost, "connection cut (fault injection)", true);
    });
  }

 private:
  void on_publish(const mqtt::const_message_ptr& m);
  void on_hello(std::span<const std::byte> hello);
  void handshake_failed(Failure f);
  void run();
  void process();
  void maybe_ack(bool any);
  void do_write();
  /// The window allows another publish.
  bool window_open() const noexcept;
  /// Publishes one piece of the stream (its header filled here). False: not sent (the
  /// connection failed, or paho is busy and a retry is scheduled); the piece stays queued.
  bool send_data(std::string& piece);
  void send_control(Kind kind, std::uint32_t errc = 0);
  void answer_pending_write();
  void on_tick();
  /// reset: tell the peer (when the broker connection still stands).
  void fail(Errc errc, const std::string& what, bool reset);
  void finish();
  PubHeader header(Kind kind) const noexcept;

  MqttTransport& m_transport;
  const Role m_role;
  CommunicatorImpl& m_owner;
  const std::string m_key;    // "<tag>/<n>"
  const std::string m_tag;
  mqtt::string_ref m_out_topic;  // shared with each publish's message: no copy per publish
  std::string m_remote;
  asio::strand<asio::io_context::executor_type> m_strand;
  asio::steady_timer m_timer;
  asio::steady_timer m_retry;
  Done m_handshake_done;
  std::shared_ptr<Session> m_session;
  bool m_running = false;
  bool m_failed = false;
  bool m_hello_done = false;
  std::optional<Failure> m_refusal;

  // Receiving.
  std::deque<mqtt::const_message_ptr> m_in;  // in order, not yet consumed
  std::size_t m_in_bytes = 0;                // their publishes' bytes
  std::size_t m_offset = 0;                  // consumed of m_in.front()'s stream bytes
  std::uint64_t m_rx_expected = 1;           // next data seq
  std::uint64_t m_rx_fed = 0;                // highest seq consumed
  std::uint64_t m_rx_acked = 0;              // highest seq we acknowledged to the peer
  std::uint64_t m_rx_bytes_unacked = 0;      // bytes consumed since that ack
  std::uint32_t m_peer_window_pubs = 0;      // 0 until the peer's first publish
  std::uint64_t m_peer_window_bytes = 0;
  FrameReader m_reader;
  Clock::time_point m_last_rx{};

  // Sending (the writer role's holder, on the strand).
  LinkWriter m_writer;
  std::deque<std::string> m_pieces;  // the batch's publishes not yet sent (header room first)
  bool m_blocked = false;            // the role is held, waiting for the window or paho
  std::uint64_t m_tx_seq = 0;
  std::uint64_t m_tx_acked = 0;
  std::deque<std::pair<std::uint64_t, std::size_t>> m_unacked;  // seq, bytes
  std::uint64_t m_unacked_bytes = 0;
  bool m_sent_since_tick = false;
  Clock::time_point m_last_tx{};
};

class MqttTransport final : public AsioTransport {
 public:
  MqttTransport(CommunicatorImpl& owner, const Endpoint& endpoint);
  ~MqttTransport() override { stop(); }
  void stop() override;

  enum class Sent { ok, busy, failed };
  /// Publishes on the broker connection (any thread). busy: paho's queue or its message ids
  /// are full for now (retry shortly); failed: not connected (why says so).
  Sent publish(const mqtt::string_ref& topic, const mqtt::binary_ref& payload, bool retained, std::string& why);

  bool tls() const noexcept { return m_endpoint.scheme == Scheme::mqtts; }
  int qos() const noexcept { return m_mqtt.qos; }
  const MqttOptions& mqtt() const noexcept { return m_mqtt; }
  const std::string& broker() const noexcept { return m_broker; }
  std::string topic(const std::string& kind, const std::string& key) const { return m_prefix + "/" + kind + "/" + key; }
  /// A connection ended: it no longer receives.
  void forget(const std::string& key);
  /// WakeRegistry: an empty QoS 0 publish to our wake topic, when connected (any thread).
  void wake();
  // Publishes lost and duplicated on the way (every connection of this communicator: a loss
  // ends the connection it happened on), and publishes paho refused for a moment.
  // relaxed: statistics, read by detail() on any thread.
  std::atomic<std::uint64_t> lost{0};
  std::atomic<std::uint64_t> duplicates{0};
  std::atomic<std::uint64_t> busy{0};
  std::atomic<std::uint64_t> sent{0};
  std::atomic<std::uint64_t> received{0};
  /// Connections (handshaking or running) beyond which a server ignores new hellos.
  std::size_t conn_limit() const noexcept { return conn().max_connections + 64; }

 private:
  void connect(Done done) override;
  void connect_now(Done done);
  mqtt::connect_options connect_options(const std::string& tag) const;
  /// One attempt to reach the broker (async); on failure, retried after a delay.
  void broker_connect();
  void on_broker_connected(const std::string& tag);
  /// rc: paho's return code (MQTT 3.1.1: the CONNACK's, 1-5, when the broker refused).
  void on_broker_failed(int rc, const std::string& why);
  void on_message(const mqtt::const_message_ptr& m);  // paho's thread
  void on_lost(const std::string& cause);             // paho's thread
  void on_presence(const std::string& payload);       // paho's thread, m_mutex held
  /// Fails every connection (or those of one tag); m_mutex not held.
  void fail_all(Errc errc, const std::string& what, const std::string& tag = {});
  /// Server: our presence, retained on <prefix>/server.
  void publish_presence();
  /// One step of a broker connection's set-up that the broker acknowledges: a subscription, or
  /// (presence) the server's retained presence. A wire that loses a whole packet loses one
  /// without breaking the connection, so each is issued again until acknowledged
  /// (check_setup()); subscribing again is harmless (the broker replaces the subscription and
  /// sends its retained publish again).
  struct SetupStep {
    std::string topic;
    int qos = 1;
    bool presence = false;
    mqtt::token_ptr token;
  };
  /// Issues a step of the broker connection `tag` and has check_setup() watch it (m_mutex not
  /// held: paho calls us back holding its own lock). Its token; null: not connected.
  mqtt::token_ptr setup_step(const std::string& tag, SetupStep step);
  /// Every kSetupCheck while connection `tag` lasts: the steps not acknowledged yet again.
  void check_setup(const std::string& tag);
  /// Client: the server's presence asked for again (its retained publish may have been lost):
  /// at most once per presence_wait.
  void recheck_presence();

 public:
  /// Client: a handshake on broker connection `tag` timed out. The second in a row subscribes
  /// again (a subscription whose topic was altered on the way is acknowledged, for the wrong
  /// topic, and the server's replies then go nowhere).
  void handshake_timed_out(const std::string& tag);
  /// Client: a handshake completed (the count of timeouts starts again).
  void handshake_succeeded();

 private:
  /// Waits (constructor) until pred or the deadline; false on timeout.
  template <typename Pred>
  bool wait_until(Clock::time_point deadline, Pred pred) {
    std::unique_lock lock(m_mutex);
    return m_cv.wait_until(lock, deadline, pred);
  }

  class Listener final : public mqtt::iaction_listener {
   public:
    explicit Listener(std::function<void(bool, int)> fn) : m_fn(std::move(fn)) {}
    void on_success(const mqtt::token&) override { m_fn(true, 0); }
    void on_failure(const mqtt::token& t) override { m_fn(false, t.get_return_code()); }

   private:
    std::function<void(bool, int)> m_fn;
  };

  const Endpoint m_endpoint;
  const MqttOptions m_mqtt;
  const bool m_server;
  std::string m_prefix;
  std::string m_broker;    // host:port
  std::string m_instance;  // server: this process's presence instance
  std::string m_wake_topic;
  std::vector<sockaddr_storage> m_broker_addresses;

  std::mutex m_mutex;  // everything below, against paho's thread
  std::condition_variable m_cv;
  bool m_closing = false;
  bool m_stopped = false;
  bool m_connected = false;
  bool m_connecting = false;
  std::uint64_t m_attempts = 0;  // broker connection attempts made
  bool m_refused = false;  // the broker refused our credentials
  bool m_announced = false;  // server: its presence was published (only then does it clear it)
  std::string m_tag;               // client: the current broker connection's tag
  std::string m_attempt_tag;       // the tag of the connection being attempted
  std::string m_last_error;
  enum class Presence { unknown, present, absent } m_presence = Presence::unknown;
  std::string m_server_instance;  // client: the server's presence instance
  bool m_other_server = false;    // server: another server's presence was seen at start
  Clock::time_point m_presence_deadline{};
  std::uint64_t m_next_link = 0;
  std::map<std::string, std::shared_ptr<Connection>> m_by_key;
  std::chrono::milliseconds m_retry_delay{10};
  std::vector<SetupStep> m_setup;  // the current broker connection's steps (m_tag)
  bool m_setup_armed = false;      // a check_setup() is scheduled for them
  unsigned m_handshake_timeouts = 0;  // client: in a row, on the current broker connection
  Clock::time_point m_presence_asked{};  // client: the last recheck_presence()
  Listener m_connect_listener;
  // Last, so it goes first: no paho callback runs into the members above once it is gone.
  std::unique_ptr<mqtt::async_client> m_client;
};

// ---------------------------------------------------------------------------------------------
// Connection

Connection::Connection(MqttTransport& transport, Role role, std::string key, std::string tag)
    : m_transport(transport),
      m_role(role),
      m_owner(transport.owner()),
      m_key(std::move(key)),
      m_tag(std::move(tag)),
      m_strand(asio::make_strand(transport.io())),
      m_timer(m_strand),
      m_retry(m_strand),
      m_reader(m_owner),
      m_writer(transport.conn().merge_size) {
  m_out_topic = transport.topic(role == Role::client ? "s" : "c", m_key);
  m_remote = transport.broker() + "/" + transport.topic(role == Role::client ? "c" : "s", m_key);
}

Connection::~Connection() {
  if (m_writer.pending && m_session) m_session->write_failed(m_writer.record);
}

std::string Connection::transport() const { return m_transport.tls() ? "mqtts" : "mqtt"; }

std::string Connection::detail() const {
  const auto count = [](const std::atomic<std::uint64_t>& c) {
    return std::to_string(c.load(std::memory_order_relaxed));  // relaxed: statistics
  };
  return "qos " + std::to_string(m_transport.qos()) + " via broker " + m_transport.broker() + "; publishes sent " +
         count(m_transport.sent) + ", received " + count(m_transport.received) + ", lost " + count(m_transport.lost) +
         ", duplicated " + count(m_transport.duplicates) + ", refused by paho for a moment " + count(m_transport.busy);
}

PubHeader Connection::header(Kind kind) const noexcept {
  PubHeader h;
  h.kind = kind;
  h.window_pubs = static_cast<std::uint32_t>(m_transport.mqtt().window_publishes);
  h.window_bytes = m_transport.mqtt().window_bytes;
  h.ack = m_rx_fed;
  return h;
}

void Connection::start(Done done) {
  m_handshake_done = std::move(done);
  asio::post(m_strand, [self = shared_from_this()] {
    self->m_timer.expires_after(self->m_transport.conn().handshake_timeout);
    self->m_timer.async_wait([self](const error_code& e) {
      if (!e && !self->m_running && !self->m_failed) {
        self->handshake_failed({Errc::timed_out, "handshake with " + self->m_remote + " timed out"});
      }
    });
    if (self->m_failed || self->m_role != Role::client) return;
    framing::Hello hello;
    self->m_owner.client_hello(hello, true);
    std::string piece(kPubHeaderSize + framing::kHelloSize, '\0');
    framing::encode_hello(hello, std::span<std::byte, framing::kHelloSize>(
                                     reinterpret_cast<std::byte*>(piece.data()) + kPubHeaderSize, framing::kHelloSize));
    if (!self->send_data(piece) && !self->m_failed) {
      self->handshake_failed({Errc::peer_lost, "handshake with " + self->m_remote + ": paho cannot publish now"});
    }
  });
}

void Connection::on_publish(const mqtt::const_message_ptr& m) {
  if (m_failed) return;
  const auto bytes = bytes_of(m);
  PubHeader h;
  std::string why;
  // With checksums, a publish header that does not add up was damaged on the way, as a frame
  // that does not check out is (the broker passes altered bytes on).
  const auto bad = [&](const std::string& what) {
    Errc e = Errc::protocol_error;
    std::string reason = what;
    if (m_running && m_reader.checksums()) {
      m_reader.damaged(e, reason, what);
    } else if (!m_running && m_role == Role::client && m_owner.options().connection.checksums) {
      e = Errc::peer_lost;  // the server's reply, damaged: no session was touched; connect again
      reason += " (taken for damage on the way: checksums are on)";
    }
    fail(e, "from " + m_remote + ": " + reason, true);
  };
  if (decode_pub_header(bytes, h, why) != Errc{}) return bad(why);
  if (h.kind == Kind::gone) return fail(Errc::peer_lost, "the peer's broker connection ended (its last will)", false);
  if (h.kind == Kind::reset) {
    const auto code = get_le<std::uint32_t>(bytes.data() + kPubHeaderSize);
    return fail(Errc::peer_lost,
                "the peer dropped the connection (" + make_error_code(static_cast<Errc>(code)).message() + ")", false);
  }
  m_peer_window_pubs = h.window_pubs;
  m_peer_window_bytes = h.window_bytes;
  if (h.ack > m_tx_seq) return bad("acknowledges a publish never sent");
  if (h.ack > m_tx_acked) {
    m_tx_acked = h.ack;
    while (!m_unacked.empty() && m_unacked.front().first <= m_tx_acked) {
      m_unacked_bytes -= m_unacked.front().second;
      m_unacked.pop_front();
    }
    if (m_blocked && m_running && window_open()) {
      m_blocked = false;
      do_write();
      if (m_failed) return;
    }
  }
  if (h.kind == Kind::ack) return;
  if (h.seq < m_rx_expected) {
    m_transport.duplicates.fetch_add(1, std::memory_order_relaxed);  // relaxed: statistics
    return;
  }
  if (h.seq > m_rx_expected) {
    const std::uint64_t missing = h.seq - m_rx_expected;
    m_transport.lost.fetch_add(missing, std::memory_order_relaxed);  // relaxed: statistics
    return fail(Errc::peer_lost,
                "from " + m_remote + ": " + std::to_string(missing) + " publish(es) lost before #" + std::to_string(h.seq) +
                    " (the session resumes on a new connection)",
                true);
  }
  ++m_rx_expected;
  m_last_rx = Clock::now();
  if (!m_hello_done) {
    m_rx_fed = h.seq;
    return on_hello(bytes.subspan(kPubHeaderSize));
  }
  const std::size_t size = bytes.size();
  if (m_in.size() >= m_transport.mqtt().window_publishes ||
      (!m_in.empty() && m_in_bytes + size > m_transport.mqtt().window_bytes)) {
    return bad("more unacknowledged publishes than the window");
  }
  m_in_bytes += size;
  m_in.push_back(m);
  if (!m_running || m_reader.paused()) return;
  process();
  if (m_failed) return;
  if (m_reader.round_open()) m_reader.end_round(true, m_in.empty());
  // After the writes this round asked for (a kick posts them first): a data publish carries
  // the acknowledgement, and then none of its own is needed.
  asio::post(m_strand, [self = shared_from_this()] { self->maybe_ack(false); });
}

void Connection::on_hello(std::span<const std::byte> bytes) {
  m_hello_done = true;
  framing::Hello hello;
  std::string why;
  const Errc decoded = framing::decode_hello(bytes, hello, why);
  std::uint64_t next_expected = 1;
  if (m_role == Role::server) {
    framing::Hello reply;
    const Errc e = answer_hello(m_owner, hello, decoded, "mqtt", shared_from_this(), reply, m_session, next_expected, why);
    if (e == Errc{}) start_framing(m_reader, m_writer, m_session, next_expected, reply.flags);
    std::string piece(kPubHeaderSize + framing::kHelloSize, '\0');
    framing::encode_hello(reply, std::span<std::byte, framing::kHelloSize>(
                                     reinterpret_cast<std::byte*>(piece.data()) + kPubHeaderSize, framing::kHelloSize));
    const bool sent = send_data(piece);
    if (m_failed) return;
    if (e != Errc{}) return handshake_failed({e, "refused client " + m_remote + ": " + why});
    if (!sent) return handshake_failed({Errc::peer_lost, "handshake reply to " + m_remote + ": paho cannot publish now"});
    return run();
  }
  if (decoded != Errc{}) {
    return handshake_failed({reply_error(m_owner, decoded, bytes, hello, why), "handshake with " + m_remote + ": " + why});
  }
  if (auto f = m_transport.attach_reply(hello, shared_from_this(), m_remote, m_session, next_expected)) {
    return handshake_failed(std::move(*f));
  }
  start_framing(m_reader, m_writer, m_session, next_expected, hello.flags);
  run();
}

void Connection::handshake_failed(Failure f) {
  if (m_failed) return;
  if (m_role == Role::client && f.errc == Errc::timed_out) m_transport.handshake_timed_out(m_tag);
  // The server may be running its side already (its reply was late or lost): tell it.
  if (m_role == Role::client && m_tx_seq > 0) send_control(Kind::reset, static_cast<std::uint32_t>(f.errc));
  m_failed = true;
  m_timer.cancel();
  m_retry.cancel();
  if (m_session) m_session->link_down(this, ferry_code(f.errc));
  auto done = std::move(m_handshake_done);
  finish();
  m_transport.link_ended(shared_from_this(), false);
  if (done) done(std::move(f));
}

void Connection::run() {
  m_running = true;
  if (m_role == Role::client) m_transport.handshake_succeeded();
  m_last_rx = Clock::now();
  m_last_tx = m_last_rx;
  if (auto done = std::move(m_handshake_done)) done(std::nullopt);
  on_tick();
  process();  // publishes that came right after the hello
  if (m_failed) return;
  kick();  // anything queued before the connection came up (a resend after a reconnect)
}

void Connection::process() {
  while (!m_in.empty()) {
    const auto bytes = bytes_of(m_in.front()).subspan(kPubHeaderSize);
    Errc e{};
    std::string why;
    m_offset += m_reader.feed(bytes.subspan(m_offset), e, why);
    if (e != Errc{}) return fail(e, "from " + m_remote + ": " + why, true);
    if (m_offset < bytes.size()) return;  // the receive queue is full: resume_reading() goes on
    m_rx_bytes_unacked += bytes.size();
    m_in_bytes -= bytes.size() + kPubHeaderSize;
    m_in.pop_front();
    m_offset = 0;
    ++m_rx_fed;
  }
}

void Connection::maybe_ack(bool any) {
  if (m_failed || !m_running || m_rx_fed == m_rx_acked) return;
  // A quarter of the window the peer may use (the smaller of its and ours), so it never waits.
  const std::uint64_t pubs = std::min<std::uint64_t>(m_peer_window_pubs, m_transport.mqtt().window_publishes);
  const std::uint64_t bytes = std::min<std::uint64_t>(m_peer_window_bytes, m_transport.mqtt().window_bytes);
  if (any || m_rx_fed - m_rx_acked >= std::max<std::uint64_t>(1, pubs / 4) ||
      m_rx_bytes_unacked >= std::max<std::uint64_t>(1, bytes / 4)) {
    send_control(Kind::ack);
  }
}

void Connection::resume_reading() {
  asio::post(m_strand, [self = shared_from_this()] {
    if (!self->m_reader.paused() || self->m_failed) return;
    self->m_reader.resume();
    self->m_last_rx = Clock::now();
    self->process();
    if (self->m_failed) return;
    if (self->m_reader.round_open()) self->m_reader.end_round(true, self->m_in.empty());
    self->maybe_ack(false);
  });
}

void Connection::kick() {
  if (m_writer.claim()) asio::post(m_strand, [self = shared_from_this()] { self->do_write(); });
}

bool Connection::window_open() const noexcept {
  const auto& o = m_transport.mqtt();
  const std::uint64_t pubs = m_peer_window_pubs == 0 ? o.window_publishes : std::min<std::uint64_t>(m_peer_window_pubs, o.window_publishes);
  const std::uint64_t bytes = m_peer_window_bytes == 0 ? o.window_bytes : std::min<std::uint64_t>(m_peer_window_bytes, o.window_bytes);
  const std::size_t next = m_pieces.empty() ? 0 : m_pieces.front().size();
  // The next publish must fit the byte window, unless nothing is in flight (the peer accepts
  // one publish of any size when it holds none).
  return m_tx_seq - m_tx_acked < pubs && (m_unacked.empty() || m_unacked_bytes + next <= bytes);
}

void Connection::do_write() {
  if (m_failed || !m_running || !m_session) {
    answer_pending_write();
    return m_writer.drop();  // run() kicks again
  }
  const std::size_t piece_size = m_transport.mqtt().publish_size;
  for (;;) {
    if (m_pieces.empty()) {
      if (!window_open()) {
        m_blocked = true;  // the role stays ours: an ack continues
        return;
      }
      if (!m_writer.next(*m_session)) return;  // nothing due: the role is given up
      // The batch into publishes of at most publish_size stream bytes, each with room for its
      // header. paho copies each publish's payload again; the batch's buffers are free after.
      std::string piece;
      for (const auto& b : m_writer.batch.buffers()) {
        const auto* p = reinterpret_cast<const char*>(b.data());
        std::size_t left = b.size();
        while (left > 0) {
          if (piece.empty()) {
            piece.reserve(kPubHeaderSize + piece_size);
            piece.resize(kPubHeaderSize);
          }
          const std::size_t take = std::min(left, kPubHeaderSize + piece_size - piece.size());
          piece.append(p, take);
          p += take;
          left -= take;
          if (piece.size() == kPubHeaderSize + piece_size) m_pieces.push_back(std::move(piece)), piece.clear();
        }
      }
      if (!piece.empty()) m_pieces.push_back(std::move(piece));
    }
    while (!m_pieces.empty()) {
      if (!window_open()) {
        m_blocked = true;
        return;
      }
      if (!send_data(m_pieces.front())) return;  // failed, or a retry is scheduled
      m_pieces.pop_front();
    }
    m_writer.pending = false;
    m_last_tx = Clock::now();
    m_session->written(m_writer.record);
  }
}

bool Connection::send_data(std::string& piece) {
  PubHeader h = header(Kind::data);
  h.seq = m_tx_seq + 1;
  encode_pub_header(h, std::span<std::byte, kPubHeaderSize>(reinterpret_cast<std::byte*>(piece.data()), kPubHeaderSize));
  const std::size_t size = piece.size();
  const mqtt::binary_ref payload(std::move(piece));  // shared with paho's message, no copy
  std::string why;
  switch (m_transport.publish(m_out_topic, payload, false, why)) {
    case MqttTransport::Sent::ok:
      break;
    case MqttTransport::Sent::busy:
      piece = payload.str();  // kept for the retry (rare: paho's queue is bounded by our windows)
      m_transport.busy.fetch_add(1, std::memory_order_relaxed);  // relaxed: statistics
      m_blocked = true;
      m_retry.expires_after(std::chrono::milliseconds(1));
      m_retry.async_wait([self = shared_from_this()](const error_code& e) {
        if (e || self->m_failed || !self->m_blocked) return;
        self->m_blocked = false;
        if (self->m_running) {
          self->do_write();
        } else if (!self->m_hello_done || self->m_role == Role::client) {
          self->handshake_failed({Errc::peer_lost, "handshake with " + self->m_remote + ": paho stayed busy"});
        }
      });
      return false;
    case MqttTransport::Sent::failed:
      piece = payload.str();
      fail(Errc::peer_lost, "publish to " + m_remote + " failed: " + why, false);
      return false;
  }
  m_tx_seq = h.seq;
  m_sent_since_tick = true;
  m_rx_acked = m_rx_fed;
  m_rx_bytes_unacked = 0;
  m_unacked.emplace_back(h.seq, size);
  m_unacked_bytes += size;
  return true;
}

void Connection::send_control(Kind kind, std::uint32_t errc) {
  std::string p(kPubHeaderSize + (kind == Kind::reset ? 4 : 0), '\0');
  encode_pub_header(header(kind), std::span<std::byte, kPubHeaderSize>(reinterpret_cast<std::byte*>(p.data()), kPubHeaderSize));
  if (kind == Kind::reset) put_le<std::uint32_t>(reinterpret_cast<std::byte*>(p.data()) + kPubHeaderSize, errc);
  std::string why;
  if (m_transport.publish(m_out_topic, mqtt::binary_ref(std::move(p)), false, why) == MqttTransport::Sent::ok && kind == Kind::ack) {
    m_sent_since_tick = true;
    m_rx_acked = m_rx_fed;
    m_rx_bytes_unacked = 0;
  }
}

void Connection::answer_pending_write() {
  m_pieces.clear();
  m_blocked = false;
  if (!m_writer.pending) return;
  m_writer.pending = false;
  if (m_session) m_session->write_failed(m_writer.record);
}

void Connection::on_tick() {
  if (m_failed) return;
  const auto now = Clock::now();
  const auto& c = m_transport.conn();
  if (!m_reader.paused() && now - m_last_rx >= c.keepalive_timeout) {
    return fail(Errc::peer_lost, "no frame from " + m_remote + " for " + std::to_string(c.keepalive_timeout.count()) + " ms", true);
  }
  if (now - m_last_tx >= c.keepalive_interval) {
    m_writer.want_keepalive();
    kick();
  }
  // An acknowledgement lost on the way (QoS 0) would hold a window-blocked peer: with nothing
  // sent since the last tick, say again what we consumed.
  if (!m_sent_since_tick && m_rx_fed > 0) m_rx_acked = 0;
  m_sent_since_tick = false;
  maybe_ack(true);
  m_timer.expires_after(keepalive_period(c));
  m_timer.async_wait([self = shared_from_this()](const error_code& ec) {
    if (!ec) self->on_tick();
  });
}

void Connection::finish() {
  answer_pending_write();
  m_writer.drop();
  m_in.clear();
  m_in_bytes = 0;
  m_transport.forget(m_key);
}

void Connection::fail(Errc errc, const std::string& what, bool reset) {
  if (m_failed) return;
  if (!m_running) return handshake_failed({errc, what});
  if (reset) send_control(Kind::reset, static_cast<std::uint32_t>(errc));
  m_failed = true;
  m_reader.wake_pending();
  m_timer.cancel();
  m_retry.cancel();
  finish();
  if (m_session) m_session->link_down(this, ferry_code(errc));
  m_transport.link_ended(shared_from_this(), true);
}

void Connection::shutdown(std::error_code why) {
  asio::post(m_strand, [self = shared_from_this(), why] {
    if (self->m_failed) return;
    self->m_reader.wake_pending();
    // A clean end (both close frames exchanged) needs no word; otherwise the peer learns now.
    if (why != ferry_code(Errc::closed) && self->m_running) {
      self->send_control(Kind::reset, static_cast<std::uint32_t>(Errc::closed));
    }
    self->m_failed = true;
    self->m_timer.cancel();
    self->m_retry.cancel();
    self->finish();
    self->m_transport.link_ended(self, false);
  });
}

void Connection::abort() {
  asio::post(m_strand, [self = shared_from_this()] {
    self->m_failed = true;
    self->m_timer.cancel();
    self->m_retry.cancel();
    self->finish();
  });
}

// ---------------------------------------------------------------------------------------------
// MqttTransport

MqttTransport::MqttTransport(CommunicatorImpl& owner, const Endpoint& endpoint)
    : AsioTransport(owner),
      m_endpoint(endpoint),
      m_mqtt(owner.options().mqtt),
      m_server(owner.purpose() == Purpose::server),
      m_connect_listener([this](bool ok, int rc) {
        if (ok) {
          std::string tag;
          {
            const std::lock_guard lock(m_mutex);
            tag = m_attempt_tag;
          }
          on_broker_connected(tag);
        } else {
          on_broker_failed(rc, rc == 4 ? "the broker refused the username or password"
                               : rc == 5 ? "the broker refused: not authorized"
                               : rc == 2 ? "the broker refused the client id"
                                         : "paho error " + std::to_string(rc));
        }
      }) {
  m_prefix = endpoint.path.empty() ? std::string("ferry") : endpoint.path;
  while (!m_prefix.empty() && m_prefix.back() == '/') m_prefix.pop_back();
  if (m_prefix.empty()) m_prefix = "ferry";
  const bool v6 = endpoint.host.find(':') != std::string::npos;
  m_broker = (v6 ? "[" + endpoint.host + "]" : endpoint.host) + ":" + std::to_string(endpoint.port);
  m_broker_addresses = mqtt_socket::resolve(endpoint.host, endpoint.port);
  m_local = endpoint.to_string();
  m_instance = random_hex(32);

  const std::string uri = (tls() ? "ssl://" : "tcp://") + m_broker;
  const std::string client_id = (m_server ? "ferry-s-" : "ferry-c-") + random_hex(16);
  mqtt::create_options co(MQTTVERSION_3_1_1);
  // Our windows bound what is queued; paho's own limit (100 by default) must not bite first.
  co.set_max_buffered_messages(1 << 20);
  m_client = std::make_unique<mqtt::async_client>(uri, client_id, co);
  m_wake_topic = m_prefix + "/wake/" + client_id;
  m_client->set_message_callback([this](mqtt::const_message_ptr m) { on_message(m); });
  m_client->set_connection_lost_handler([this](const std::string& cause) { on_lost(cause); });

  start_threads();
  WakeRegistry::get().add(this);
  try {
    const auto deadline = Clock::now() + conn().connect_timeout;
    broker_connect();
    bool connected = false;
    bool refused = false;
    while (!(connected = wait_until(std::min(deadline, Clock::now() + std::chrono::milliseconds(5)),
                                    [&] { return m_connected || m_refused; })) &&
           Clock::now() < deadline) {
      WakeRegistry::get().poke(this);
    }
    {
      const std::lock_guard lock(m_mutex);
      refused = m_refused && !m_connected;
      connected = m_connected;
    }
    if (refused) throw Error(Errc::permission_denied, "MQTT broker at " + m_broker + ": " + m_last_error);
    if (!connected) {
      std::string why;
      {
        const std::lock_guard lock(m_mutex);
        why = m_last_error;
      }
      throw Error(Errc::not_found, "cannot reach the MQTT broker at " + m_broker + (why.empty() ? "" : ": " + why));
    }
    // The presence: known once our probe comes back through the broker (on_broker_connected).
    (void)wait_until(Clock::now() + m_mqtt.presence_wait, [&] { return m_presence != Presence::unknown; });

    if (m_server) {
      bool other = false;
      {
        const std::lock_guard lock(m_mutex);
        other = m_other_server;
      }
      if (other) {
        throw Error(Errc::address_in_use, "another Ferry server serves " + m_local + " (its presence is retained on " +
                                              m_prefix + "/server; a stale one clears with `mosquitto_pub -r -n -t " +
                                              m_prefix + "/server`)");
      }
      {
        const std::lock_guard lock(m_mutex);
        m_announced = true;
      }
      std::string tag;
      {
        const std::lock_guard lock(m_mutex);
        tag = m_tag;
      }
      // Steps, as on every later broker connection: issued again until acknowledged.
      if (const auto t = setup_step(tag, {m_prefix + "/s/+/+", m_mqtt.qos, false, nullptr})) t->wait_for(conn().connect_timeout);
      (void)setup_step(tag, {m_prefix + "/server", 1, true, nullptr});
      return;
    }
    connect_first();
  } catch (...) {
    stop();
    throw;
  }
}

mqtt::connect_options MqttTransport::connect_options(const std::string& tag) const {
  const auto& c = conn();
  auto b = mqtt::connect_options_builder()
               // Exactly 3.1.1: with the default, paho answers a connection that fails early by
               // trying 3.1 on its own, and a broker connection lost to damaged bytes came back as a
               // 3.1 connection no callback told us of (the session stalled until it broke again).
               .mqtt_version(MQTTVERSION_3_1_1)
               .clean_session(true)
               .connect_timeout(std::chrono::duration_cast<std::chrono::seconds>(c.connect_timeout) + std::chrono::seconds(1))
               // The broker drops a client silent for 1.5 times this: a few keep-alive intervals.
               .keep_alive_interval(std::max(std::chrono::seconds(1), std::chrono::duration_cast<std::chrono::seconds>(c.keepalive_timeout)));
  if (!m_mqtt.username.empty()) b.user_name(m_mqtt.username);
  if (!m_mqtt.password.empty()) b.password(m_mqtt.password);
  if (m_server) {
    b.will(mqtt::message(m_prefix + "/server", "ferry-gone " + m_instance, 1, true));
  } else {
    std::string gone(kPubHeaderSize, '\0');
    PubHeader h;
    h.kind = Kind::gone;
    encode_pub_header(h, std::span<std::byte, kPubHeaderSize>(reinterpret_cast<std::byte*>(gone.data()), kPubHeaderSize));
    b.will(mqtt::message(m_prefix + "/s/" + tag + "/will", gone, 1, false));
  }
  if (tls()) {
    const SecurityOptions& sec = owner().options().security;
    auto s = mqtt::ssl_options_builder();
    if (!sec.ca.empty()) s.trust_store(sec.ca.string());
    if (!sec.certificate.empty()) s.key_store(sec.certificate.string());
    if (!sec.key.empty()) s.private_key(sec.key.string());
    s.enable_server_cert_auth(true);
    s.verify(sec.verify_hostname);
    b.ssl(s.finalize());
  }
  auto o = b.finalize();
  o.set_max_inflight(65535);
  return o;
}

void MqttTransport::broker_connect() {
  std::string tag = random_hex(16);
  std::uint64_t attempt = 0;
  {
    const std::lock_guard lock(m_mutex);
    if (m_closing || m_connecting || m_connected) return;
    m_connecting = true;
    m_attempt_tag = tag;
    attempt = ++m_attempts;
  }
  // paho answers neither way for a connect made while it still cleans up the connection it
  // just lost (seen after a broker restart): give up on an attempt that stays unanswered.
  schedule(std::chrono::milliseconds(2000), [this, attempt] {
    {
      const std::lock_guard lock(m_mutex);
      if (!m_connecting || m_attempts != attempt || m_connected) return;
      m_connecting = false;
    }
    broker_connect();
  });
  try {
    m_client->connect(connect_options(tag), nullptr, m_connect_listener);
  } catch (const mqtt::exception& e) {
    on_broker_failed(e.get_return_code(), e.what());
  }
}

void MqttTransport::on_broker_failed(int rc, const std::string& why) {
  std::chrono::milliseconds delay{};
  {
    const std::lock_guard lock(m_mutex);
    m_connecting = false;
    m_last_error = why;
    if (rc == 4 || rc == 5) m_refused = true;
    m_cv.notify_all();
    if (m_closing) return;
    delay = m_retry_delay;
    m_retry_delay = std::min(m_retry_delay * 2, std::chrono::milliseconds(500));
  }
  schedule(delay, [this] { broker_connect(); });
}

void MqttTransport::on_broker_connected(const std::string& tag) {
  // paho never sets TCP_NODELAY: without it each small publish waits for the broker's delayed
  // ACK (QoS 1 round trips of ~88 ms on loopback instead of ~0.25 ms).
  (void)mqtt_socket::tune(m_broker_addresses);
  bool announced = false;  // a reconnection of a server that passed its presence check
  {
    const std::lock_guard lock(m_mutex);
    m_connecting = false;
    if (m_closing) return;
    m_connected = true;
    m_retry_delay = std::chrono::milliseconds(10);
    m_tag = tag;
    m_presence = Presence::unknown;
    m_presence_deadline = Clock::now() + m_mqtt.presence_wait;
    announced = m_announced;
    m_setup.clear();
    m_setup_armed = false;
    m_handshake_timeouts = 0;
  }
  // In this order on one connection: the broker sends the retained presence right after its
  // subscription's acknowledgement, and our probe comes back after that.
  (void)setup_step(tag, {m_wake_topic, 1, false, nullptr});
  if (m_server) {
    (void)setup_step(tag, {m_prefix + "/server", 1, false, nullptr});
    // Clients' hellos only once this server passed the presence check (the constructor
    // subscribes and announces the first time).
    if (announced) {
      (void)setup_step(tag, {m_prefix + "/s/+/+", m_mqtt.qos, false, nullptr});
      (void)setup_step(tag, {m_prefix + "/server", 1, true, nullptr});
    }
  } else {
    (void)setup_step(tag, {m_prefix + "/c/" + tag + "/+", m_mqtt.qos, false, nullptr});
    (void)setup_step(tag, {m_prefix + "/server", 1, false, nullptr});
  }
  try {
    m_client->publish(m_wake_topic, "presence-probe", 14, 1, false);
  } catch (const mqtt::exception&) {  // NOLINT(bugprone-empty-catch): the connection went: on_lost() follows
  }
  // No presence within the wait: nobody serves this prefix (connect() says so).
  schedule(m_mqtt.presence_wait, [this] {
    const std::lock_guard lock(m_mutex);
    if (m_presence == Presence::unknown && Clock::now() >= m_presence_deadline) m_presence = Presence::absent;
    m_cv.notify_all();
  });
  m_cv.notify_all();
}

mqtt::token_ptr MqttTransport::setup_step(const std::string& tag, SetupStep step) {
  try {
    step.token = step.presence ? m_client->publish(step.topic, "ferry-server " + m_instance, step.qos, true)
                               : m_client->subscribe(step.topic, step.qos);
  } catch (const mqtt::exception&) {  // NOLINT(bugprone-empty-catch): not connected: on_lost() follows
    return nullptr;
  }
  mqtt::token_ptr token = step.token;
  bool arm = false;
  {
    const std::lock_guard lock(m_mutex);
    if (!m_connected || m_tag != tag) return token;
    m_setup.push_back(std::move(step));
    arm = !m_setup_armed;
    m_setup_armed = true;
  }
  if (arm) schedule(kSetupCheck, [this, tag] { check_setup(tag); });
  return token;
}

void MqttTransport::check_setup(const std::string& tag) {
  std::vector<SetupStep> again;
  {
    const std::lock_guard lock(m_mutex);
    if (m_tag != tag) return;  // another broker connection: its own check runs
    m_setup_armed = false;
    if (m_closing || !m_connected) return;
    for (auto& st : m_setup) {
      if (!st.token->is_complete()) again.push_back(std::move(st));
    }
    m_setup.clear();
  }
  for (auto& st : again) (void)setup_step(tag, {st.topic, st.qos, st.presence, nullptr});  // arms the next check
}

void MqttTransport::recheck_presence() {
  std::string tag;
  {
    const std::lock_guard lock(m_mutex);
    const auto now = Clock::now();
    if (m_server || m_closing || !m_connected || now - m_presence_asked < m_mqtt.presence_wait) return;
    m_presence_asked = now;
    tag = m_tag;
  }
  (void)setup_step(tag, {m_prefix + "/server", 1, false, nullptr});
}

void MqttTransport::handshake_timed_out(const std::string& tag) {
  {
    const std::lock_guard lock(m_mutex);
    if (m_tag != tag || ++m_handshake_timeouts < 2) return;
    m_handshake_timeouts = 0;
  }
  (void)setup_step(tag, {m_prefix + "/c/" + tag + "/+", m_mqtt.qos, false, nullptr});
}

void MqttTransport::handshake_succeeded() {
  const std::lock_guard lock(m_mutex);
  m_handshake_timeouts = 0;
}

void MqttTransport::on_lost(const std::string& cause) {
  {
    const std::lock_guard lock(m_mutex);
    m_connected = false;
    m_presence = Presence::unknown;
    if (m_closing) return;
  }
  fail_all(Errc::peer_lost, "the connection to the MQTT broker at " + m_broker + " was lost" + (cause.empty() ? "" : ": " + cause));
  // After paho's clean-up of the lost connection (a connect during it goes unanswered).
  schedule(std::chrono::milliseconds(20), [this] { broker_connect(); });
}

void MqttTransport::fail_all(Errc errc, const std::string& what, const std::string& tag) {
  std::vector<std::shared_ptr<Connection>> conns;
  {
    const std::lock_guard lock(m_mutex);
    for (const auto& [key, c] : m_by_key) {
      if (tag.empty() || c->tag() == tag) conns.push_back(c);
    }
  }
  for (const auto& c : conns) c->lost(errc, what);
}

void MqttTransport::publish_presence() {
  std::string why;
  (void)publish(m_prefix + "/server", mqtt::binary_ref("ferry-server " + m_instance), true, why);
}

void MqttTransport::on_presence(const std::string& payload) {
  const bool present = payload.rfind("ferry-server ", 0) == 0;
  const bool gone = payload.rfind("ferry-gone ", 0) == 0;
  const std::string instance = payload.substr(payload.find(' ') == std::string::npos ? payload.size() : payload.find(' ') + 1);
  if (m_server) {
    if (m_announced) {
      // Anything on P/server but our own presence (a refused server's or our own old last
      // will, a forged or stale publish) is overwritten: we are the server here.
      if (payload != "ferry-server " + m_instance && m_connected) asio::post(io(), [this] { publish_presence(); });
    } else if (present && instance != m_instance && m_presence == Presence::unknown) {
      m_other_server = true;
    }
    m_presence = present ? Presence::present : Presence::absent;
    m_cv.notify_all();
    return;
  }
  const Presence before = m_presence;
  const std::string was = m_server_instance;
  if (present) {
    m_presence = Presence::present;
    m_server_instance = instance;
  } else if (!gone || before != Presence::present || instance == was) {
    // A "gone" counts only for the server we know (a refused second server's last will, or
    // a forged one, must not end our connections); before we know one, nothing is there.
    m_presence = Presence::absent;
    m_server_instance.clear();
  }
  m_cv.notify_all();
  if (before == Presence::present && (m_presence != Presence::present || m_server_instance != was)) {
    // The server went away (its last will or its clean close) or another instance took over:
    // its connections are gone. Posted: m_mutex is held here.
    const bool restarted = m_presence == Presence::present;
    asio::post(io(), [this, restarted] {
      fail_all(Errc::peer_lost, restarted ? "the server at " + m_local + " restarted"
                                          : "the server at " + m_local + " went away (its broker connection ended)");
    });
  }
}

void MqttTransport::on_message(const mqtt::const_message_ptr& m) {
  received.fetch_add(1, std::memory_order_relaxed);  // relaxed: statistics
  const std::string& topic = m->get_topic();
  if (topic.size() <= m_prefix.size() + 1 || topic.compare(0, m_prefix.size(), m_prefix) != 0 || topic[m_prefix.size()] != '/') return;
  const std::string_view rest = std::string_view(topic).substr(m_prefix.size() + 1);
  if (rest.rfind("wake/", 0) == 0) {
    // WakeRegistry: its arrival was the point. Our own presence probe (on_broker_connected)
    // comes after any retained presence would have: none came, so nobody serves the prefix.
    if (m->get_payload_str() == "presence-probe") {
      const std::lock_guard lock(m_mutex);
      if (m_presence == Presence::unknown) m_presence = Presence::absent;
      m_cv.notify_all();
    }
    return;
  }
  if (rest == "server") {
    const std::lock_guard lock(m_mutex);
    if (m_closing) return;
    on_presence(m->get_payload_str());
    return;
  }
  // Connections never use retained publishes: one (a replayed hello, say) is someone else's.
  if (m->is_retained()) return;
  // s/<tag>/<n> (server) or c/<tag>/<n> (client)
  const char dir = m_server ? 's' : 'c';
  if (rest.size() < 4 || rest[0] != dir || rest[1] != '/') return;
  const std::string_view key = rest.substr(2);
  const std::size_t slash = key.find('/');
  if (slash == std::string_view::npos) return;
  const std::string_view tag = key.substr(0, slash);
  const std::string_view n = key.substr(slash + 1);
  if (!is_hex(tag, 16)) return;
  if (m_server && n == "will") {
    PubHeader h;
    std::string why;
    if (decode_pub_header(bytes_of(m), h, why) != Errc{} || h.kind != Kind::gone) return;
    return fail_all(Errc::peer_lost, "the client's broker connection ended (its last will)", std::string(tag));
  }
  if (n.empty() || n.size() > 18 || !std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) return;
  std::shared_ptr<Connection> conn;
  {
    const std::lock_guard lock(m_mutex);
    if (m_closing) return;
    const auto it = m_by_key.find(std::string(key));
    if (it != m_by_key.end()) {
      conn = it->second;
    } else if (!m_server) {
      // A server side we gave up on (a handshake that timed out, a connection that failed)
      // still runs: tell it, as TCP's reset would, so it releases the session at once.
      PubHeader h;
      std::string why;
      if (tag != m_tag || decode_pub_header(bytes_of(m), h, why) != Errc{} || h.kind != Kind::data) return;
      std::string p(kPubHeaderSize + 4, '\0');
      PubHeader r;
      r.kind = Kind::reset;
      r.window_pubs = static_cast<std::uint32_t>(m_mqtt.window_publishes);
      r.window_bytes = m_mqtt.window_bytes;
      encode_pub_header(r, std::span<std::byte, kPubHeaderSize>(reinterpret_cast<std::byte*>(p.data()), kPubHeaderSize));
      put_le<std::uint32_t>(reinterpret_cast<std::byte*>(p.data()) + kPubHeaderSize, static_cast<std::uint32_t>(Errc::peer_lost));
      asio::post(io(), [this, topic = this->topic("s", std::string(key)), p = std::move(p)]() mutable {
        std::string ignored;
        (void)publish(topic, mqtt::binary_ref(std::move(p)), false, ignored);
      });
      return;
    } else {
      // A new client connection: its first publish (seq 1) must be a hello; anything else is
      // a stale connection's (ignored). Bounded: no more half-open connections than this.
      PubHeader h;
      std::string why;
      if (decode_pub_header(bytes_of(m), h, why) != Errc{} || h.kind != Kind::data || h.seq != 1) return;
      if (m_by_key.size() >= conn_limit()) return;
      conn = std::make_shared<Connection>(*this, Connection::Role::server, std::string(key), std::string(tag));
      m_by_key.emplace(std::string(key), conn);
      link_opened(conn);
      conn->start(nullptr);
    }
  }
  if (conn) conn->arrived(m);
}

void WakeRegistry::poke(const MqttTransport* self) {
  std::vector<MqttTransport*> live;
  {
    const std::lock_guard lock(m_mutex);
    live = m_live;
    ++m_poking;
  }
  for (MqttTransport* t : live) {
    if (t != self) t->wake();
  }
  const std::lock_guard lock(m_mutex);
  if (--m_poking == 0) m_idle.notify_all();
}

void MqttTransport::wake() {
  try {
    if (m_client->is_connected()) m_client->publish(m_wake_topic, "", 0, 0, false);
  } catch (const mqtt::exception&) {  // NOLINT(bugprone-empty-catch): a wake-up is only a hint
  }
}

void MqttTransport::forget(const std::string& key) {
  const std::lock_guard lock(m_mutex);
  m_by_key.erase(key);
}

MqttTransport::Sent MqttTransport::publish(const mqtt::string_ref& topic, const mqtt::binary_ref& payload, bool retained, std::string& why) {
  try {
    m_client->publish(topic, payload, retained ? 1 : m_mqtt.qos, retained);
    sent.fetch_add(1, std::memory_order_relaxed);  // relaxed: statistics
    return Sent::ok;
  } catch (const mqtt::exception& e) {
    const int rc = e.get_return_code();
    if (rc == MQTTASYNC_MAX_BUFFERED_MESSAGES || rc == MQTTASYNC_NO_MORE_MSGIDS || rc == MQTTASYNC_MAX_MESSAGES_INFLIGHT) {
      return Sent::busy;
    }
    why = e.what();
    return Sent::failed;
  }
}

void MqttTransport::connect(Done done) {
  std::optional<Failure> refused;
  {
    const std::lock_guard lock(m_mutex);
    if (m_closing) {
      refused = Failure{Errc::closed, "the communicator is closing"};
    } else if (!m_connected) {
      refused = Failure{Errc::peer_lost, "not connected to the MQTT broker at " + m_broker + " (reconnecting)"};
    } else if (m_presence == Presence::absent) {
      refused = Failure{Errc::not_found, "no Ferry server at " + m_local + " (no presence retained on " + m_prefix + "/server)"};
    } else if (m_presence == Presence::present) {
      const std::string key = m_tag + "/" + std::to_string(++m_next_link);
      auto conn = std::make_shared<Connection>(*this, Connection::Role::client, key, m_tag);
      m_by_key.emplace(key, conn);
      link_opened(conn);
      conn->start(std::move(done));
      return;
    }
  }
  if (refused) {
    // Absent: its retained presence may have been lost on the way; ask the broker again.
    if (refused->errc == Errc::not_found) recheck_presence();
    if (done) done(std::move(*refused));
    return;
  }
  // Just (re)connected: the server's retained presence is on its way; ask again after it.
  schedule(m_mqtt.presence_wait / 4 + std::chrono::milliseconds(1), [this, done = std::move(done)]() mutable { connect(std::move(done)); });
}

void MqttTransport::stop() {
  bool was_server_up = false;
  {
    const std::lock_guard lock(m_mutex);
    if (m_stopped) return;
    m_stopped = true;
    was_server_up = m_server && m_connected && m_announced;
    m_closing = true;
  }
  m_cv.notify_all();
  AsioTransport::stop();  // aborts every connection and joins the I/O threads
  WakeRegistry::get().remove(this);
  if (!m_client) return;
  // Each wait pokes paho's receive thread (WakeRegistry): another client in this process may
  // hold it in a 1 s poll.
  const auto settle = [this](const mqtt::token_ptr& t) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(1000);
    while (!t->wait_for(std::chrono::milliseconds(5)) && Clock::now() < deadline) WakeRegistry::get().poke(this);
  };
  try {
    if (was_server_up) {  // clients learn at once that we are gone
      settle(m_client->publish(m_prefix + "/server", "ferry-gone " + m_instance, 1, true));
    }
    if (!m_server && m_client->is_connected()) {
      // What the last will would say, which a clean DISCONNECT suppresses: a connection whose
      // close did not complete ends on the server now, not at its keep-alive timeout.
      std::string tag;
      {
        const std::lock_guard lock(m_mutex);
        tag = m_tag;
      }
      std::string gone(kPubHeaderSize, '\0');
      PubHeader h;
      h.kind = Kind::gone;
      encode_pub_header(h, std::span<std::byte, kPubHeaderSize>(reinterpret_cast<std::byte*>(gone.data()), kPubHeaderSize));
      settle(m_client->publish(m_prefix + "/s/" + tag + "/will", gone.data(), gone.size(), 1, false));
    }
    // A clean DISCONNECT (no last will). Everything Ferry sent was acknowledged before close()
    // got here, so nothing queued needs paho's grace period (which it waits out in full).
    if (m_client->is_connected()) settle(m_client->disconnect(0));
  } catch (const mqtt::exception&) {  // NOLINT(bugprone-empty-catch): the broker is gone: nothing to tell it
  }
  {
    const std::lock_guard lock(m_mutex);
    m_by_key.clear();
  }
}

}  // namespace

std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner, const Endpoint& endpoint) {
  return std::make_unique<MqttTransport>(owner, endpoint);
}

}  // namespace ferry::detail::mqtt_link
