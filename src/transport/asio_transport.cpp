// SPDX-License-Identifier: Apache-2.0
// AsioTransport: event loop, connection set, connecting, reconnecting, stop. Layer: src/transport.
#include "transport/asio_transport.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <future>

namespace ferry::detail {

namespace asio = boost::asio;
using boost::system::error_code;

AsioTransport::AsioTransport(CommunicatorImpl& owner) : m_owner(owner), m_work(asio::make_work_guard(m_io)) {}

AsioTransport::~AsioTransport() { stop(); }

void AsioTransport::start_threads() {
  for (unsigned i = 0; i < m_owner.options().workers; ++i) {
    m_threads.emplace_back([this] { run_loop(); });
  }
}

void AsioTransport::run_loop(bool poll_only) noexcept {
  for (;;) {
    try {
      if (poll_only) {
        m_io.poll();
      } else {
        m_io.run();
      }
      return;
    } catch (...) {  // NOLINT(bugprone-empty-catch): see the declaration; run() resumes the loop
    }
  }
}

std::string AsioTransport::refusal(const framing::Hello& reply) const {
  const Errc e = static_cast<Errc>(reply.status);
  if (e == Errc::address_in_use) return "peer id " + m_owner.options().id.to_string() + " already has a live connection";
  if (e == Errc::unavailable) return "server at its connection limit or out of resources";
  if (e == Errc::version_mismatch) return "server speaks protocol version " + std::to_string(reply.version);
  if (e == Errc::permission_denied) return "this user is not allowed to connect";
  if (e == Errc::peer_lost) return "our handshake reached it damaged";
  return make_error_code(e).message();
}

Errc reply_error(const CommunicatorImpl& owner, Errc decoded, std::span<const std::byte> bytes, const framing::Hello& reply,
                 std::string& why) {
  if (!owner.options().connection.checksums || framing::hello_checks_out(bytes)) return decoded;
  if (decoded == Errc::protocol_error || (decoded == Errc::version_mismatch && reply.version == 1)) {
    why += " (taken for damage on the way: checksums are on)";
    return Errc::peer_lost;
  }
  return decoded;
}

std::optional<Failure> AsioTransport::attach_reply(const framing::Hello& reply, const std::shared_ptr<Link>& link,
                                                   const std::string& remote, std::shared_ptr<Session>& session,
                                                   std::uint64_t& next_expected) {
  if (reply.status != 0) {
    // A server of our own version that says we speak another read a hello of ours that lost
    // bytes on the way as version 1's (with checksums: damage; we connect again).
    const bool damaged = reply.status == static_cast<std::uint32_t>(Errc::version_mismatch) &&
                         reply.version == framing::kProtocolVersion && conn().checksums;
    return Failure{damaged ? Errc::peer_lost : static_cast<Errc>(reply.status),
                   "server " + remote + " refused the connection: " + refusal(reply) +
                       (damaged ? " (our hello reached it damaged: checksums are on)" : "")};
  }
  std::string why;
  const Errc e = m_owner.attach_server(reply, link, session, next_expected, why);
  if (e != Errc{}) {
    session.reset();
    return Failure{e, "handshake with " + remote + ": " + why};
  }
  return std::nullopt;
}

Errc answer_hello(CommunicatorImpl& owner, const framing::Hello& hello, Errc decoded, const char* scheme,
                  const std::shared_ptr<Link>& link, framing::Hello& reply, std::shared_ptr<Session>& session,
                  std::uint64_t& next_expected, std::string& why) {
  Errc e = decoded;
  if (e == Errc{} && (hello.flags & framing::kHelloProbe) != 0) {
    e = Errc::unavailable;
    why = std::string("auto:// probes are answered over tcp://, not ") + scheme + "://";
  }
  if (e == Errc{}) {
    e = owner.accept_client(hello, link, reply, session, next_expected, why);
  } else {
    reply.id = owner.options().id;
    reply.max_chunk = owner.max_chunk();
    reply.max_message = owner.options().connection.message_size;
  }
  if (e != Errc{}) {
    session.reset();
    reply.status = static_cast<std::uint32_t>(e);
    reply.flags = 0;
  }
  return e;
}

framing::Locality local_locality() {
  framing::Locality l;
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string text;
  if (f >> text) {
    try {
      const PeerId id = PeerId::parse(text);  // the boot id is a UUID in text form
      std::memcpy(l.boot_id.data(), id.bytes.data(), 16);
    } catch (...) {  // NOLINT(bugprone-empty-catch): unreadable: zero, which matches no server
    }
  }
  struct stat st {};
  if (::stat("/proc/self/ns/ipc", &st) == 0) l.ipc_namespace = st.st_ino;
  l.uid = ::geteuid();
  return l;
}

void AsioTransport::advertise_shm(std::string path) {
  const std::lock_guard lock(m_advertise_mutex);
  m_advertised_shm = std::move(path);
}

framing::Locality AsioTransport::locality() const {
  framing::Locality l = local_locality();
  const std::lock_guard lock(m_advertise_mutex);
  l.shm_path = m_advertised_shm;
  return l;
}

void AsioTransport::link_opened(const std::shared_ptr<AsioLink>& link) {
  const std::lock_guard lock(m_links_mutex);
  m_links.insert(link);
}

void AsioTransport::connect_first() {
  const auto deadline = Clock::now() + conn().connect_timeout;
  auto delay = std::chrono::milliseconds(10);
  for (;;) {
    auto promise = std::make_shared<std::promise<std::optional<Failure>>>();
    auto future = promise->get_future();
    connect([promise](std::optional<Failure> f) { promise->set_value(std::move(f)); });
    std::optional<Failure> f = future.get();  // bounded: connect and handshake have timers
    if (!f) return;
    // Refused or reset while the server starts: retry until the deadline; anything the server
    // said on purpose is final. With checksums (a wire that loses and alters bytes) an id
    // "already live" is retried too: the server may have accepted an attempt whose reply was
    // damaged, and sees that connection end in a moment.
    const bool retry = f->errc == Errc::not_found || f->errc == Errc::peer_lost || f->errc == Errc::timed_out ||
                       (f->errc == Errc::address_in_use && conn().checksums);
    if (!retry || !m_retry_connect || Clock::now() + delay >= deadline) throw Error(f->errc, f->what);
    std::this_thread::sleep_for(delay);
    delay = std::min(delay * 2, std::chrono::milliseconds(500));
  }
}

void AsioTransport::reconnect_later(std::chrono::milliseconds delay) {
  if (stopping()) return;
  auto t = std::make_shared<asio::steady_timer>(m_io, delay);
  t->async_wait([this, t, delay](const error_code& ec) {
    if (ec || stopping() || !m_owner.wants_reconnect()) return;
    connect([this, delay](std::optional<Failure> f) {
      if (!f || stopping() || !m_owner.wants_reconnect()) return;
      // An id refused as "already live" or a refused connection: the old connection may not be
      // seen dead yet on the other side; keep trying until the session's resume timeout.
      const bool retry = f->errc == Errc::not_found || f->errc == Errc::peer_lost || f->errc == Errc::timed_out ||
                         f->errc == Errc::address_in_use || f->errc == Errc::unavailable;
      if (!retry) return m_owner.reconnect_failed(make_error_code(f->errc));
      reconnect_later(std::min(delay * 2, std::chrono::milliseconds(500)));
    });
  });
}

void AsioTransport::link_ended(const std::shared_ptr<AsioLink>& link, bool was_running) {
  {
    const std::lock_guard lock(m_links_mutex);
    m_links.erase(link);
  }
  if (was_running && m_owner.purpose() == Purpose::client && !stopping() && m_owner.wants_reconnect()) {
    reconnect_later(std::chrono::milliseconds(10));
  }
}

void AsioTransport::schedule(std::chrono::milliseconds delay, std::function<void()> fn) {
  if (stopping()) return;
  auto t = std::make_shared<asio::steady_timer>(m_io, delay);
  t->async_wait([this, t, fn = std::move(fn)](const error_code& ec) {
    if (!ec && !stopping()) fn();
  });
}

void AsioTransport::cut_links() {
  std::set<std::shared_ptr<AsioLink>> links;
  {
    const std::lock_guard lock(m_links_mutex);
    links = m_links;
  }
  for (const auto& c : links) c->cut();
}

void AsioTransport::stop() {
  const std::lock_guard stop_lock(m_stop_mutex);
  if (m_stopped) return;
  m_stopped = true;
  // relaxed: the threads are joined below, which orders everything after it.
  m_stopping.store(true, std::memory_order_relaxed);
  stop_accepting();
  std::set<std::shared_ptr<AsioLink>> links;
  {
    const std::lock_guard lock(m_links_mutex);
    links.swap(m_links);
  }
  for (const auto& c : links) c->abort();
  m_work.reset();
  // Let the aborts and their cancelled handlers run, then stop whatever timers remain.
  asio::post(m_io, [this] { m_io.stop(); });
  for (auto& t : m_threads) {
    if (t.joinable()) t.join();
  }
  m_threads.clear();
  // Run what the stop left ready (aborts, cancelled writes), so every write in flight is
  // answered and the puts it carried fail now rather than when the transport is destroyed.
  m_io.restart();
  run_loop(true);
}

}  // namespace ferry::detail
