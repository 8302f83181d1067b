// SPDX-License-Identifier: Apache-2.0
// ferry-grpc-baseline: a plain gRPC callback bidirectional stream (no Ferry code) that Ferry's
// grpc:// transport is measured against, run as two processes, with the command line and JSON
// of ferry-asio-baseline so `ferry-bench comm --impl ferry,grpc` drives both alike.
// Layer: benchmarks/.
//
// Streaming: the client writes one message per gRPC write, back to back (the next
// StartWrite from OnWriteDone), each a ByteBuffer over one static buffer (no copy: the best a
// gRPC user can do), then half-closes; the server counts what it reads from the first message
// to the half-close and answers with the count before it finishes the call. Ping-pong: the
// server echoes each message; the client times each round trip.
//
// Generic method over raw bytes: no protobuf on either side, as in Ferry's transport.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <span>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "baseline_support.hpp"

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
constexpr const char* kMethod = "/ferry.bench.Baseline/Stream";
constexpr int kMaxMessage = 1 << 30;

struct Args {
  int port = 0;
  std::string host = "127.0.0.1";
  std::string cert_dir;
  bool tls = false;
  bool pingpong = false;
  bool json_out = false;
  int timeout_s = 30;
  std::string size_text = "64";
  double seconds = 2;
  std::size_t batch = 1;  // accepted for ferry-asio-baseline's command line; one message per write
  std::uint64_t count = 20'000;
  std::uint64_t warmup = 1'000;
};


std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  if (!in) throw std::runtime_error("cannot read " + p);
  return s.str();
}

using ferry::baseline::parse_size;

/// Every wait below is unbounded: the watchdog ends a process that stopped moving.
struct Watchdog : ferry::baseline::Watchdog {
  explicit Watchdog(int seconds) : ferry::baseline::Watchdog("ferry-grpc-baseline", seconds) {}
};

/// Waits for one event set by a reaction.
class Latch {
 public:
  void set() {
    const std::lock_guard lock(m_mutex);
    m_set = true;
    m_cv.notify_all();
  }
  void wait() {
    std::unique_lock lock(m_mutex);
    m_cv.wait(lock, [&] { return m_set; });
  }

 private:
  std::mutex m_mutex;
  std::condition_variable m_cv;
  bool m_set = false;
};

// ---- server --------------------------------------------------------------------------------

class ServerStream final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ServerStream(bool pingpong, Latch& done, json& result, Watchdog& dog)
      : m_pingpong(pingpong), m_done(done), m_result(result), m_dog(dog) {
    StartRead(&m_in);
  }
  void OnReadDone(bool ok) override {
    m_dog.moved();
    if (!ok) {  // the client half-closed: answer with the count, then finish
      m_last = Clock::now();
      const std::string count = std::to_string(m_messages);
      const grpc::Slice s(count);
      m_out = grpc::ByteBuffer(&s, 1);
      m_finishing = true;
      StartWrite(&m_out);
      return;
    }
    if (m_messages++ == 0) m_first = Clock::now();
    m_bytes += m_in.Length();
    if (m_pingpong) {
      m_out = m_in;  // shares the slices: no copy
      StartWrite(&m_out);
      return;
    }
    StartRead(&m_in);
  }
  void OnWriteDone(bool ok) override {
    m_dog.moved();
    if (m_finishing || !ok) {
      Finish(grpc::Status::OK);
      return;
    }
    StartRead(&m_in);
  }
  void OnDone() override {
    // The client's end marker itself is not counted: messages before the half-close only.
    const double secs = std::chrono::duration<double>(m_last - m_first).count();
    const double per_s = m_messages > 1 && secs > 0 ? 1.0 / secs : 0.0;
    m_result = json{{"messages", m_messages},
                    {"bytes", m_bytes},
                    {"seconds", secs},
                    {"msgs_per_s", static_cast<double>(m_messages) * per_s},
                    {"bytes_per_s", static_cast<double>(m_bytes) * per_s},
                    {"gbit_per_s", static_cast<double>(m_bytes) * 8e-9 * per_s}};
    Latch& done = m_done;
    delete this;
    done.set();
  }

 private:
  const bool m_pingpong;
  Latch& m_done;
  json& m_result;
  Watchdog& m_dog;
  grpc::ByteBuffer m_in;
  grpc::ByteBuffer m_out;
  bool m_finishing = false;
  std::uint64_t m_messages = 0;
  std::uint64_t m_bytes = 0;
  Clock::time_point m_first{}, m_last{};
};

class Service final : public grpc::CallbackGenericService {
 public:
  Service(bool pingpong, Latch& done, json& result, Watchdog& dog)
      : m_pingpong(pingpong), m_done(done), m_result(result), m_dog(dog) {}
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* CreateReactor(
      grpc::GenericCallbackServerContext* ctx) override {
    if (ctx->method() != kMethod) return CallbackGenericService::CreateReactor(ctx);
    return new ServerStream(m_pingpong, m_done, m_result, m_dog);
  }

 private:
  bool m_pingpong;
  Latch& m_done;
  json& m_result;
  Watchdog& m_dog;
};

int run_server(const Args& a) {
  Watchdog dog(a.timeout_s);
  Latch done;
  json result;
  Service service(a.pingpong, done, result, dog);
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (a.tls) {
    grpc::SslServerCredentialsOptions o;
    o.pem_key_cert_pairs.push_back({read_file(a.cert_dir + "/server.key"), read_file(a.cert_dir + "/server.pem")});
    creds = grpc::SslServerCredentials(o);
  }
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(a.host + ":" + std::to_string(a.port), creds, &port);
  b.RegisterCallbackGenericService(&service);
  b.SetMaxReceiveMessageSize(kMaxMessage);
  b.SetMaxSendMessageSize(kMaxMessage);
  auto server = b.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "ferry-grpc-baseline: cannot listen\n");
    return 1;
  }
  std::cout << "listening " << port << std::endl;
  done.wait();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (a.json_out) std::cout << result.dump() << std::endl;
  return 0;
}

// ---- client --------------------------------------------------------------------------------

class ClientStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  ClientStream(const Args& a, std::span<const std::byte> payload, Watchdog& dog)
      : m_args(a), m_dog(dog) {
    // A static slice: gRPC sends from the buffer, which outlives the call.
    const grpc::Slice s(payload.data(), payload.size(), grpc::Slice::STATIC_SLICE);
    m_out = grpc::ByteBuffer(&s, 1);
  }
  void begin(grpc::GenericStub& stub) {
    stub.PrepareBidiStreamingCall(&m_ctx, kMethod, grpc::StubOptions(), this);
    m_start = Clock::now();
    m_deadline = m_start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(m_args.seconds));
    m_sent_at = Clock::now();
    StartWrite(&m_out);
    StartRead(&m_in);
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    m_dog.moved();
    if (!ok) return;
    if (m_args.pingpong) return;  // the next write follows the echo
    ++m_sent;
    if ((m_sent & 15) == 0 && Clock::now() >= m_deadline) {
      StartWritesDone();
      return;
    }
    StartWrite(&m_out);
  }
  void OnReadDone(bool ok) override {
    m_dog.moved();
    if (!ok || m_args_done) return;  // after the round trips: the server's count
    if (!m_args.pingpong) {  // the server's count
      grpc::Slice s;
      (void)m_in.DumpToSingleSlice(&s);
      m_count = std::string(reinterpret_cast<const char*>(s.begin()), s.size());
      return;
    }
    const auto now = Clock::now();
    if (m_round++ >= m_args.warmup) m_rtt.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(now - m_sent_at).count());
    if (m_round >= m_args.warmup + m_args.count) {
      StartWritesDone();
      StartRead(&m_in);  // the server's count
      m_args_done = true;
      return;
    }
    m_sent_at = Clock::now();
    StartWrite(&m_out);
    StartRead(&m_in);
  }
  void OnDone(const grpc::Status& s) override {
    m_status = s;
    m_done.set();
  }
  void wait() { m_done.wait(); }
  const grpc::Status& status() const { return m_status; }
  std::vector<std::int64_t>& rtt() { return m_rtt; }
  std::uint64_t sent() const { return m_sent; }
  double seconds() const { return std::chrono::duration<double>(Clock::now() - m_start).count(); }

 private:
  const Args& m_args;
  Watchdog& m_dog;
  grpc::ClientContext m_ctx;
  grpc::ByteBuffer m_out;
  grpc::ByteBuffer m_in;
  Clock::time_point m_start{}, m_deadline{}, m_sent_at{};
  std::uint64_t m_sent = 0;
  std::uint64_t m_round = 0;
  bool m_args_done = false;
  std::string m_count;
  std::vector<std::int64_t> m_rtt;
  grpc::Status m_status;
  Latch m_done;
};

int run_client(const Args& a) {
  Watchdog dog(a.timeout_s);
  const std::size_t size = parse_size(a.size_text);
  std::vector<std::byte> payload(size);
  for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<std::byte>(i * 31 + 7);
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessage);
  args.SetMaxSendMessageSize(kMaxMessage);
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (a.tls) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(a.cert_dir + "/ca.pem");
    args.SetSslTargetNameOverride("localhost");
    creds = grpc::SslCredentials(o);
  }
  auto channel = grpc::CreateCustomChannel(a.host + ":" + std::to_string(a.port), creds, args);
  grpc::GenericStub stub(channel);
  ClientStream call(a, payload, dog);
  call.begin(stub);
  call.wait();
  if (!call.status().ok()) {
    std::fprintf(stderr, "ferry-grpc-baseline: the call failed: %s\n", call.status().error_message().c_str());
    return 1;
  }
  json r;
  if (a.pingpong) {
    auto& v = call.rtt();
    std::sort(v.begin(), v.end());
    const auto rank = [&](double q) {
      const auto i = static_cast<std::size_t>(std::max(0.0, std::ceil(q * static_cast<double>(v.size())) - 1));
      return v.at(std::min(i, v.size() - 1));
    };
    double mean = 0;
    for (const auto x : v) mean += static_cast<double>(x);
    mean /= static_cast<double>(v.size());
    r = json{{"p50_ns", rank(0.5)}, {"p99_ns", rank(0.99)}, {"mean_ns", mean}, {"min_ns", v.front()}, {"max_ns", v.back()}};
  } else {
    r = json{{"messages", call.sent()}, {"seconds", call.seconds()}};
  }
  if (a.json_out) std::cout << r.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"plain gRPC callback stream (no Ferry): the baseline of ferry-bench comm --transport grpc"};
  Args a;
  app.require_subcommand(1);
  auto* server_cmd = app.add_subcommand("server", "serve one call, then print its result");
  auto* client_cmd = app.add_subcommand("client", "stream to a server");
  for (auto* cmd : {server_cmd, client_cmd}) {
    cmd->add_option("--port", a.port, "TCP port (server: 0 picks a free one)")->required();
    cmd->add_option("--host", a.host, "address to listen on / connect to")->capture_default_str();
    auto* cert_dir = cmd->add_option("--cert-dir", a.cert_dir, "directory with ca.pem, server.pem, server.key");
    cmd->add_flag("--tls", a.tls, "TLS (grpcs)")->needs(cert_dir);
    cmd->add_flag("--pingpong", a.pingpong, "round trips instead of streaming (both sides)");
    cmd->add_flag("--json", a.json_out, "print the result as one JSON object on one line");
    cmd->add_option("--timeout", a.timeout_s, "give up when nothing happens for this many seconds");
  }
  client_cmd->add_option("--size", a.size_text, "payload bytes per message (suffix K or M allowed)");
  client_cmd->add_option("--seconds", a.seconds, "streaming time");
  client_cmd->add_option("--batch", a.batch, "accepted for ferry-asio-baseline's command line (one message per write)");
  client_cmd->add_option("--count", a.count, "timed round trips (--pingpong)");
  client_cmd->add_option("--warmup", a.warmup, "untimed round trips first (--pingpong)");
  CLI11_PARSE(app, argc, argv);
  try {
    return server_cmd->parsed() ? run_server(a) : run_client(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-grpc-baseline: %s\n", e.what());
    return 1;
  }
}
