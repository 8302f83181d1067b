// SPDX-License-Identifier: Apache-2.0
// The auto:// server (a TCP and a shared-memory transport side by side) and client (a probe,
// then one of the two). Layer: src/transport/auto.
#include "transport/auto/auto_transport.hpp"

#include "transport/shm/shm_transport.hpp"
#include "transport/tcp/tcp_transport.hpp"

namespace ferry::detail::automatic {
namespace {

/// The server's shm name for its TCP port: "auto-<host>-<port>" with what a name may not hold
/// replaced.
std::string shm_name(const Endpoint& tcp) {
  std::string name = "auto-" + tcp.host + "-" + std::to_string(tcp.port);
  for (char& c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
    if (!ok) c = '_';
  }
  return name;
}

class AutoServer final : public Transport {
 public:
  explicit AutoServer(CommunicatorImpl& owner) {
    Endpoint tcp_endpoint = owner.endpoint();
    tcp_endpoint.scheme = Scheme::tcp;
    m_tcp = tcp::make_transport(owner, tcp_endpoint);
    const Endpoint bound = Endpoint::parse(m_tcp->local_endpoint());
    Endpoint shm_endpoint;
    shm_endpoint.scheme = Scheme::shm;
    shm_endpoint.path = shm_name(bound);
    try {
      m_shm = shm_link::make_transport(owner, shm_endpoint);
      m_tcp->advertise_shm(shm_link::listening_path(*m_shm).string());
    } catch (const Error&) {
      m_shm.reset();  // no shared memory here (an unusable directory, say): TCP serves everyone
    }
    Endpoint local = bound;
    local.scheme = Scheme::automatic;
    m_local = local.to_string();
  }
  ~AutoServer() override { stop(); }

  std::string local_endpoint() const override { return m_local; }
  void schedule(std::chrono::milliseconds delay, std::function<void()> fn) override {
    m_tcp->schedule(delay, std::move(fn));
  }
  void stop() override {
    if (m_shm) m_shm->stop();
    m_tcp->stop();
  }
  void cut_links() override {
    if (m_shm) m_shm->cut_links();
    m_tcp->cut_links();
  }
  bool reads_on_caller() const override { return m_shm != nullptr; }
  std::chrono::microseconds poll_spin() const override {
    return m_shm ? m_shm->poll_spin() : std::chrono::microseconds::zero();
  }

 private:
  std::unique_ptr<AsioTransport> m_tcp;
  std::unique_ptr<AsioTransport> m_shm;
  std::string m_local;
};

/// Why the client does not use shared memory with this server, or "" when it may.
std::string why_not_local(const framing::Locality& server, const framing::Locality& me) {
  if (server.shm_path.empty()) return "the server offers no shared memory";
  if (me.boot_id == std::array<std::uint8_t, 16>{} || server.boot_id != me.boot_id) {
    return "the server runs on another host (its boot id differs)";
  }
  if (server.ipc_namespace != me.ipc_namespace) return "the server runs in another IPC namespace";
  return {};
}

std::unique_ptr<Transport> make_client(CommunicatorImpl& owner) {
  Endpoint tcp_endpoint = owner.endpoint();
  tcp_endpoint.scheme = Scheme::tcp;
  std::string why;
  PeerId server_id;
  const std::optional<framing::Locality> server = tcp::probe(owner, tcp_endpoint, server_id, why);
  if (server) {
    why = why_not_local(*server, local_locality());
    if (why.empty()) {
      Endpoint shm_endpoint;
      shm_endpoint.scheme = Scheme::shm;
      shm_endpoint.path = std::filesystem::path(server->shm_path).stem().string();
      try {
        return shm_link::make_transport(owner, shm_endpoint, server->shm_path,
                                        "auto: same host and IPC namespace; ", false, server_id);
      } catch (const Error& e) {
        why = std::string("shared memory failed: ") + e.what();
      }
    }
  } else {
    why = "no locality probe: " + why;
  }
  return tcp::make_transport(owner, tcp_endpoint, "auto: stayed on tcp: " + why);
}

}  // namespace

std::unique_ptr<Transport> make_transport(CommunicatorImpl& owner) {
  if (owner.purpose() == Purpose::server) return std::make_unique<AutoServer>(owner);
  return make_client(owner);
}

}  // namespace ferry::detail::automatic
