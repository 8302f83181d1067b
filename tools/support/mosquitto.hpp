// SPDX-License-Identifier: Apache-2.0
// MosquittoBroker: a Mosquitto 2 broker in its own process for the MQTT tests and benchmarks,
// with its configuration written into a fresh temporary directory, listeners on 127.0.0.1 at
// free ports, stopped by pid.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include "support/tls_certs.hpp"

namespace ferry::testing {

class MosquittoBroker {
 public:
  struct Config {
    /// Mosquitto 2 queues 1000 QoS 1 messages per client by default and drops the rest.
    std::size_t max_queued_messages = 100000;
    /// Also a TLS listener (certificates generated now, TlsCerts) and an authenticated one.
    bool tls = true;
    bool auth = true;
  };

  /// Starts the broker and waits until every listener accepts connections (throws
  /// std::runtime_error with the broker's log if it does not within 10 s).
  explicit MosquittoBroker(Config config);
  MosquittoBroker() : MosquittoBroker(Config{}) {}
  /// SIGTERM, then SIGKILL after 2 s; removes the directory.
  ~MosquittoBroker();
  MosquittoBroker(const MosquittoBroker&) = delete;
  MosquittoBroker& operator=(const MosquittoBroker&) = delete;

  /// Anonymous plain MQTT.
  [[nodiscard]] std::uint16_t port() const noexcept { return m_port; }
  /// TLS (the server certificate names localhost and 127.0.0.1; certs()->ca() verifies it).
  [[nodiscard]] std::uint16_t tls_port() const noexcept { return m_tls_port; }
  /// Plain MQTT with user() / password() only.
  [[nodiscard]] std::uint16_t auth_port() const noexcept { return m_auth_port; }
  [[nodiscard]] static std::string user() { return "ferry"; }
  [[nodiscard]] static std::string password() { return "ferry-test-secret"; }
  [[nodiscard]] const TlsCerts* certs() const noexcept { return m_certs.get(); }
  [[nodiscard]] pid_t pid() const noexcept { return m_pid; }
  [[nodiscard]] std::string log() const;

  /// SIGKILL: the broker is gone at once (a broker crash). restart() brings it back.
  void kill();
  /// Starts it again with the same configuration and ports; waits as the constructor does.
  void restart();

 private:
  void write_config() const;
  void start();
  void stop(bool graceful) noexcept;

  Config m_config;
  std::filesystem::path m_dir;
  std::unique_ptr<TlsCerts> m_certs;
  std::uint16_t m_port = 0;
  std::uint16_t m_tls_port = 0;
  std::uint16_t m_auth_port = 0;
  pid_t m_pid = -1;
};

}  // namespace ferry::testing
