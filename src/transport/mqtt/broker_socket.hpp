// SPDX-License-Identifier: Apache-2.0
// Tuning of paho's broker sockets, which paho does not expose: it never sets TCP_NODELAY, so
// every small publish after another waits for the broker's delayed ACK (a QoS 1 round trip of
// ~88 ms on loopback instead of ~0.25 ms). After each connection we find the process's TCP
// sockets connected to the broker's address and port and set it on them. Header-only: the
// mqtt:// transport and the plain-paho baseline (benchmarks/paho_baseline.cpp) share it.
// Layer: src/transport/mqtt.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace ferry::mqtt_socket {

/// The addresses `host` resolves to (TCP), with `port`.
inline std::vector<sockaddr_storage> resolve(const std::string& host, std::uint16_t port) {
  std::vector<sockaddr_storage> out;
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (::getaddrinfo(host.c_str(), service.c_str(), &hints, &res) != 0) return out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    sockaddr_storage s{};
    std::memcpy(&s, a->ai_addr, a->ai_addrlen);
    out.push_back(s);
  }
  ::freeaddrinfo(res);
  return out;
}

inline bool same_address(const sockaddr_storage& a, const sockaddr_storage& b) {
  if (a.ss_family != b.ss_family) return false;
  if (a.ss_family == AF_INET) {
    const auto& x = reinterpret_cast<const sockaddr_in&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in&>(b);
    return x.sin_port == y.sin_port && x.sin_addr.s_addr == y.sin_addr.s_addr;
  }
  if (a.ss_family == AF_INET6) {
    const auto& x = reinterpret_cast<const sockaddr_in6&>(a);
    const auto& y = reinterpret_cast<const sockaddr_in6&>(b);
    return x.sin6_port == y.sin6_port && std::memcmp(&x.sin6_addr, &y.sin6_addr, sizeof x.sin6_addr) == 0;
  }
  return false;
}

/// Sets TCP_NODELAY (and SO_SNDBUF to sndbuf bytes when not 0) on every TCP socket of this
/// process connected to one of `broker`; returns how many it found. Harmless on a socket that
/// has it already (or on another client's connection to the same broker, which wants it too).
inline int tune(const std::vector<sockaddr_storage>& broker, int sndbuf = 0) {
  int found = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return 0;
  const int dir_fd = ::dirfd(dir);
  while (const dirent* e = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || fd == dir_fd) continue;
    struct stat st {};
    if (::fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(static_cast<int>(fd), SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) continue;
    sockaddr_storage peer{};
    socklen_t plen = sizeof peer;
    if (::getpeername(static_cast<int>(fd), reinterpret_cast<sockaddr*>(&peer), &plen) != 0) continue;
    for (const auto& b : broker) {
      if (!same_address(peer, b)) continue;
      const int one = 1;
      if (::setsockopt(static_cast<int>(fd), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0) ++found;
      if (sndbuf > 0) (void)::setsockopt(static_cast<int>(fd), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
      break;
    }
  }
  ::closedir(dir);
  return found;
}

}  // namespace ferry::mqtt_socket
