// SPDX-License-Identifier: Apache-2.0
// ferry-bench compare: the same workloads over Ferry and the peers installed from Debian, in
// one run, run by run alternating so a noisy machine shifts them all alike.
//
//   ferry-bench compare [--size 8,64,1264,64K,2M] [--seconds 1] [--reps 3] [--pingpong-size 64]
//                       [--systems a,b,...] [--json] [--plot FILE.png]
//
// Systems: Ferry's Communicator over shm:// and tcp://, Ferry's raw ring (no Communicator),
// Eclipse iceoryx (a RouDi of its own), ZeroMQ over ipc:// and tcp://, Boost.Interprocess
// message_queue and a Unix domain socket. Each run is two processes (tools/bench_comm_runs.hpp)
// that count every message on both sides. Streaming: one-way for --seconds, the receiver's
// msgs/s (it does not read the payload; a zero-copy system is spared that copy); ping-pong:
// round trips of one message, p50/p99. Ferry's ratio to a peer: shm against the same-host
// peers, tcp against ZeroMQ's tcp://; above 1 Ferry is ahead (more msgs/s, or a lower p50).
// Layer: tools/.
#include "bench_comm.hpp"
#include "bench_comm_runs.hpp"
#include "bench_process.hpp"
#include "bench_util.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace ferry::bench {
namespace {

struct CompareArgs {
  std::vector<std::string> sizes{"8", "64", "1264", "64K", "2M"};
  double seconds = 1;
  int reps = 3;
  std::string pingpong_size = "64";  // 0: no ping-pong
  std::uint64_t count = 20'000;
  std::vector<std::string> systems;  // empty: all
  std::string pin = "auto";
  int timeout = 30;
  bool json_out = false;
  std::string plot;
};

struct System {
  std::string name;
  std::string what;   // one line for the table's legend
  std::string ferry;  // the Ferry system its ratio is taken against; empty: none
  std::function<json(const CommArgs&, std::size_t, const Pin&)> run;
};

const std::vector<std::string>& all_system_names() {
  static const std::vector<std::string> names{"ferry-shm", "ferry-ring", "ferry-tcp", "iceoryx", "zmq-ipc",
                                              "zmq-tcp",   "bmq",        "uds"};
  return names;
}

std::string machine_text() {
  std::string cpu = "unknown CPU";
  std::ifstream info("/proc/cpuinfo");
  for (std::string line; std::getline(info, line);) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  utsname u{};
  ::uname(&u);
  return cpu + ", " + std::to_string(::sysconf(_SC_NPROCESSORS_ONLN)) + " CPUs, Linux " + u.release;
}

std::string duration_text(double s) {
  char buf[32];
  if (s >= 60)
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  else
    std::snprintf(buf, sizeof buf, "%.0fs", s);
  return buf;
}

/// One workload: streaming at a size, or the ping-pong.
struct Workload {
  bool pingpong;
  std::size_t size;
  [[nodiscard]] std::string text() const {
    return (pingpong ? "ping-pong " : "streaming ") + human_bytes(static_cast<double>(size));
  }
};

/// What was measured for a system in a workload: its runs, or why it has none.
struct Cell {
  std::vector<json> runs;
  std::string error;
  [[nodiscard]] double median_of(const char* key) const {
    std::vector<double> v;
    for (const json& r : runs)
      v.push_back(r.at(key).get<double>());
    return v.empty() ? 0.0 : median(v);
  }
};

/// Progress on stderr: one line rewritten on a terminal, a line per workload otherwise.
class Progress {
 public:
  Progress(std::size_t total) : m_total(total), m_tty(::isatty(STDERR_FILENO) == 1), m_start(Clock::now()) {}
  void run(const Workload& w, const std::string& system, int rep, int reps) {
    const double elapsed = seconds_between(m_start, Clock::now());
    const double left = m_done > 0 ? elapsed / static_cast<double>(m_done) * static_cast<double>(m_total - m_done) : 0;
    if (m_tty) {
      std::fprintf(stderr, "\r\033[K[%zu/%zu] %s, %s, run %d/%d; %s elapsed%s", m_done + 1, m_total, w.text().c_str(),
                   system.c_str(), rep + 1, reps, duration_text(elapsed).c_str(),
                   m_done > 0 ? (", about " + duration_text(left) + " left").c_str() : "");
    } else if (w.text() != m_last) {
      std::fprintf(stderr, "ferry-bench compare: %s (run %zu of %zu, %s elapsed%s)\n", w.text().c_str(), m_done + 1,
                   m_total, duration_text(elapsed).c_str(),
                   m_done > 0 ? (", about " + duration_text(left) + " left").c_str() : "");
      m_last = w.text();
    }
    ++m_done;
  }
  void done() {
    if (m_tty)
      std::fprintf(stderr, "\r\033[K");
    std::fprintf(stderr, "ferry-bench compare: %zu runs in %s\n", m_total,
                 duration_text(seconds_between(m_start, Clock::now())).c_str());
  }

 private:
  std::size_t m_total;
  std::size_t m_done = 0;
  bool m_tty;
  Clock::time_point m_start;
  std::string m_last;
};

/// Ferry's ratio to a system in a workload (above 1: Ferry ahead), 0 when either is missing.
double ferry_ratio(const Workload& w, const Cell& ferry, const Cell& other) {
  if (ferry.runs.empty() || other.runs.empty())
    return 0;
  return w.pingpong ? other.median_of("p50_ns") / ferry.median_of("p50_ns")
                    : ferry.median_of("msgs_per_s") / other.median_of("msgs_per_s");
}

/// The plot: GB/s by size for each system, and the ping-pong's p50, through gnuplot.
void write_plot(const std::string& file, const std::vector<System>& systems, const std::vector<Workload>& workloads,
                const std::map<std::pair<std::size_t, std::size_t>, Cell>& cells, const std::string& machine,
                const std::string& command) {
  const fs::path dir = fs::temp_directory_path() / ("ferry-compare-plot-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream stream(dir / "stream.dat");
  std::ofstream pingpong(dir / "pingpong.dat");
  stream << "size";
  for (const System& s : systems)
    stream << ' ' << s.name;
  stream << '\n';
  std::string xtics;
  bool any_pingpong = false;
  for (std::size_t w = 0; w < workloads.size(); ++w) {
    if (workloads[w].pingpong) {
      for (std::size_t i = 0; i < systems.size(); ++i) {
        const Cell& c = cells.at({w, i});
        if (!c.runs.empty()) {
          pingpong << '"' << systems[i].name << "\" " << c.median_of("p50_ns") / 1e3 << '\n';
          any_pingpong = true;
        }
      }
      continue;
    }
    stream << workloads[w].size;
    for (std::size_t i = 0; i < systems.size(); ++i) {
      const Cell& c = cells.at({w, i});
      if (c.runs.empty())
        stream << " NaN";
      else
        stream << ' ' << c.median_of("bytes_per_s") / 1e9;
    }
    stream << '\n';
    xtics += (xtics.empty() ? "" : ", ") + std::string("\"") + human_bytes(static_cast<double>(workloads[w].size)) +
             "\" " + std::to_string(workloads[w].size);
  }
  stream.close();
  pingpong.close();
  std::ofstream script(dir / "plot.gp");
  script << "set terminal pngcairo size 1400,620 font 'sans,10'\n"
         << "set output '" << file << "'\n"
         << "set multiplot layout 1," << (any_pingpong ? 2 : 1) << " title \"ferry-bench compare on " << machine
         << "\\n" << command << "\"\n"
         << "set grid\nset key left top\nset logscale xy\n"
         << "set xtics (" << xtics << ")\n"
         << "set xlabel 'message size'\nset ylabel 'GB/s received, one way (median)'\n"
         << "set title 'streaming'\n"
         << "plot for [i=2:" << systems.size() + 1 << "] '" << (dir / "stream.dat").string()
         << "' using 1:i with linespoints lw 2 pt 7 title columnheader(i)\n";
  if (any_pingpong) {
    script << "unset logscale x\nset logscale y\nset xtics auto rotate by -30\nunset xlabel\n"
           << "set ylabel 'round trip p50, us (log)'\nset title 'ping-pong'\n"
           << "set style fill solid 0.8\nset boxwidth 0.6\nset offsets 0, 0, graph 0.12, 0\n"
           << "plot '" << (dir / "pingpong.dat").string()
           << "' using 0:2:xtic(1) with boxes notitle, '' using 0:2:(sprintf('%.1f', $2)) with labels offset 0,1 notitle\n";
  }
  script << "unset multiplot\n";
  script.close();
  Process gnuplot({.name = "gnuplot", .program = "gnuplot", .args = {(dir / "plot.gp").string()}, .merge_stderr = true,
                   .search_path = true});
  const std::string out = gnuplot.read_all(Clock::now() + std::chrono::seconds(60));
  const int rc = gnuplot.wait(Clock::now() + std::chrono::seconds(10));
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (rc != 0)
    throw std::runtime_error("gnuplot failed (exit code " + std::to_string(rc) + "): " + out);
}

int compare_main(const CompareArgs& a, const std::string& command) {
  std::vector<Workload> workloads;
  for (const std::string& text : a.sizes) {
    const std::size_t size = parse_size(text);
    if (size == 0 || size > (std::size_t{4} << 20) - 4096)
      throw CLI::ValidationError("--size", "sizes must be in [1 B, 4 MiB - 4 KiB] (the peers' largest message)");
    workloads.push_back({false, size});
  }
  const std::size_t pingpong_size = parse_size(a.pingpong_size);
  if (pingpong_size > 0)
    workloads.push_back({true, pingpong_size});
  const Pin pin = parse_pin(a.pin);
  const std::string machine = machine_text();
  if (!a.plot.empty() && ::system("command -v gnuplot >/dev/null 2>&1") != 0)
    throw std::runtime_error("--plot needs gnuplot (Debian's gnuplot-nox: scripts/setup.sh installs it)");

  // The systems, each with what runs it; a peer whose program or daemon is missing is skipped
  // with the reason.
  std::vector<System> systems;
  std::vector<std::pair<std::string, std::string>> skipped;
  std::unique_ptr<Roudi> roudi;
  for (const std::string& name : a.systems.empty() ? all_system_names() : a.systems) {
    if (std::any_of(systems.begin(), systems.end(), [&](const System& s) { return s.name == name; }))
      continue;
    if (name == "ferry-shm" || name == "ferry-tcp") {
      const std::string transport = name.substr(6);
      systems.push_back({name, "Ferry's Communicator over " + transport + "://", "",
                         [transport](const CommArgs& c, std::size_t size, const Pin& p) {
                           CommArgs t = c;
                           t.transport = transport;
                           return run_ferry(t, size, p, {});
                         }});
      continue;
    }
    if (name == "ferry-ring") {
      systems.push_back({name, "Ferry's raw SPSC byte ring between two processes (no Communicator)", "ferry-shm",
                         [](const CommArgs& c, std::size_t size, const Pin& p) { return run_ring(c, size, p); }});
      continue;
    }
    const std::string impl = name == "iceoryx" ? "iox" : name;
    std::string why;
    const auto baseline = find_baseline(impl, why);
    if (!baseline) {
      skipped.emplace_back(name, why);
      continue;
    }
    if (impl == "iox") {
      try {
        roudi = std::make_unique<Roudi>(a.timeout);
      } catch (const std::exception& e) {
        skipped.emplace_back(name, e.what());
        continue;
      }
    }
    static const std::map<std::string, std::string> what{
        {"iox", "Eclipse iceoryx 2.0 publish/subscribe (loaned chunks, lossless, RouDi)"},
        {"zmq-ipc", "ZeroMQ 4.3 PAIR over ipc://"},
        {"zmq-tcp", "ZeroMQ 4.3 PAIR over tcp:// (loopback)"},
        {"bmq", "Boost.Interprocess message_queue"},
        {"uds", "a Unix domain stream socket, length-prefixed"}};
    const std::string transport = impl == "zmq-tcp" ? "tcp" : "shm";
    systems.push_back({name, what.at(impl), impl == "zmq-tcp" ? "ferry-tcp" : "ferry-shm",
                       [b = *baseline, transport](const CommArgs& c, std::size_t size, const Pin& p) {
                         CommArgs t = c;
                         t.transport = transport;
                         return run_baseline(t, size, p, b, {});
                       }});
  }
  if (systems.empty())
    throw std::runtime_error("compare: no system left to run");
  const auto index_of = [&](const std::string& name) -> std::optional<std::size_t> {
    for (std::size_t i = 0; i < systems.size(); ++i) {
      if (systems[i].name == name)
        return i;
    }
    return std::nullopt;
  };

  CommArgs base;
  base.seconds = a.seconds;
  base.count = a.count;
  base.warmup = std::max<std::uint64_t>(a.count / 10, 1000);
  base.reps = a.reps;
  base.timeout = a.timeout;

  if (!a.json_out) {
    std::printf("ferry-bench compare on %s\n", machine.c_str());
    std::printf("%d run%s of each system per workload (median), streaming %.1f s per run, ping-pong %llu round "
                "trips; pin %s (sender,receiver)\n",
                a.reps, a.reps == 1 ? "" : "s", a.seconds, static_cast<unsigned long long>(a.count),
                pin_text(pin).c_str());
    for (const System& s : systems)
      std::printf("  %-10s %s\n", s.name.c_str(), s.what.c_str());
    for (const auto& [name, why] : skipped)
      std::printf("  %-10s skipped: %s\n", name.c_str(), why.c_str());
    std::fflush(stdout);
  } else {
    for (const auto& [name, why] : skipped)
      std::printf("%s\n", json{{"bench", "compare"}, {"system", name}, {"skipped", why}}.dump().c_str());
  }
  for (const auto& [name, why] : skipped)
    std::fprintf(stderr, "ferry-bench compare: skipping %s: %s\n", name.c_str(), why.c_str());

  std::map<std::pair<std::size_t, std::size_t>, Cell> cells;  // (workload, system)
  Progress progress(workloads.size() * systems.size() * static_cast<std::size_t>(a.reps));
  bool failed = false;
  for (std::size_t w = 0; w < workloads.size(); ++w) {
    CommArgs c = base;
    c.pingpong = workloads[w].pingpong;
    for (int rep = 0; rep < a.reps; ++rep) {
      for (std::size_t i = 0; i < systems.size(); ++i) {  // alternate run by run
        Cell& cell = cells[{w, i}];
        progress.run(workloads[w], systems[i].name, rep, a.reps);
        if (!cell.error.empty())
          continue;  // one failure ends a system's workload
        try {
          cell.runs.push_back(systems[i].run(c, workloads[w].size, pin));
        } catch (const std::exception& e) {
          cell.error = e.what();
          cell.runs.clear();
          failed = true;
          std::fprintf(stderr, "\nferry-bench compare: %s, %s failed: %s\n", workloads[w].text().c_str(),
                       systems[i].name.c_str(), e.what());
        }
      }
    }
    // This workload's table (or JSON objects), printed as soon as it is measured.
    if (!a.json_out) {
      if (workloads[w].pingpong) {
        std::printf("\nping-pong, %s: round trip %12s %10s  %s\n", human_bytes(static_cast<double>(workloads[w].size)).c_str(),
                    "p50 us", "p99 us", "Ferry's p50 is");
      } else {
        std::printf("\nstreaming, %s: %13s %10s %7s  %s\n", human_bytes(static_cast<double>(workloads[w].size)).c_str(),
                    "msgs/s", "GB/s", "spread", "Ferry's msgs/s are");
      }
    }
    for (std::size_t i = 0; i < systems.size(); ++i) {
      const Cell& cell = cells.at({w, i});
      const auto ref = index_of(systems[i].ferry);
      const double ratio = ref ? ferry_ratio(workloads[w], cells.at({w, *ref}), cell) : 0.0;
      if (a.json_out) {
        json j{{"bench", "compare"},
               {"system", systems[i].name},
               {"mode", workloads[w].pingpong ? "pingpong" : "stream"},
               {"size", workloads[w].size},
               {"reps", a.reps},
               {"pin", pin.a < 0 ? json(nullptr) : json::array({pin.a, pin.b})},
               {"machine", machine}};
        if (workloads[w].pingpong)
          j["count"] = a.count;
        else
          j["seconds"] = a.seconds;
        if (!cell.error.empty()) {
          j["error"] = cell.error;
        } else {
          for (const char* k : workloads[w].pingpong ? std::vector<const char*>{"p50_ns", "p99_ns", "mean_ns"}
                                                     : std::vector<const char*>{"msgs_per_s", "bytes_per_s", "gbit_per_s"})
            j[k] = cell.median_of(k);
          if (ratio > 0) {
            j["ferry_system"] = systems[i].ferry;
            j["ferry_ratio"] = ratio;
          }
          j["runs"] = cell.runs;
        }
        std::printf("%s\n", j.dump().c_str());
        continue;
      }
      if (!cell.error.empty()) {
        std::printf("  %-10s failed: %s\n", systems[i].name.c_str(), cell.error.c_str());
        continue;
      }
      char note[64] = "";
      if (ratio > 0)
        std::snprintf(note, sizeof note, "%.2fx %s's", ratio, systems[i].name.c_str());
      if (workloads[w].pingpong) {
        std::printf("  %-10s %25.2f %10.2f  %s\n", systems[i].name.c_str(), cell.median_of("p50_ns") / 1e3,
                    cell.median_of("p99_ns") / 1e3, note);
      } else {
        // (max - min) / median of the runs: how much to trust the median on a shared machine.
        double lo = cell.runs.front()["msgs_per_s"].get<double>(), hi = lo;
        for (const json& r : cell.runs) {
          lo = std::min(lo, r["msgs_per_s"].get<double>());
          hi = std::max(hi, r["msgs_per_s"].get<double>());
        }
        const double m = cell.median_of("msgs_per_s");
        std::printf("  %-10s %22.0f %10.3f %6.0f%%  %s\n", systems[i].name.c_str(), m,
                    cell.median_of("bytes_per_s") / 1e9, 100 * (hi - lo) / m, note);
      }
    }
    std::fflush(stdout);
  }
  progress.done();
  roudi.reset();
  if (!a.plot.empty()) {
    write_plot(a.plot, systems, workloads, cells, machine, command);
    std::fprintf(stderr, "ferry-bench compare: plot written to %s\n", a.plot.c_str());
  }
  return failed ? 1 : 0;
}

} // namespace

std::function<std::optional<int>()> add_compare_commands(CLI::App& app) {
  auto a = std::make_shared<CompareArgs>();
  auto* cmd = app.add_subcommand("compare", "Ferry beside iceoryx, ZeroMQ, Boost message_queue and Unix sockets: "
                                            "streaming by size and a ping-pong, in one run");
  cmd->add_option("--size", a->sizes, "streaming message sizes, e.g. 8,64,1264,64K,2M")->delimiter(',')->capture_default_str();
  cmd->add_option("--seconds", a->seconds, "seconds of streaming per run")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--reps", a->reps, "runs of each system per workload (the median is reported)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--pingpong-size", a->pingpong_size, "the ping-pong's message size (0: no ping-pong)")->capture_default_str();
  cmd->add_option("--count", a->count, "timed round trips per ping-pong run")->check(CLI::PositiveNumber)->capture_default_str();
  std::string names;
  for (const auto& n : all_system_names())
    names += (names.empty() ? "" : ", ") + n;
  cmd->add_option("--systems", a->systems, "which systems to run (default: all): " + names)
      ->delimiter(',')
      ->check(CLI::IsMember(all_system_names()));
  cmd->add_option("--pin", a->pin, "A,B: sender on CPU A, receiver on B; auto; none")->capture_default_str();
  cmd->add_option("--timeout", a->timeout, "a process that makes no progress for this many seconds fails its run")
      ->capture_default_str();
  cmd->add_flag("--json", a->json_out, "one JSON object per system and workload (and per skipped system)");
  cmd->add_option("--plot", a->plot, "also draw the results into this PNG (gnuplot)");
  return [a, cmd]() -> std::optional<int> {
    if (!*cmd)
      return std::nullopt;
    std::string command = "ferry-bench compare";
    for (const auto& s : {std::string("--size"), std::string("--seconds"), std::string("--reps"), std::string("--pingpong-size"),
                          std::string("--count"), std::string("--systems"), std::string("--pin")}) {
      if (cmd->count(s) > 0) {
        std::string v;
        for (const auto& r : cmd->get_option(s)->results())
          v += (v.empty() ? "" : ",") + r;
        command += " " + s + " " + v;
      }
    }
    return compare_main(*a, command);
  };
}

} // namespace ferry::bench
