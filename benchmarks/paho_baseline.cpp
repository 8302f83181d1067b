// SPDX-License-Identifier: Apache-2.0
// ferry-paho-baseline: plain paho.mqtt.cpp publishing and subscribing through a broker (no
// Ferry code beyond the shared socket tuning), that Ferry's mqtt:// transport is measured
// against. Two processes, with ferry-asio-baseline's command line and JSON so `ferry-bench
// comm --impl ferry,paho` drives both alike; --port is the broker's (both sides connect to it).
//
// Streaming: the client publishes messages back to back on <topic>/data, keeping at most
// --window publishes whose delivery has not completed, then an empty end marker; the server
// counts what arrives from the first message to the marker. Ping-pong: the server echoes each
// message from <topic>/ping on <topic>/pong; the client times each round trip.
//
// The three paho pitfalls, each with a switch to measure it:
//   --max-buffered N  paho refuses a publish once N are queued unsent (paho's default is 100;
//                     here it is --window + 16 unless given);
//   --nagle           leave Nagle on (paho never sets TCP_NODELAY; by default we set it on the
//                     broker sockets, as the transport does: src/transport/mqtt/broker_socket.hpp);
//   --max-publish B   split each message into publishes of at most B bytes (0: one publish per
//   --window-bytes B  message), and keep at most B bytes of publishes open. paho 1.3 finishes a
//                     publish larger than the free socket send buffer only when its receive
//                     thread's poll ends (1 s) unless something arrives: the defaults keep what
//                     is open within the buffer.
// Layer: benchmarks/.
#include <mqtt/async_client.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "transport/mqtt/broker_socket.hpp"

#include "baseline_support.hpp"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Args {
  int port = 1883;
  std::string host = "127.0.0.1";
  std::string cert_dir;
  bool tls = false;
  bool pingpong = false;
  bool json_out = false;
  int timeout_s = 30;
  std::string size_text = "64";
  double seconds = 2;
  std::size_t batch = 1;  // accepted for ferry-asio-baseline's command line
  std::uint64_t count = 2'000;
  std::uint64_t warmup = 200;
  std::string topic = "ferry-paho-baseline";
  int qos = 1;
  int window = 512;
  std::size_t window_bytes = std::size_t{1} << 20;
  int max_buffered = 0;
  bool nagle = false;
  std::size_t max_publish = std::size_t{512} << 10;
  int sndbuf = 0;
};


using ferry::baseline::parse_size;

/// Every wait below is unbounded: the watchdog ends a process that stopped moving.
struct Watchdog : ferry::baseline::Watchdog {
  explicit Watchdog(int seconds) : ferry::baseline::Watchdog("ferry-paho-baseline", seconds) {}
};

std::unique_ptr<mqtt::async_client> make_client(const Args& a, const std::string& role) {
  const std::string uri = (a.tls ? "ssl://" : "tcp://") + a.host + ":" + std::to_string(a.port);
  mqtt::create_options co(MQTTVERSION_3_1_1);
  co.set_max_buffered_messages(a.max_buffered > 0 ? a.max_buffered : a.window + 16);
  return std::make_unique<mqtt::async_client>(uri, a.topic + "-" + role, co);
}

void connect(const Args& a, mqtt::async_client& c) {
  auto b = mqtt::connect_options_builder().clean_session(true).keep_alive_interval(std::chrono::seconds(30));
  if (a.tls) b.ssl(mqtt::ssl_options_builder().trust_store(a.cert_dir + "/ca.pem").finalize());
  auto o = b.finalize();
  o.set_max_inflight(65535);
  c.connect(o)->wait();
  if (!a.nagle) ferry::mqtt_socket::tune(ferry::mqtt_socket::resolve(a.host, static_cast<std::uint16_t>(a.port)), a.sndbuf);
}

/// The publishes whose delivery has not completed (QoS 1: the broker's PUBACK; QoS 0: written
/// to the socket), at most `limit` of them and `bytes` bytes: publish() first waits for the
/// oldest.
class Window {
 public:
  Window(int limit, std::size_t bytes) : m_limit(static_cast<std::size_t>(std::max(limit, 1))), m_bytes(bytes) {}
  void publish(mqtt::async_client& c, const std::string& topic, const void* data, std::size_t n, int qos) {
    while (!m_open.empty() && (m_open.size() >= m_limit || m_open_bytes + n > m_bytes)) {
      m_open.front().first->wait();
      m_open_bytes -= m_open.front().second;
      m_open.pop_front();
    }
    m_open.emplace_back(c.publish(topic, data, n, qos, false), n);
    m_open_bytes += n;
  }
  void drain() {
    for (auto& t : m_open) t.first->wait();
    m_open.clear();
    m_open_bytes = 0;
  }

 private:
  std::size_t m_limit;
  std::size_t m_bytes;
  std::size_t m_open_bytes = 0;
  std::deque<std::pair<mqtt::delivery_token_ptr, std::size_t>> m_open;
};

// ---- server --------------------------------------------------------------------------------

int run_server(const Args& a) {
  Watchdog dog(a.timeout_s);
  auto c = make_client(a, "server");
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
  std::size_t partial = 0;  // bytes of the message being received in pieces
  Clock::time_point first{};
  Clock::time_point last{};
  c->set_message_callback([&](mqtt::const_message_ptr msg) {
    dog.moved();
    const std::size_t n = msg->get_payload_ref().size();
    if (a.pingpong && n > 0) {
      c->publish(a.topic + "/pong", msg->get_payload_ref().data(), n, a.qos, false);
      return;
    }
    const std::lock_guard lock(m);
    if (n == 0) {  // the client's end marker
      last = Clock::now();
      done = true;
      cv.notify_all();
      return;
    }
    if (messages == 0 && partial == 0) first = Clock::now();
    partial += n;
    // A message arrives in one publish, or in pieces of --max-publish that the client sends
    // in order: its first byte says whether more pieces follow.
    if (msg->get_payload_ref()[0] == 'M') return;
    bytes += partial;
    partial = 0;
    ++messages;
  });
  connect(a, *c);
  c->subscribe(a.topic + (a.pingpong ? "/ping" : "/data"), a.qos)->wait();
  std::cout << "listening " << a.port << std::endl;
  {
    std::unique_lock lock(m);
    cv.wait(lock, [&] { return done; });
  }
  c->disconnect()->wait();
  const double s = std::chrono::duration<double>(last - first).count();
  json r{{"messages", messages}, {"seconds", s}};
  if (!a.pingpong && s > 0) {
    r["msgs_per_s"] = static_cast<double>(messages) / s;
    r["bytes_per_s"] = static_cast<double>(bytes) / s;
    r["gbit_per_s"] = static_cast<double>(bytes) * 8 / s / 1e9;
  }
  if (a.json_out) std::cout << r.dump() << std::endl;
  return 0;
}

// ---- client --------------------------------------------------------------------------------

int run_client(const Args& a) {
  Watchdog dog(a.timeout_s);
  const std::size_t size = parse_size(a.size_text);
  auto c = make_client(a, "client");
  Window window(a.window, a.window_bytes);
  std::mutex m;
  std::condition_variable cv;
  std::uint64_t pongs = 0;
  c->set_message_callback([&](mqtt::const_message_ptr) {
    dog.moved();
    const std::lock_guard lock(m);
    ++pongs;
    cv.notify_all();
  });
  connect(a, *c);
  std::string payload(size, 'x');
  json r;
  if (a.pingpong) {
    c->subscribe(a.topic + "/pong", a.qos)->wait();
    std::vector<std::int64_t> rtt;
    rtt.reserve(a.count);
    for (std::uint64_t i = 0; i < a.warmup + a.count; ++i) {
      const auto t0 = Clock::now();
      c->publish(a.topic + "/ping", payload.data(), payload.size(), a.qos, false);
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return pongs == i + 1; });
      if (i >= a.warmup) rtt.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    }
    c->publish(a.topic + "/ping", "", 0, a.qos, false)->wait();
    r = ferry::baseline::latency_json(rtt);
  } else {
    const std::size_t piece = a.max_publish == 0 ? size : std::min(a.max_publish, size);
    const auto start = Clock::now();
    const auto end = start + std::chrono::duration<double>(a.seconds);
    std::uint64_t sent = 0;
    while (Clock::now() < end) {
      for (std::size_t off = 0; off < size; off += piece) {
        const std::size_t n = std::min(piece, size - off);
        payload[off] = off + n < size ? 'M' : 'L';
        window.publish(*c, a.topic + "/data", payload.data() + off, n, a.qos);
      }
      ++sent;
      dog.moved();
    }
    window.publish(*c, a.topic + "/data", "", 0, a.qos);
    window.drain();
    r = json{{"messages", sent}, {"seconds", std::chrono::duration<double>(Clock::now() - start).count()}};
  }
  c->disconnect()->wait();
  if (a.json_out) std::cout << r.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  CLI::App app("ferry-paho-baseline: plain paho publish/subscribe through a broker");
  app.require_subcommand(1);
  auto* server_cmd = app.add_subcommand("server", "subscribe and count (or echo), then print the result");
  auto* client_cmd = app.add_subcommand("client", "publish to the server");
  for (auto* cmd : {server_cmd, client_cmd}) {
    cmd->add_option("--port", a.port, "the broker's TCP port")->required();
    cmd->add_option("--host", a.host, "the broker's address")->capture_default_str();
    auto* cert_dir = cmd->add_option("--cert-dir", a.cert_dir, "directory with ca.pem (the broker's CA)");
    cmd->add_flag("--tls", a.tls, "TLS to the broker")->needs(cert_dir);
    cmd->add_flag("--pingpong", a.pingpong, "round trips instead of streaming (both sides)");
    cmd->add_flag("--json", a.json_out, "print the result as one JSON object on one line");
    cmd->add_option("--timeout", a.timeout_s, "give up when nothing happens for this many seconds");
    cmd->add_option("--topic", a.topic, "topic prefix (both sides)")->capture_default_str();
    cmd->add_option("--qos", a.qos, "0 or 1")->check(CLI::Range(0, 1))->capture_default_str();
    cmd->add_option("--window", a.window, "publishes whose delivery may be open at once")->capture_default_str();
    cmd->add_option("--window-bytes", a.window_bytes, "bytes of publishes whose delivery may be open at once (the 1 s "
                                                      "stall of a publish larger than the free socket buffer)")
        ->capture_default_str();
    cmd->add_option("--max-buffered", a.max_buffered, "paho's limit of queued publishes (0: --window + 16)");
    cmd->add_flag("--nagle", a.nagle, "leave Nagle's algorithm on (paho's default)");
    cmd->add_option("--sndbuf", a.sndbuf, "SO_SNDBUF of the broker socket (0: the kernel's autotuning)");
    cmd->add_option("--max-publish", a.max_publish, "bytes per publish; larger messages go in pieces (0: whole)")
        ->capture_default_str();
  }
  client_cmd->add_option("--size", a.size_text, "payload bytes per message (suffix K or M allowed)");
  client_cmd->add_option("--seconds", a.seconds, "streaming time");
  client_cmd->add_option("--batch", a.batch, "accepted for ferry-asio-baseline's command line");
  client_cmd->add_option("--count", a.count, "timed round trips (--pingpong)");
  client_cmd->add_option("--warmup", a.warmup, "untimed round trips first (--pingpong)");
  CLI11_PARSE(app, argc, argv);
  try {
    return server_cmd->parsed() ? run_server(a) : run_client(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-paho-baseline: %s\n", e.what());
    return 1;
  }
}
