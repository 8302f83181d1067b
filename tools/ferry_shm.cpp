// SPDX-License-Identifier: Apache-2.0
// ferry-shm: Ferry's named shared-memory segments and shm:// rendezvous sockets on this host.
//
//   ferry-shm ls [--json]         every named ring (/dev/shm/ferry.*, and on hugetlbfs mounts):
//                                 owner, mode, kind, capacity, page size, creator / producer /
//                                 consumer pids (alive or dead), fill; every rendezvous socket of
//                                 the shm:// directory: owner and the listening server's pid
//   ferry-shm gc [--dry-run] [--prefix P]
//                                 removes the segments whose creator and both ends are provably
//                                 dead (pid and start time), and the sockets nobody listens on
//                                 (older than 2 s); only files of the calling user (any, as root),
//                                 and with --prefix only names that start with P
//
// Everything read from a segment is untrusted: a file that is not a valid Ferry segment is
// listed as such and never removed. Exit status: 0, 1 on an error, 2 on bad usage.
// Layer: tools/.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <ferry/options.hpp>
#include <ferry/shm/layout.hpp>
#include <ferry/shm/process.hpp>
#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
namespace layout = ferry::shm::layout;
using Json = nlohmann::ordered_json;

struct Party {  // one of a segment's processes
  std::uint64_t pid = 0;
  bool alive = false;
  bool present = false;  // the role is taken (a consumer may not have attached)
};

Party party(layout::Identity id) {
  Party p;
  p.present = id != 0;
  p.pid = layout::identity_pid(id);
  p.alive = id != 0 && ferry::shm::is_alive(id);
  return p;
}

struct SegmentRow {
  fs::path path;
  std::string name;
  std::uint32_t uid = 0;
  unsigned mode = 0;
  std::uint64_t file_size = 0;
  bool valid = false;
  std::string why;  // when not valid
  std::string kind;
  std::uint64_t capacity = 0, slot_size = 0, page_size = 0, used = 0;
  Party creator, producer, consumer;
  bool ready = false;
  [[nodiscard]] bool stale() const {
    return valid && !creator.alive && !producer.alive && !consumer.alive;
  }
};

template <class T>
T field(const std::byte* base, std::size_t offset) {
  T v;
  std::memcpy(&v, base + offset, sizeof v);
  return v;
}

SegmentRow read_segment(const fs::path& path) {
  SegmentRow r;
  r.path = path;
  r.name = path.filename().string().substr(6);  // "ferry."
  struct stat st {};
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 || ::fstat(fd, &st) != 0) {
    r.why = std::string("cannot read: ") + std::strerror(errno);
    if (fd >= 0) ::close(fd);
    if (::lstat(path.c_str(), &st) == 0) {
      r.uid = st.st_uid;
      r.mode = st.st_mode & 07777;
    }
    return r;
  }
  r.uid = st.st_uid;
  r.mode = st.st_mode & 07777;
  r.file_size = static_cast<std::uint64_t>(st.st_size);
  alignas(layout::kLineSize) std::byte head[sizeof(layout::Control)];
  const ssize_t n = ::pread(fd, head, sizeof head, 0);
  ::close(fd);
  if (n != static_cast<ssize_t>(sizeof head)) {
    r.why = "shorter than a segment header";
    return r;
  }
  using H = layout::SegmentHeader;
  if (field<std::uint64_t>(head, offsetof(H, magic)) != layout::kMagic) {
    r.why = "not a Ferry segment (bad magic)";
    return r;
  }
  if (field<std::uint32_t>(head, offsetof(H, layout_version)) != layout::kLayoutVersion) {
    r.why = "layout version " + std::to_string(field<std::uint32_t>(head, offsetof(H, layout_version)));
    return r;
  }
  const auto kind = field<std::uint32_t>(head, offsetof(H, kind));
  r.kind = kind == 1 ? "byte" : kind == 2 ? "typed" : kind == 3 ? "overwrite" : "";
  if (r.kind.empty()) {
    r.why = "unknown ring kind " + std::to_string(kind);
    return r;
  }
  r.valid = true;
  r.ready = field<std::uint32_t>(head, offsetof(H, state)) == static_cast<std::uint32_t>(layout::SegmentState::ready);
  r.capacity = field<std::uint64_t>(head, offsetof(H, capacity));
  r.slot_size = field<std::uint64_t>(head, offsetof(H, slot_size));
  r.page_size = field<std::uint64_t>(head, offsetof(H, page_size));
  r.creator = party(field<std::uint64_t>(head, offsetof(H, creator)));
  const std::size_t p = offsetof(layout::Control, producer);
  const std::size_t c = offsetof(layout::Control, consumer);
  r.producer = party(field<std::uint64_t>(head, p + offsetof(layout::ProducerLine, owner)));
  r.consumer = party(field<std::uint64_t>(head, c + offsetof(layout::ConsumerLine, owner)));
  const auto wp = field<std::uint64_t>(head, p + offsetof(layout::ProducerLine, write_pos));
  const auto rp = field<std::uint64_t>(head, c + offsetof(layout::ConsumerLine, read_pos));
  r.used = wp >= rp ? wp - rp : 0;  // a peer's positions, not trusted beyond display
  return r;
}

std::vector<fs::path> segment_dirs() {
  std::vector<fs::path> dirs{"/dev/shm"};
  std::ifstream in("/proc/mounts");
  std::string dev, dir, type, rest;
  while (in >> dev >> dir >> type) {
    std::getline(in, rest);
    if (type == "hugetlbfs") dirs.emplace_back(dir);
  }
  return dirs;
}

std::vector<SegmentRow> segments() {
  std::vector<SegmentRow> out;
  for (const auto& dir : segment_dirs()) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string f = e.path().filename().string();
      if (f.rfind("ferry.", 0) == 0 && f.size() > 6) out.push_back(read_segment(e.path()));
    }
  }
  return out;
}

struct SocketRow {
  fs::path path;
  std::string name;
  std::uint32_t uid = 0;
  bool listening = false;
  std::int64_t server_pid = 0;
  std::string why;  // when nobody listens
  int error = 0;    // connect()'s errno
  double age_s = 0;
};

std::vector<SocketRow> sockets() {
  std::vector<SocketRow> out;
  const fs::path dir = ferry::shm_directory();
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (f.size() <= 5 || f.substr(f.size() - 5) != ".sock") continue;
    struct stat st {};
    if (::lstat(e.path().c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    SocketRow r;
    r.path = e.path();
    r.name = f.substr(0, f.size() - 5);
    r.uid = st.st_uid;
    r.age_s = static_cast<double>(::time(nullptr) - st.st_mtime);
    // Non-blocking: a server whose backlog is full (EAGAIN) is busy, not gone, and must not
    // hang the listing.
    const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, e.path().c_str(), sizeof addr.sun_path - 1);
    if (s >= 0 && ::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
      r.listening = true;
      ucred cred{};
      socklen_t len = sizeof cred;
      if (::getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) r.server_pid = cred.pid;
    } else {
      r.error = errno;
      r.listening = r.error == EAGAIN;  // listening, its backlog full
      r.why = std::strerror(r.error);
    }
    if (s >= 0) ::close(s);
    out.push_back(r);
  }
  return out;
}

std::string who(const Party& p) {
  if (!p.present) return "-";
  return std::to_string(p.pid) + (p.alive ? "" : " (dead)");
}

Json to_json(const Party& p) {
  if (!p.present) return nullptr;
  return Json{{"pid", p.pid}, {"alive", p.alive}};
}

bool mine(std::uint32_t uid) { return ::geteuid() == 0 || uid == ::geteuid(); }

int ls(bool json) {
  const auto segs = segments();
  const auto socks = sockets();
  if (json) {
    Json out{{"segments", Json::array()}, {"sockets", Json::array()}, {"directory", ferry::shm_directory().string()}};
    for (const auto& s : segs) {
      Json j{{"name", s.name}, {"path", s.path.string()}, {"uid", s.uid}, {"mode", s.mode}, {"valid", s.valid}};
      if (!s.valid) {
        j["error"] = s.why;
      } else {
        j.update(Json{{"kind", s.kind}, {"capacity", s.capacity}, {"page_size", s.page_size}, {"used", s.used},
                      {"ready", s.ready}, {"creator", to_json(s.creator)}, {"producer", to_json(s.producer)},
                      {"consumer", to_json(s.consumer)}, {"stale", s.stale()}});
      }
      out["segments"].push_back(j);
    }
    for (const auto& s : socks) {
      Json j{{"name", s.name}, {"path", s.path.string()}, {"uid", s.uid}, {"listening", s.listening}};
      if (s.listening) {
        j["server_pid"] = s.server_pid;
      } else {
        j["error"] = s.why;
      }
      out["sockets"].push_back(j);
    }
    std::cout << out.dump() << std::endl;
    return 0;
  }
  std::printf("segments (/dev/shm and hugetlbfs mounts):\n");
  if (segs.empty()) std::printf("  none\n");
  for (const auto& s : segs) {
    if (!s.valid) {
      std::printf("  %-24s uid %-6u %s: %s\n", s.name.c_str(), s.uid, s.path.c_str(), s.why.c_str());
      continue;
    }
    const double fill = s.kind == "byte" && s.capacity > 0 ? 100.0 * static_cast<double>(s.used) / static_cast<double>(s.capacity) : -1;
    char fill_text[32];
    if (fill >= 0) {
      std::snprintf(fill_text, sizeof fill_text, "%.0f%%", std::min(fill, 100.0));
    } else {
      std::snprintf(fill_text, sizeof fill_text, "%llu slots", static_cast<unsigned long long>(s.used));
    }
    std::printf("  %-24s uid %-6u mode %03o %-9s capacity %-10llu pages %-8llu creator %-14s producer %-14s consumer %-14s fill %s%s\n",
                s.name.c_str(), s.uid, s.mode, s.kind.c_str(), static_cast<unsigned long long>(s.capacity),
                static_cast<unsigned long long>(s.page_size), who(s.creator).c_str(), who(s.producer).c_str(),
                who(s.consumer).c_str(), fill_text, s.stale() ? "  STALE (ferry-shm gc removes it)" : "");
  }
  std::printf("rendezvous sockets (%s):\n", ferry::shm_directory().c_str());
  if (socks.empty()) std::printf("  none\n");
  for (const auto& s : socks) {
    if (s.listening && s.server_pid == 0) {
      std::printf("  %-24s uid %-6u a server listens, its backlog full (%s)\n", s.name.c_str(), s.uid, s.why.c_str());
    } else if (s.listening) {
      std::printf("  %-24s uid %-6u server pid %lld\n", s.name.c_str(), s.uid, static_cast<long long>(s.server_pid));
    } else {
      std::printf("  %-24s uid %-6u nobody listens (%s)  STALE (ferry-shm gc removes it)\n", s.name.c_str(), s.uid,
                  s.why.c_str());
    }
  }
  return 0;
}

int gc(bool dry_run, const std::string& prefix) {
  int removed = 0, kept = 0, errors = 0;
  const auto act = [&](const fs::path& path, const std::string& what) {
    if (dry_run) {
      std::printf("would remove %s (%s)\n", path.c_str(), what.c_str());
      ++removed;
      return;
    }
    if (::unlink(path.c_str()) == 0 || errno == ENOENT) {
      std::printf("removed %s (%s)\n", path.c_str(), what.c_str());
      ++removed;
    } else {
      std::fprintf(stderr, "ferry-shm: cannot remove %s: %s\n", path.c_str(), std::strerror(errno));
      ++errors;
    }
  };
  const auto chosen = [&](const std::string& name) { return name.rfind(prefix, 0) == 0; };
  for (const auto& s : segments()) {
    if (s.stale() && mine(s.uid) && chosen(s.name)) {
      act(s.path, "creator " + who(s.creator) + ", producer " + who(s.producer) + ", consumer " + who(s.consumer));
    } else {
      ++kept;
    }
  }
  for (const auto& s : sockets()) {
    // ECONNREFUSED: no process listens on it. A server binds and listens at once, so only a
    // socket older than 2 s counts (one still being set up is left alone).
    if (!s.listening && s.error == ECONNREFUSED && s.age_s >= 2 && mine(s.uid) && chosen(s.name)) {
      act(s.path, "nobody listens");
    } else {
      ++kept;
    }
  }
  std::printf("%s %d, kept %d\n", dry_run ? "would remove" : "removed", removed, kept);
  return errors > 0 ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry-shm: Ferry's named shared-memory segments and shm:// rendezvous sockets"};
  app.require_subcommand(1);
  bool json = false;
  bool dry_run = false;
  std::string prefix;
  auto* ls_cmd = app.add_subcommand("ls", "list segments and rendezvous sockets, with their processes");
  ls_cmd->add_flag("--json", json, "one JSON object: {\"segments\": [...], \"sockets\": [...]}");
  auto* gc_cmd = app.add_subcommand("gc", "remove what belongs to provably dead processes");
  gc_cmd->add_flag("--dry-run", dry_run, "say what would be removed, remove nothing");
  gc_cmd->add_option("--prefix", prefix, "only segments and sockets whose name starts with this");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  try {
    if (*ls_cmd) return ls(json);
    if (*gc_cmd) return gc(dry_run, prefix);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-shm: %s\n", e.what());
    return 1;
  }
  return 2;
}
