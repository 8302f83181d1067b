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
// server echoes each message; the client times each round trip (from the start of its write to
// the echo's arrival) and starts the next one once the echo has arrived and the write has
// completed, as gRPC allows one outstanding write per stream.
//
// Unary (--unary on both sides): what a typical gRPC user gets for a same-host RPC, one unary
// call per request. The server echoes each request on a generic method, keeps serving until
// SIGTERM/SIGINT (or --timeout seconds with no call) and then prints how many calls it served.
// The client runs --clients threads, each with a channel (one HTTP/2 connection) of its own and
// a completion queue on which it keeps --pipeline calls outstanding; each call is timed from
// before its ClientContext is made to its completion on the queue.
//
// Generic method over raw bytes: no protobuf on either side, as in Ferry's transport.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <span>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
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
constexpr const char* kUnaryMethod = "/ferry.bench.Baseline/Unary";
constexpr int kMaxMessage = 1 << 30;

struct Args {
  int port = 0;
  std::string host = "127.0.0.1";
  std::string cert_dir;
  bool tls = false;
  bool pingpong = false;
  bool unary = false;
  bool json_out = false;
  int timeout_s = 30;
  std::string size_text = "64";
  double seconds = 2;
  std::size_t batch = 1;  // accepted for ferry-asio-baseline's command line; one message per write
  std::uint64_t count = 20'000;
  std::uint64_t warmup = 1'000;
  int clients = 1;   // --unary: client threads, one channel each
  int pipeline = 1;  // --unary: calls outstanding per client thread
};


std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  if (!in) throw std::runtime_error("cannot read " + p);
  return s.str();
}

using ferry::baseline::latency_json;
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

/// Starts a server for `service` on --host:--port (TLS with --tls); `port` is the bound port. With
/// `exclusive`, no SO_REUSEPORT: a port another server holds fails instead of sharing its calls.
std::unique_ptr<grpc::Server> start_server(const Args& a, grpc::CallbackGenericService& service, int& port,
                                           bool exclusive = false) {
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::InsecureServerCredentials();
  if (a.tls) {
    grpc::SslServerCredentialsOptions o;
    o.pem_key_cert_pairs.push_back({read_file(a.cert_dir + "/server.key"), read_file(a.cert_dir + "/server.pem")});
    creds = grpc::SslServerCredentials(o);
  }
  grpc::ServerBuilder b;
  port = 0;
  b.AddListeningPort(a.host + ":" + std::to_string(a.port), creds, &port);
  b.RegisterCallbackGenericService(&service);
  b.SetMaxReceiveMessageSize(kMaxMessage);
  b.SetMaxSendMessageSize(kMaxMessage);
  if (exclusive) b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  return b.BuildAndStart();
}

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
  int port = 0;
  auto server = start_server(a, service, port);
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

// ---- unary server (--unary) ----------------------------------------------------------------

/// One unary call on the generic (bidi-shaped) callback API: reads the request, writes it back
/// with the OK status in one step, and deletes itself when gRPC is done with the call.
class UnaryEcho final : public grpc::ServerGenericBidiReactor {
 public:
  explicit UnaryEcho(std::atomic<std::uint64_t>& calls) : m_calls(calls) { StartRead(&m_in); }
  void OnReadDone(bool ok) override {
    if (!ok) {  // cancelled, or half-closed without a request
      Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request message"));
      return;
    }
    m_calls.fetch_add(1, std::memory_order_relaxed);
    m_out = m_in;  // shares the slices: no copy
    StartWriteAndFinish(&m_out, grpc::WriteOptions(), grpc::Status::OK);
  }
  void OnDone() override { delete this; }

 private:
  std::atomic<std::uint64_t>& m_calls;
  grpc::ByteBuffer m_in;
  grpc::ByteBuffer m_out;
};

class UnaryService final : public grpc::CallbackGenericService {
 public:
  explicit UnaryService(std::atomic<std::uint64_t>& calls) : m_calls(calls) {}
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    if (ctx->method() != kUnaryMethod) return CallbackGenericService::CreateReactor(ctx);  // UNIMPLEMENTED
    return new UnaryEcho(m_calls);
  }

 private:
  std::atomic<std::uint64_t>& m_calls;
};

/// Serves unary calls until SIGTERM/SIGINT (exit 0) or --timeout seconds without a new call
/// (exit 3, as the watchdog's), then prints {"calls": N} with --json.
int run_unary_server(const Args& a) {
  // Block the signals in every thread (gRPC's are started below and inherit the mask); the main
  // thread takes them with sigtimedwait.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  if (pthread_sigmask(SIG_BLOCK, &stop, nullptr) != 0) throw std::runtime_error("pthread_sigmask failed");
  std::atomic<std::uint64_t> calls{0};
  UnaryService service(calls);
  int port = 0;
  auto server = start_server(a, service, port, /*exclusive=*/true);
  if (!server || port == 0) {
    std::fprintf(stderr, "ferry-grpc-baseline: cannot listen\n");
    return 1;
  }
  std::cout << "listening " << port << std::endl;
  const auto idle_limit = std::chrono::seconds(a.timeout_s);
  std::uint64_t seen = 0;
  auto last_call = Clock::now();
  bool idle = false;
  for (;;) {
    // Wake at least once a second to see whether calls still arrive.
    const auto left = std::clamp<Clock::duration>(last_call + idle_limit - Clock::now(), std::chrono::milliseconds(1),
                                                  std::chrono::seconds(1));
    const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
    const timespec ts{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    const int sig = sigtimedwait(&stop, nullptr, &ts);
    if (sig == SIGTERM || sig == SIGINT) break;
    const std::uint64_t now_calls = calls.load(std::memory_order_relaxed);
    const auto now = Clock::now();
    if (now_calls != seen) {
      seen = now_calls;
      last_call = now;
    } else if (now - last_call >= idle_limit) {
      idle = true;
      break;
    }
  }
  {
    const Watchdog dog(a.timeout_s);  // bounds the shutdown itself
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server->Wait();
  }
  const std::uint64_t served = calls.load();
  if (a.json_out) {
    std::cout << json{{"calls", served}}.dump() << std::endl;
  } else {
    std::cout << "served " << served << " unary calls" << std::endl;
  }
  if (idle) {
    std::fprintf(stderr, "ferry-grpc-baseline: no calls for %d s\n", a.timeout_s);
    return 3;
  }
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
    if (m_args.pingpong) {  // the next write follows the echo, and this write's completion
      if (round_half_done()) next_round();
      return;
    }
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
    if (round_half_done()) next_round();
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
  /// Ping-pong: one half of a round (the write's completion, the echo's arrival) is done; true
  /// for the later of the two, which then starts the next round. gRPC may run OnWriteDone and
  /// OnReadDone at the same time on different threads.
  bool round_half_done() {
    // acq_rel: the release publishes what this half wrote (the echo's m_round and m_rtt); the
    // acquire, in the later half's decrement, pairs with the earlier half's release, so
    // next_round sees both halves' writes.
    return m_halves_left.fetch_sub(1, std::memory_order_acq_rel) == 1;
  }
  /// Ping-pong: after both halves of a round, the next round or the half-close.
  void next_round() {
    if (m_round >= m_args.warmup + m_args.count) {
      m_args_done = true;  // before the read, whose OnReadDone reads it
      StartWritesDone();
      StartRead(&m_in);  // the server's count
      return;
    }
    // relaxed: StartWrite/StartRead below order this store before either callback that
    // decrements it (gRPC's own synchronisation between starting an operation and its reaction).
    m_halves_left.store(2, std::memory_order_relaxed);
    m_sent_at = Clock::now();
    StartWrite(&m_out);
    StartRead(&m_in);
  }

  const Args& m_args;
  Watchdog& m_dog;
  grpc::ClientContext m_ctx;
  grpc::ByteBuffer m_out;
  grpc::ByteBuffer m_in;
  Clock::time_point m_start{}, m_deadline{}, m_sent_at{};
  std::uint64_t m_sent = 0;
  std::uint64_t m_round = 0;
  std::atomic<int> m_halves_left{2};  // ping-pong: the current round's write and echo still to come
  bool m_args_done = false;
  std::string m_count;
  std::vector<std::int64_t> m_rtt;
  grpc::Status m_status;
  Latch m_done;
};

/// A channel to --host:--port (TLS with --tls). With `id` >= 0 it has a subchannel pool of its
/// own and a distinct channel argument, so it never shares a connection with another channel.
std::shared_ptr<grpc::Channel> make_channel(const Args& a, int id) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessage);
  args.SetMaxSendMessageSize(kMaxMessage);
  if (id >= 0) {
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_CHANNEL_ID, id);
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (a.tls) {
    grpc::SslCredentialsOptions o;
    o.pem_root_certs = read_file(a.cert_dir + "/ca.pem");
    args.SetSslTargetNameOverride("localhost");
    creds = grpc::SslCredentials(o);
  }
  return grpc::CreateCustomChannel(a.host + ":" + std::to_string(a.port), creds, args);
}

int run_client(const Args& a) {
  Watchdog dog(a.timeout_s);
  const std::size_t size = parse_size(a.size_text);
  std::vector<std::byte> payload(size);
  for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<std::byte>(i * 31 + 7);
  grpc::GenericStub stub(make_channel(a, -1));
  ClientStream call(a, payload, dog);
  call.begin(stub);
  call.wait();
  if (!call.status().ok()) {
    std::fprintf(stderr, "ferry-grpc-baseline: the call failed: %s\n", call.status().error_message().c_str());
    return 1;
  }
  json r;
  if (a.pingpong) {
    r = latency_json(call.rtt());
  } else {
    r = json{{"messages", call.sent()}, {"seconds", call.seconds()}};
  }
  if (a.json_out) std::cout << r.dump() << std::endl;
  return 0;
}

// ---- unary client (--unary) ----------------------------------------------------------------

/// What the client threads share: the first error, which stops them all.
struct UnaryShared {
  std::atomic<bool> failed{false};
  std::mutex mutex;
  std::string error;
  void fail(const std::string& e) {
    const std::lock_guard lock(mutex);
    if (!failed.exchange(true)) error = e;
  }
};

/// One client thread: its own channel and completion queue, --pipeline calls outstanding.
class UnaryClient {
 public:
  UnaryClient(const Args& a, int id, std::span<const std::byte> payload, Watchdog& dog, UnaryShared& shared)
      : m_size(payload.size()), m_stub(make_channel(a, id)), m_dog(dog), m_shared(shared),
        m_slots(static_cast<std::size_t>(a.pipeline)) {
    // A static slice: gRPC sends from the buffer, which outlives every call.
    const grpc::Slice s(payload.data(), payload.size(), grpc::Slice::STATIC_SLICE);
    m_request = grpc::ByteBuffer(&s, 1);
  }
  /// `warmup` untimed calls, then (after every thread has warmed up) `timed` timed calls.
  void run(std::uint64_t warmup, std::uint64_t timed, std::barrier<>& warmed_up) {
    m_last_moved = Clock::now();
    calls(warmup, false);
    warmed_up.arrive_and_wait();
    m_start = Clock::now();
    if (!m_shared.failed.load()) calls(timed, true);
    m_end = Clock::now();
    m_cq.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (m_cq.Next(&tag, &ok)) {
    }
  }
  std::vector<std::int64_t>& latencies() { return m_latencies; }
  Clock::time_point start() const { return m_start; }
  Clock::time_point end() const { return m_end; }

 private:
  struct Slot {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::GenericClientAsyncResponseReader> rpc;
    grpc::ByteBuffer reply;
    grpc::Status status;
    Clock::time_point started{};
  };

  void start(Slot& slot) {
    slot.started = Clock::now();
    slot.rpc.reset();  // lives in the previous call's arena: before that call's context goes
    slot.ctx = std::make_unique<grpc::ClientContext>();
    slot.reply.Clear();
    slot.rpc = m_stub.PrepareUnaryCall(slot.ctx.get(), kUnaryMethod, m_request, &m_cq);
    if (!slot.rpc) throw std::runtime_error("PrepareUnaryCall failed");
    slot.rpc->StartCall();
    slot.rpc->Finish(&slot.reply, &slot.status, &slot);
  }

  /// Runs `n` calls, at most --pipeline at a time; stops starting new ones after an error.
  void calls(std::uint64_t n, bool timed) {
    if (timed) m_latencies.reserve(n);
    std::uint64_t started = 0;
    std::uint64_t outstanding = 0;
    for (auto& slot : m_slots) {
      if (started == n) break;
      start(slot);
      ++started;
      ++outstanding;
    }
    while (outstanding > 0) {
      void* tag = nullptr;
      bool ok = false;
      if (!m_cq.Next(&tag, &ok)) throw std::runtime_error("the completion queue shut down");
      const auto now = Clock::now();
      --outstanding;
      auto& slot = *static_cast<Slot*>(tag);
      if (now - m_last_moved >= std::chrono::milliseconds(100)) {  // a mutex and a wake-up: not per call
        m_dog.moved();
        m_last_moved = now;
      }
      if (!ok || !slot.status.ok()) {
        m_shared.fail("the call failed: status " + std::to_string(static_cast<int>(slot.status.error_code())) + " (" +
                      status_name(slot.status.error_code()) + "): " + slot.status.error_message());
      } else if (slot.reply.Length() != m_size) {
        m_shared.fail("the echo has " + std::to_string(slot.reply.Length()) + " bytes, not " + std::to_string(m_size));
      } else if (timed) {
        m_latencies.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(now - slot.started).count());
      }
      if (started < n && !m_shared.failed.load(std::memory_order_relaxed)) {
        start(slot);
        ++started;
        ++outstanding;
      }
    }
  }

  static const char* status_name(grpc::StatusCode c) {
    switch (c) {
      case grpc::StatusCode::OK: return "OK";
      case grpc::StatusCode::CANCELLED: return "CANCELLED";
      case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
      case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
      case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
      case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
      case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
      case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
      case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
      case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
      case grpc::StatusCode::ABORTED: return "ABORTED";
      case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
      case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
      case grpc::StatusCode::INTERNAL: return "INTERNAL";
      case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
      case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
      case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
      default: return "?";
    }
  }

  const std::size_t m_size;
  grpc::GenericStub m_stub;
  Watchdog& m_dog;
  UnaryShared& m_shared;
  grpc::CompletionQueue m_cq;
  grpc::ByteBuffer m_request;
  std::vector<Slot> m_slots;
  std::vector<std::int64_t> m_latencies;
  Clock::time_point m_start{}, m_end{}, m_last_moved{};
};

int run_unary_client(const Args& a) {
  Watchdog dog(a.timeout_s);
  const std::size_t size = parse_size(a.size_text);
  std::vector<std::byte> payload(size);
  for (std::size_t i = 0; i < size; ++i) payload[i] = static_cast<std::byte>(i * 31 + 7);
  const auto n = static_cast<std::uint64_t>(a.clients);
  UnaryShared shared;
  std::vector<std::unique_ptr<UnaryClient>> clients;
  for (int i = 0; i < a.clients; ++i) clients.push_back(std::make_unique<UnaryClient>(a, i, payload, dog, shared));
  std::barrier<> warmed_up(a.clients);
  std::vector<std::thread> threads;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t timed = a.count / n + (i < a.count % n ? 1 : 0);  // --count in all
    threads.emplace_back([&, i, timed] {
      try {
        clients[i]->run(a.warmup, timed, warmed_up);
      } catch (const std::exception& e) {
        shared.fail(e.what());
        std::fprintf(stderr, "ferry-grpc-baseline: %s\n", e.what());
        std::_Exit(1);  // the other threads may wait for this one at the barrier
      }
    });
  }
  for (auto& t : threads) t.join();
  if (shared.failed.load()) {
    std::fprintf(stderr, "ferry-grpc-baseline: %s\n", shared.error.c_str());
    return 1;
  }
  std::vector<std::int64_t> all;
  all.reserve(a.count);
  auto first = clients.front()->start();
  auto last = clients.front()->end();
  for (const auto& c : clients) {
    all.insert(all.end(), c->latencies().begin(), c->latencies().end());
    first = std::min(first, c->start());
    last = std::max(last, c->end());
  }
  if (all.empty()) throw std::runtime_error("no timed calls (--count 0)");
  const double secs = std::chrono::duration<double>(last - first).count();
  const auto calls = static_cast<std::uint64_t>(all.size());
  json r = latency_json(all);
  r["calls"] = calls;
  r["seconds"] = secs;
  r["calls_per_s"] = secs > 0 ? static_cast<double>(calls) / secs : 0.0;
  r["clients"] = a.clients;
  r["pipeline"] = a.pipeline;
  r["size"] = size;
  if (a.json_out) {
    std::cout << r.dump() << std::endl;
  } else {
    std::printf("unary %zu B, %d client(s) x pipeline %d: %llu calls in %.3f s, %.0f calls/s; latency ns: p50 %lld "
                "p99 %lld mean %.0f min %lld max %lld\n",
                size, a.clients, a.pipeline, static_cast<unsigned long long>(calls), secs,
                r["calls_per_s"].get<double>(), static_cast<long long>(r["p50_ns"].get<std::int64_t>()),
                static_cast<long long>(r["p99_ns"].get<std::int64_t>()), r["mean_ns"].get<double>(),
                static_cast<long long>(r["min_ns"].get<std::int64_t>()),
                static_cast<long long>(r["max_ns"].get<std::int64_t>()));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"plain gRPC callback stream (no Ferry): the baseline of ferry-bench comm --transport grpc"};
  Args a;
  app.require_subcommand(1);
  auto* server_cmd = app.add_subcommand("server", "serve one call, then print its result (--unary: serve until SIGTERM)");
  auto* client_cmd = app.add_subcommand("client", "stream to a server (--unary: unary calls)");
  for (auto* cmd : {server_cmd, client_cmd}) {
    cmd->add_option("--port", a.port, "TCP port (server: 0 picks a free one)")->required();
    cmd->add_option("--host", a.host, "address to listen on / connect to")->capture_default_str();
    auto* cert_dir = cmd->add_option("--cert-dir", a.cert_dir, "directory with ca.pem, server.pem, server.key");
    cmd->add_flag("--tls", a.tls, "TLS (grpcs)")->needs(cert_dir);
    auto* pingpong = cmd->add_flag("--pingpong", a.pingpong, "round trips instead of streaming (both sides)");
    cmd->add_flag("--unary", a.unary, "one unary call per round trip instead of a stream (both sides)")
        ->excludes(pingpong);
    cmd->add_flag("--json", a.json_out, "print the result as one JSON object on one line");
    cmd->add_option("--timeout", a.timeout_s, "give up when nothing happens for this many seconds");
  }
  client_cmd->add_option("--size", a.size_text, "payload bytes per message (suffix K or M allowed)");
  client_cmd->add_option("--seconds", a.seconds, "streaming time");
  client_cmd->add_option("--batch", a.batch, "accepted for ferry-asio-baseline's command line (one message per write)");
  client_cmd->add_option("--count", a.count, "timed round trips (--pingpong; --unary: in all, split across clients)");
  client_cmd->add_option("--warmup", a.warmup, "untimed round trips first (--pingpong; --unary: per client)");
  client_cmd->add_option("--clients", a.clients, "--unary: client threads, each with its own channel")
      ->check(CLI::Range(1, 1024));
  client_cmd->add_option("--pipeline", a.pipeline, "--unary: calls outstanding per client thread")
      ->check(CLI::Range(1, 1024));
  CLI11_PARSE(app, argc, argv);
  try {
    if (a.unary) return server_cmd->parsed() ? run_unary_server(a) : run_unary_client(a);
    return server_cmd->parsed() ? run_server(a) : run_client(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-grpc-baseline: %s\n", e.what());
    return 1;
  }
}
