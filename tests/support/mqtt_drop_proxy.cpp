// SPDX-License-Identifier: Apache-2.0
// MqttDropProxy: blocking sockets, two threads per connection. Client to broker, it reads one
// MQTT packet at a time (fixed header, remaining length, body) and forwards it whole, unless
// it is a QoS 0 PUBLISH to drop; broker to client, it copies bytes as they come.
#include "support/mqtt_drop_proxy.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace ferry::testing {
namespace {

bool read_all(int fd, void* p, std::size_t n) {
  auto* b = static_cast<char*>(p);
  while (n > 0) {
    const ssize_t r = ::recv(fd, b, n, 0);
    if (r <= 0) return false;
    b += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

bool write_all(int fd, const void* p, std::size_t n) {
  const auto* b = static_cast<const char*>(p);
  while (n > 0) {
    const ssize_t r = ::send(fd, b, n, MSG_NOSIGNAL);
    if (r <= 0) return false;
    b += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

MqttDropProxy::MqttDropProxy(std::uint16_t broker_port) : m_broker_port(broker_port) {
  m_listen = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(m_listen, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(m_listen, 16) != 0 ||
      ::getsockname(m_listen, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    throw std::runtime_error(std::string("MqttDropProxy: listen: ") + std::strerror(errno));
  }
  m_port = ntohs(a.sin_port);
  m_acceptor = std::thread([this] { accept_loop(); });
}

MqttDropProxy::~MqttDropProxy() {
  m_stop = true;
  ::shutdown(m_listen, SHUT_RDWR);
  {
    const std::lock_guard lock(m_mutex);
    for (const int fd : m_fds) ::shutdown(fd, SHUT_RDWR);
  }
  m_acceptor.join();
  for (auto& t : m_threads) t.join();
  for (const int fd : m_fds) ::close(fd);
  ::close(m_listen);
}

void MqttDropProxy::drop_next(const std::string& part, int count, int first_byte) {
  const std::lock_guard lock(m_mutex);
  m_part = part;
  m_to_drop = count;
  m_first_byte = first_byte;
}

bool MqttDropProxy::should_drop(const std::string& topic, int first_byte) {
  const std::lock_guard lock(m_mutex);
  if (m_to_drop <= 0 || topic.find(m_part) == std::string::npos) return false;
  if (m_first_byte >= 0 && first_byte != m_first_byte) return false;
  --m_to_drop;
  ++m_dropped;
  return true;
}

void MqttDropProxy::accept_loop() {
  while (!m_stop) {
    pollfd p{m_listen, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int client = ::accept(m_listen, nullptr, nullptr);
    if (client < 0) continue;
    const int broker = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(m_broker_port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(broker, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(client);
      ::close(broker);
      continue;
    }
    nodelay(client);
    nodelay(broker);
    const std::lock_guard lock(m_mutex);
    m_fds.push_back(client);
    m_fds.push_back(broker);
    m_threads.emplace_back([this, client, broker] { client_to_broker(client, broker); });
    m_threads.emplace_back([client, broker] { broker_to_client(broker, client); });
  }
}

void MqttDropProxy::client_to_broker(int from, int to) {
  std::vector<char> packet;
  for (;;) {
    unsigned char first = 0;
    if (!read_all(from, &first, 1)) break;
    // Remaining length: up to four 7-bit groups, least significant first.
    std::uint32_t remaining = 0;
    std::vector<char> header{static_cast<char>(first)};
    bool ok = true;
    for (int i = 0; i < 4; ++i) {
      unsigned char b = 0;
      if (!read_all(from, &b, 1)) {
        ok = false;
        break;
      }
      header.push_back(static_cast<char>(b));
      remaining |= static_cast<std::uint32_t>(b & 0x7f) << (7 * i);
      if ((b & 0x80) == 0) break;
    }
    if (!ok) break;
    packet.resize(remaining);
    if (remaining > 0 && !read_all(from, packet.data(), remaining)) break;
    const bool publish_qos0 = (first >> 4) == 3 && ((first >> 1) & 3) == 0;
    if (publish_qos0 && remaining >= 2) {
      const std::size_t topic_len = (static_cast<unsigned char>(packet[0]) << 8) | static_cast<unsigned char>(packet[1]);
      const int first_byte = 2 + topic_len < remaining ? static_cast<unsigned char>(packet[2 + topic_len]) : -1;
      if (2 + topic_len <= remaining && should_drop(std::string(packet.data() + 2, topic_len), first_byte)) continue;
    }
    if (!write_all(to, header.data(), header.size()) || !write_all(to, packet.data(), packet.size())) break;
  }
  ::shutdown(to, SHUT_RDWR);
  ::shutdown(from, SHUT_RDWR);
}

void MqttDropProxy::broker_to_client(int from, int to) {
  char buf[65536];
  for (;;) {
    const ssize_t r = ::recv(from, buf, sizeof buf, 0);
    if (r <= 0 || !write_all(to, buf, static_cast<std::size_t>(r))) break;
  }
  ::shutdown(to, SHUT_RDWR);
  ::shutdown(from, SHUT_RDWR);
}

}  // namespace ferry::testing
