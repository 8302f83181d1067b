// SPDX-License-Identifier: Apache-2.0
// MqttDropProxy: a loopback forwarder between MQTT clients and a broker that understands MQTT
// packet boundaries on the client-to-broker side, so a test can make a PUBLISH vanish in
// between without breaking the stream (the MQTT analogue of a lost datagram). Test support.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ferry::testing {

class MqttDropProxy {
 public:
  /// Listens on 127.0.0.1 (a free port) and forwards each connection to 127.0.0.1:broker_port.
  explicit MqttDropProxy(std::uint16_t broker_port);
  /// Closes every connection and joins the threads.
  ~MqttDropProxy();
  MqttDropProxy(const MqttDropProxy&) = delete;
  MqttDropProxy& operator=(const MqttDropProxy&) = delete;

  [[nodiscard]] std::uint16_t port() const noexcept { return m_port; }
  /// The next `count` client-to-broker QoS 0 PUBLISH packets whose topic contains `part`
  /// (and whose payload starts with `first_byte`, when not negative) are discarded. QoS 0
  /// only: a QoS 1 publish would leave the broker waiting for its packet id.
  void drop_next(const std::string& part, int count = 1, int first_byte = -1);
  /// PUBLISH packets dropped so far.
  [[nodiscard]] int dropped() const noexcept { return m_dropped.load(); }

 private:
  void accept_loop();
  void client_to_broker(int from, int to);
  static void broker_to_client(int from, int to);
  bool should_drop(const std::string& topic, int first_byte);

  int m_listen = -1;
  std::uint16_t m_broker_port;
  std::uint16_t m_port = 0;
  std::atomic<bool> m_stop{false};
  std::mutex m_mutex;
  std::string m_part;
  int m_to_drop = 0;
  int m_first_byte = -1;
  std::atomic<int> m_dropped{0};
  std::vector<int> m_fds;
  std::vector<std::thread> m_threads;
  std::thread m_acceptor;
};

}  // namespace ferry::testing
