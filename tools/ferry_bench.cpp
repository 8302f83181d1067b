// SPDX-License-Identifier: Apache-2.0
// ferry-bench: cross-process benchmarks for people and scripts.
//   ferry-bench ring          one-way streaming through a byte ring between two processes
//   ferry-bench ring-pingpong round trips through two byte rings between two processes
//   ferry-bench comm, iops    the Communicator between two processes, beside plain baselines
//                             (tools/bench_comm.cpp)
//   ferry-bench rpc           ferry::rpc calls beside gRPC unary calls (tools/bench_rpc.cpp)
//   ferry-bench compare       Ferry beside iceoryx, ZeroMQ, Boost message_queue and Unix
//                             sockets, every workload in one run (tools/bench_compare.cpp)
// The second process is this binary re-executed (hidden sub-commands ring-consumer and
// ring-echo) with the ring segments inherited as memfd descriptors. Layer: tools/.
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bench_comm.hpp"
#include "bench_util.hpp"
#include "ferry/shm/ring.hpp"
#include "ideal_ring.hpp"

extern char** environ;

namespace {

using namespace ferry::shm;
using ferry::bench::human_bytes;
using ferry::bench::parse_size;
using nlohmann::json;
using std::chrono::nanoseconds;
using SteadyClock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// Small helpers


void pin_to(int cpu) {
  if (cpu < 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0)
    throw std::runtime_error("cannot pin to CPU " + std::to_string(cpu) + ": " + std::strerror(errno));
}

struct Pin {
  int a = -1;
  int b = -1;
};

Pin parse_pin(const std::string& text) {
  if (text == "none") return {};
  if (text == "auto") {
    if (std::thread::hardware_concurrency() >= 2) return {0, 1};
    return {};
  }
  const auto comma = text.find(',');
  if (comma == std::string::npos) throw CLI::ValidationError("--pin", "expected A,B, auto or none");
  return {std::stoi(text.substr(0, comma)), std::stoi(text.substr(comma + 1))};
}

WaitOptions wait_options(const std::string& mode) {
  WaitOptions w;
  if (mode == "spin") {
    w.mode = WaitMode::spin;
  } else if (mode == "sleep") {
    w.mode = WaitMode::block;
    w.spin = nanoseconds(0);  // always sleep: measures the wake-up path
  } else {
    w.mode = WaitMode::block;
  }
  return w;
}

template <class T>
T median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A child process running this binary with `args`, inheriting `fds`.
class Child {
 public:
  Child(const std::vector<std::string>& args, const std::vector<int>& fds) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    for (const int fd : fds) {  // clear close-on-exec by a round trip through a spare number
      posix_spawn_file_actions_adddup2(&actions, fd, 250);
      posix_spawn_file_actions_adddup2(&actions, 250, fd);
      posix_spawn_file_actions_addclose(&actions, 250);
    }
    std::vector<std::string> full{"/proc/self/exe"};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = ::posix_spawn(&m_pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    m_out = out[0];
    if (rc != 0) throw std::runtime_error(std::string("posix_spawn failed: ") + std::strerror(rc));
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (m_pid > 0) {
      ::kill(m_pid, SIGKILL);
      ::waitpid(m_pid, nullptr, 0);
    }
    ::close(m_out);
  }
  std::string read_line() {
    std::string line;
    char c = 0;
    while (::read(m_out, &c, 1) == 1 && c != '\n') line += c;
    return line;
  }
  int wait() {
    int st = 0;
    ::waitpid(m_pid, &st, 0);
    m_pid = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }

 private:
  pid_t m_pid = -1;
  int m_out = -1;
};

// ---------------------------------------------------------------------------------------------
// ring: one-way streaming

struct RingArgs {
  std::vector<std::string> sizes{"64"};
  double seconds = 2;
  std::string capacity = "4M";
  std::uint32_t batch = 1;
  bool zero_copy = false;
  bool hugepages = false;
  std::vector<std::string> waits{"block"};  // several: runs interleaved rep by rep
  std::vector<std::string> impls{"ferry"};  // ferry and/or ideal (the baseline), interleaved
  std::string pin = "auto";
  int reps = 3;
  bool json_out = false;
};

struct RunResult {
  double msgs_per_s;
  double bytes_per_s;
  std::uint64_t messages;
  std::uint64_t lost;
};

// The consumer process: reads until the producer closes; prints "done msgs bytes ns lost".
int ring_consumer(int fd, std::size_t size, bool zero_copy, const std::string& wait, int cpu,
                  const std::string& impl) {
  pin_to(cpu);
  Segment seg = Segment::open_fd(fd, ByteRing::spec(0));
  const bool ideal = impl == "ideal";
  std::optional<ByteRing::Consumer> consumer;
  std::optional<ferry::bench::IdealConsumer> baseline;
  if (ideal)
    baseline.emplace(seg.control().producer.write_pos, seg.control().consumer.read_pos, seg.data(),
                     seg.spec().capacity);
  else
    consumer.emplace(seg, wait_options(wait));
  std::vector<std::byte> dst(size);
  std::printf("ready\n");
  std::fflush(stdout);
  std::uint64_t count = 0, lost = 0, expected = 0;
  SteadyClock::time_point first{}, last{};
  for (;;) {
    std::span<const std::byte> msg;
    if (ideal) {
      std::uint64_t length = 0;
      const std::byte* p = baseline->peek(length);
      if (p == nullptr) {
        // acquire: the producer sets it after its last publication (release).
        if (seg.control().wait.producer_closed.load(std::memory_order_acquire) != 0 &&
            baseline->peek(length) == nullptr)
          break;
        if (p = baseline->peek(length); p == nullptr) {
          cpu_relax();
          continue;
        }
      }
      msg = {p, static_cast<std::size_t>(length)};
    } else {
      try {
        msg = consumer->peek(std::chrono::seconds(60));
      } catch (const ferry::Error& e) {
        if (e.errc() == ferry::Errc::closed) break;
        throw;
      }
    }
    if (count++ == 0) first = SteadyClock::now();  // no clock read per message: it costs ~20 ns
    if (msg.size() >= 8) {
      std::uint64_t seq = 0;
      std::memcpy(&seq, msg.data(), 8);
      if (seq != expected) lost += seq > expected ? seq - expected : 1;
      expected = seq + 1;
    }
    if (!zero_copy) {
      std::memcpy(dst.data(), msg.data(), msg.size());
      asm volatile("" : : "r"(dst.data()) : "memory");  // the copy is observable: keep it
    }
    if (ideal)
      baseline->release();
    else
      consumer->release();
  }
  // The producer closes right after its last message; the close is seen microseconds later.
  last = SteadyClock::now();
  const auto ns = std::chrono::duration_cast<nanoseconds>(last - first).count();
  std::printf("done %llu %llu %lld %llu\n", static_cast<unsigned long long>(count),
              static_cast<unsigned long long>(count * size), static_cast<long long>(ns),
              static_cast<unsigned long long>(lost));
  std::fflush(stdout);
  return 0;
}

RunResult ring_run(const RingArgs& a, std::size_t size, std::size_t capacity, const Pin& pin,
                   const std::string& impl, const std::string& wait, SegmentInfo& info) {
  SegmentOptions so;
  so.huge_pages = a.hugepages ? HugePages::prefer : HugePages::off;
  Segment seg = Segment::create_anonymous(ByteRing::spec(capacity), so);
  info = seg.info();
  if (size > ByteRing::max_message_size(capacity))
    throw std::runtime_error("--size " + std::to_string(size) + " exceeds the ring's largest message (" +
                             std::to_string(ByteRing::max_message_size(capacity)) + "): raise --capacity");
  const bool ideal = impl == "ideal";
  std::optional<ByteRing::Producer> producer;
  std::optional<ferry::bench::IdealProducer> baseline;
  if (ideal)
    baseline.emplace(seg.control().producer.write_pos, seg.control().consumer.read_pos, seg.data(), capacity);
  else
    producer.emplace(seg, ProducerOptions{.wait = wait_options(wait), .batch = a.batch});
  std::vector<std::string> args{"ring-consumer", "--fd", std::to_string(seg.fd()), "--size", std::to_string(size),
                                "--wait", wait, "--cpu", std::to_string(pin.b), "--impl", impl};
  if (a.zero_copy) args.emplace_back("--zero-copy");
  Child child(args, {seg.fd()});
  if (child.read_line() != "ready") throw std::runtime_error("consumer process failed to start");
  pin_to(pin.a);
  std::vector<std::byte> src(size, std::byte{0x5a});
  const auto duration = std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(a.seconds));
  const auto start = SteadyClock::now();
  std::uint64_t seq = 0;
  do {
    for (int i = 0; i < 256; ++i, ++seq) {
      if (ideal) {
        if (size >= 8) std::memcpy(src.data(), &seq, 8);
        baseline->push(src.data(), size);
      } else if (a.zero_copy) {
        auto out = producer->reserve(size);
        if (size >= 8) std::memcpy(out.data(), &seq, 8);
        producer->commit(size);
      } else {
        if (size >= 8) std::memcpy(src.data(), &seq, 8);
        producer->push(src);
      }
    }
  } while (SteadyClock::now() - start < duration);
  if (ideal) {
    baseline->publish();
    // release: after the last publication; the consumer's acquire load pairs with it.
    seg.control().wait.producer_closed.store(1, std::memory_order_release);
  } else {
    producer->close();
  }
  const std::string done = child.read_line();
  unsigned long long msgs = 0, bytes = 0, lost = 0;
  long long ns = 0;
  if (std::sscanf(done.c_str(), "done %llu %llu %lld %llu", &msgs, &bytes, &ns, &lost) != 4)
    throw std::runtime_error("consumer process failed: '" + done + "'");
  if (child.wait() != 0) throw std::runtime_error("consumer process exited with an error");
  pin_to(-1);
  const double secs = static_cast<double>(ns) / 1e9;
  RunResult r{};
  r.messages = msgs;
  r.lost = lost + (seq - msgs);
  r.msgs_per_s = secs > 0 ? static_cast<double>(msgs - 1) / secs : 0;
  r.bytes_per_s = r.msgs_per_s * static_cast<double>(size);
  return r;
}

int ring_main(const RingArgs& a) {
  const Pin pin = parse_pin(a.pin);
  const std::size_t capacity = parse_size(a.capacity);
  std::string waits;
  for (const auto& w : a.waits) waits += (waits.empty() ? "" : ",") + w;
  if (!a.json_out) {
    std::printf("ferry-bench ring: two processes, capacity %s, batch %u, %s, wait %s, pin %s, %d x %.1f s (median%s)\n",
                human_bytes(static_cast<double>(capacity)).c_str(), a.batch,
                a.zero_copy ? "zero-copy" : "copy in and out", waits.c_str(),
                pin.a < 0 ? "none" : (std::to_string(pin.a) + "," + std::to_string(pin.b)).c_str(), a.reps,
                a.seconds, a.waits.size() > 1 ? "; wait modes interleaved run by run" : "");
    std::printf("%10s %14s %12s %10s %6s  %-6s %-5s %s\n", "size", "msgs/s", "GB/s", "Gbit/s", "lost", "pages", "wait", "impl");
  }
  struct Combo {
    std::string impl, wait;
  };
  std::vector<Combo> combos;
  for (const auto& impl : a.impls) {
    if (impl == "ideal") {
      combos.push_back({impl, "spin"});  // the baseline only spins
      continue;
    }
    for (const auto& w : a.waits) combos.push_back({impl, w});
  }
  int failures = 0;
  struct Series {
    std::vector<double> rates, bps;
    std::uint64_t lost = 0;
    json runs = json::array();
  };
  for (const auto& size_text : a.sizes) {
    const std::size_t size = parse_size(size_text);
    std::vector<Series> series(combos.size());
    SegmentInfo info;
    for (int rep = 0; rep < a.reps; ++rep) {
      for (std::size_t w = 0; w < combos.size(); ++w) {
        const RunResult r = ring_run(a, size, capacity, pin, combos[w].impl, combos[w].wait, info);
        series[w].rates.push_back(r.msgs_per_s);
        series[w].bps.push_back(r.bytes_per_s);
        series[w].lost += r.lost;
        series[w].runs.push_back({{"msgs_per_s", r.msgs_per_s}, {"bytes_per_s", r.bytes_per_s},
                                  {"messages", r.messages}, {"lost", r.lost}});
      }
    }
    double ideal_rate = 0;
    for (std::size_t w = 0; w < combos.size(); ++w)
      if (combos[w].impl == "ideal") ideal_rate = median(series[w].rates);
    for (std::size_t w = 0; w < combos.size(); ++w) {
      const Series& sr = series[w];
      if (sr.lost != 0) ++failures;
      const double m = median(sr.rates);
      const double b = median(sr.bps);
      if (a.json_out) {
        json j{{"bench", "ring"},         {"size", size},
               {"capacity", capacity},    {"batch", a.batch},
               {"zero_copy", a.zero_copy}, {"wait", combos[w].wait}, {"impl", combos[w].impl},
               {"pin", pin.a < 0 ? json(nullptr) : json::array({pin.a, pin.b})},
               {"seconds", a.seconds},    {"reps", a.reps},
               {"msgs_per_s", m},         {"bytes_per_s", b},
               {"lost", sr.lost},         {"page_size", info.page_size},
               {"backing", info.backing}, {"runs", sr.runs}};
        if (!info.fallback.empty()) j["hugepage_fallback"] = info.fallback;
        if (ideal_rate > 0 && combos[w].impl != "ideal") j["ratio_to_ideal"] = m / ideal_rate;
        std::printf("%s\n", j.dump().c_str());
      } else {
        char ratio[32] = "";
        if (ideal_rate > 0 && combos[w].impl != "ideal")
          std::snprintf(ratio, sizeof ratio, "  %5.1f%% of ideal", 100 * m / ideal_rate);
        std::printf("%10s %14.0f %12.2f %10.2f %6llu  %-6s %-5s %-5s%s%s\n", human_bytes(static_cast<double>(size)).c_str(),
                    m, b / 1e9, b * 8 / 1e9, static_cast<unsigned long long>(sr.lost),
                    human_bytes(static_cast<double>(info.page_size)).c_str(), combos[w].wait.c_str(),
                    combos[w].impl.c_str(), ratio, info.fallback.empty() ? "" : " (hugepages unavailable)");
      }
    }
    std::fflush(stdout);
  }
  return failures == 0 ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// ring-pingpong: round trips

struct PingArgs {
  std::string size = "64";
  std::uint64_t count = 200'000;
  std::string wait = "spin";
  std::string echo_wait;  // empty: as `wait`
  double interval_us = 0;  // idle gap between round trips (not timed)
  std::string pin = "auto";
  bool hugepages = false;
  bool json_out = false;
};

int ring_echo(int fd_in, int fd_out, const std::string& wait, int cpu) {
  pin_to(cpu);
  Segment in = Segment::open_fd(fd_in, ByteRing::spec(0));
  Segment out = Segment::open_fd(fd_out, ByteRing::spec(0));
  ByteRing::Consumer consumer(in, wait_options(wait));
  ByteRing::Producer producer(out, {.wait = wait_options(wait)});
  std::printf("ready\n");
  std::fflush(stdout);
  for (;;) {
    std::span<const std::byte> msg;
    try {
      msg = consumer.peek(std::chrono::seconds(60));
    } catch (const ferry::Error& e) {
      if (e.errc() == ferry::Errc::closed) return 0;
      throw;
    }
    producer.push(msg);
    consumer.release();
  }
}

int pingpong_main(PingArgs a) {
  if (a.echo_wait.empty()) a.echo_wait = a.wait;
  const Pin pin = parse_pin(a.pin);
  const std::size_t size = parse_size(a.size);
  const std::size_t capacity = std::max<std::size_t>(1 << 16, std::bit_ceil(4 * (size + 16)));
  SegmentOptions so;
  so.huge_pages = a.hugepages ? HugePages::prefer : HugePages::off;
  Segment ab = Segment::create_anonymous(ByteRing::spec(capacity), so);
  Segment ba = Segment::create_anonymous(ByteRing::spec(capacity), so);
  ByteRing::Producer producer(ab, {.wait = wait_options(a.wait)});
  ByteRing::Consumer consumer(ba, wait_options(a.wait));
  Child child({"ring-echo", "--fd-in", std::to_string(ab.fd()), "--fd-out", std::to_string(ba.fd()), "--wait",
               a.echo_wait, "--cpu", std::to_string(pin.b)},
              {ab.fd(), ba.fd()});
  if (child.read_line() != "ready") throw std::runtime_error("echo process failed to start");
  pin_to(pin.a);
  std::vector<std::byte> src(size, std::byte{0x33});
  std::vector<std::byte> dst(size);
  const std::uint64_t warmup = std::max<std::uint64_t>(a.count / 10, 100);
  std::vector<std::int64_t> rtt;
  rtt.reserve(a.count);
  const auto gap = std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double, std::micro>(a.interval_us));
  for (std::uint64_t i = 0; i < warmup + a.count; ++i) {
    if (gap.count() > 0) {  // let the echo fall asleep: busy-wait, so this side stays awake
      const auto until = SteadyClock::now() + gap;
      while (SteadyClock::now() < until) cpu_relax();
    }
    const auto t0 = SteadyClock::now();
    producer.push(src);
    const auto reply = consumer.peek(std::chrono::seconds(10));
    std::memcpy(dst.data(), reply.data(), reply.size());
    consumer.release();
    const auto t1 = SteadyClock::now();
    if (i >= warmup) rtt.push_back(std::chrono::duration_cast<nanoseconds>(t1 - t0).count());
  }
  producer.close();
  child.wait();
  std::sort(rtt.begin(), rtt.end());
  const auto pct = [&](double q) { return rtt[static_cast<std::size_t>(q * static_cast<double>(rtt.size() - 1))]; };
  const auto us = [](std::int64_t ns) { return static_cast<double>(ns) / 1e3; };
  double mean = 0;
  for (const auto v : rtt) mean += static_cast<double>(v);
  mean /= static_cast<double>(rtt.size());
  if (a.json_out) {
    json j{{"bench", "ring-pingpong"}, {"size", size}, {"count", a.count}, {"wait", a.wait}, {"echo_wait", a.echo_wait}, {"interval_us", a.interval_us},
           {"pin", pin.a < 0 ? json(nullptr) : json::array({pin.a, pin.b})},
           {"p50_ns", pct(0.5)}, {"p99_ns", pct(0.99)}, {"p999_ns", pct(0.999)},
           {"min_ns", rtt.front()}, {"max_ns", rtt.back()}, {"mean_ns", mean},
           {"page_size", ab.info().page_size}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ferry-bench ring-pingpong: %s round trips, %llu timed after %llu warm-up, wait %s, echo waits %s, pin %s\n",
                human_bytes(static_cast<double>(size)).c_str(), static_cast<unsigned long long>(a.count),
                static_cast<unsigned long long>(warmup), a.wait.c_str(), a.echo_wait.c_str(),
                pin.a < 0 ? "none" : (std::to_string(pin.a) + "," + std::to_string(pin.b)).c_str());
    std::printf("  p50 %.2f us   p99 %.2f us   p99.9 %.2f us   min %.2f us   mean %.2f us\n", us(pct(0.5)),
                us(pct(0.99)), us(pct(0.999)), us(rtt.front()), mean / 1e3);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// futex-pingpong: the floor for a sleeping waiter on this machine (no ring): the echo process
// sleeps on a futex word in a shared page until woken; this process busy-waits for its reply.

int futex_echo(int fd, int cpu) {
  pin_to(cpu);
  Segment seg = Segment::open_fd(fd, ByteRing::spec(0));
  auto& request = seg.control().wait.consumer_sleeping;  // two futex words of a spare segment
  auto& reply = seg.control().wait.producer_sleeping;
  std::printf("ready\n");
  std::fflush(stdout);
  std::uint32_t seen = 0;
  for (;;) {
    // acquire: pairs with the pinger's release store of the request number.
    while (request.load(std::memory_order_acquire) == seen) futex_wait(request, seen, std::chrono::seconds(1));
    seen = request.load(std::memory_order_acquire);  // acquire: as above
    if (seen == 0xffffffffu) return 0;
    reply.store(seen, std::memory_order_release);  // release: pairs with the pinger's acquire spin
  }
}

int futex_pingpong_main(const PingArgs& a) {
  const Pin pin = parse_pin(a.pin);
  Segment seg = Segment::create_anonymous(ByteRing::spec(4096));
  auto& request = seg.control().wait.consumer_sleeping;
  auto& reply = seg.control().wait.producer_sleeping;
  Child child({"futex-echo", "--fd", std::to_string(seg.fd()), "--cpu", std::to_string(pin.b)}, {seg.fd()});
  if (child.read_line() != "ready") throw std::runtime_error("echo process failed to start");
  pin_to(pin.a);
  const auto gap = std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double, std::micro>(a.interval_us));
  std::vector<std::int64_t> rtt;
  const std::uint64_t warmup = std::max<std::uint64_t>(a.count / 10, 100);
  for (std::uint32_t i = 1; i <= warmup + a.count; ++i) {
    const auto until = SteadyClock::now() + gap;
    while (SteadyClock::now() < until) cpu_relax();
    const auto t0 = SteadyClock::now();
    request.store(i, std::memory_order_release);  // release: pairs with the echo's acquire load
    futex_wake(request, 1);
    while (reply.load(std::memory_order_acquire) != i) cpu_relax();  // acquire: echo's release
    if (i > warmup) rtt.push_back(std::chrono::duration_cast<nanoseconds>(SteadyClock::now() - t0).count());
  }
  request.store(0xffffffffu, std::memory_order_release);  // release: as above
  futex_wake(request, 1);
  child.wait();
  std::sort(rtt.begin(), rtt.end());
  const auto pct = [&](double q) { return rtt[static_cast<std::size_t>(q * static_cast<double>(rtt.size() - 1))]; };
  if (a.json_out) {
    std::printf("%s\n", json{{"bench", "futex-pingpong"}, {"count", a.count}, {"interval_us", a.interval_us},
                              {"p50_ns", pct(0.5)}, {"p99_ns", pct(0.99)}, {"p999_ns", pct(0.999)}}
                             .dump()
                             .c_str());
  } else {
    std::printf("ferry-bench futex-pingpong: bare futex wake-up round trips (no ring), echo asleep, %.0f us gaps\n",
                a.interval_us);
    std::printf("  p50 %.2f us   p99 %.2f us   p99.9 %.2f us\n", static_cast<double>(pct(0.5)) / 1e3,
                static_cast<double>(pct(0.99)) / 1e3, static_cast<double>(pct(0.999)) / 1e3);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry-bench: Ferry's cross-process benchmarks"};
  app.require_subcommand(1);

  RingArgs ring;
  auto* ring_cmd = app.add_subcommand("ring", "one-way streaming through a byte ring between two processes");
  ring_cmd->add_option("--size", ring.sizes, "message size(s), e.g. 64 or 8,64,1264,64K,2M")->delimiter(',');
  ring_cmd->add_option("--seconds", ring.seconds, "seconds per run")->check(CLI::PositiveNumber);
  ring_cmd->add_option("--capacity", ring.capacity, "ring capacity (power of two), e.g. 4M");
  ring_cmd->add_option("--batch", ring.batch, "publish write_pos every N messages")->check(CLI::PositiveNumber);
  ring_cmd->add_flag("--zero-copy", ring.zero_copy, "write and read in place (only the sequence number)");
  ring_cmd->add_flag("--hugepages", ring.hugepages, "prefer hugepage-backed memory (page size is reported)");
  ring_cmd->add_option("--wait", ring.waits, "spin | block (spin, then sleep) | sleep (no spin); a list runs each, interleaved")
      ->delimiter(',')
      ->check(CLI::IsMember({"spin", "block", "sleep"}));
  ring_cmd->add_option("--pin", ring.pin, "A,B: producer on CPU A, consumer on B; auto; none");
  ring_cmd->add_option("--reps", ring.reps, "runs per size; the median is reported")->check(CLI::PositiveNumber);
  ring_cmd->add_option("--impl", ring.impls, "ferry | ideal (a minimal baseline ring, spin-only); a list runs each, interleaved")
      ->delimiter(',')
      ->check(CLI::IsMember({"ferry", "ideal"}));
  ring_cmd->add_flag("--json", ring.json_out, "one JSON object per line");

  PingArgs ping;
  auto* ping_cmd = app.add_subcommand("ring-pingpong", "round trips through two byte rings between two processes");
  ping_cmd->add_option("--size", ping.size, "message size");
  ping_cmd->add_option("--count", ping.count, "timed round trips")->check(CLI::PositiveNumber);
  ping_cmd->add_option("--wait", ping.wait, "spin | block (spin, then sleep) | sleep (no spin)")
      ->check(CLI::IsMember({"spin", "block", "sleep"}));
  ping_cmd->add_option("--echo-wait", ping.echo_wait, "wait mode of the echo process (default: --wait)")
      ->check(CLI::IsMember({"spin", "block", "sleep"}));
  ping_cmd->add_option("--interval-us", ping.interval_us, "idle gap before each round trip, so a blocking echo sleeps")
      ->check(CLI::NonNegativeNumber);
  ping_cmd->add_option("--pin", ping.pin, "A,B: this process on CPU A, the echo on B; auto; none");
  ping_cmd->add_flag("--hugepages", ping.hugepages, "prefer hugepage-backed memory");
  ping_cmd->add_flag("--json", ping.json_out, "one JSON object per line");

  PingArgs futex_args;
  futex_args.count = 5000;
  futex_args.interval_us = 200;
  auto* futex_cmd = app.add_subcommand("futex-pingpong", "calibration: bare cross-process futex wake-up round trips");
  futex_cmd->add_option("--count", futex_args.count, "timed round trips")->check(CLI::PositiveNumber);
  futex_cmd->add_option("--interval-us", futex_args.interval_us, "idle gap before each round trip")
      ->check(CLI::NonNegativeNumber);
  futex_cmd->add_option("--pin", futex_args.pin, "A,B; auto; none");
  futex_cmd->add_flag("--json", futex_args.json_out, "one JSON object per line");

  // Internal: the second process of each benchmark.
  int fd = -1, fd_in = -1, fd_out = -1, cpu = -1;
  std::size_t size = 0;
  bool zero_copy = false;
  std::string wait = "block";
  auto* consumer_cmd = app.add_subcommand("ring-consumer")->group("");
  consumer_cmd->add_option("--fd", fd)->required();
  consumer_cmd->add_option("--size", size)->required();
  consumer_cmd->add_flag("--zero-copy", zero_copy);
  consumer_cmd->add_option("--wait", wait);
  consumer_cmd->add_option("--cpu", cpu);
  std::string impl = "ferry";
  consumer_cmd->add_option("--impl", impl);
  auto* echo_cmd = app.add_subcommand("ring-echo")->group("");
  echo_cmd->add_option("--fd-in", fd_in)->required();
  echo_cmd->add_option("--fd-out", fd_out)->required();
  echo_cmd->add_option("--wait", wait);
  echo_cmd->add_option("--cpu", cpu);

  auto* futex_echo_cmd = app.add_subcommand("futex-echo")->group("");
  futex_echo_cmd->add_option("--fd", fd)->required();
  futex_echo_cmd->add_option("--cpu", cpu);

  const auto comm_commands = ferry::bench::add_comm_commands(app);
  const auto rpc_commands = ferry::bench::add_rpc_commands(app);
  const auto compare_commands = ferry::bench::add_compare_commands(app);

  CLI11_PARSE(app, argc, argv);
  try {
    if (const auto rc = comm_commands()) return *rc;
    if (const auto rc = rpc_commands()) return *rc;
    if (const auto rc = compare_commands()) return *rc;
    if (*ring_cmd) return ring_main(ring);
    if (*ping_cmd) return pingpong_main(ping);
    if (*consumer_cmd) return ring_consumer(fd, size, zero_copy, wait, cpu, impl);
    if (*echo_cmd) return ring_echo(fd_in, fd_out, wait, cpu);
    if (*futex_cmd) return futex_pingpong_main(futex_args);
    if (*futex_echo_cmd) return futex_echo(fd, cpu);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
