// SPDX-License-Identifier: Apache-2.0
// ferry doctor: checks what makes shared memory fail in practice on this machine and prints
// the fix for each problem found. Layer: tools/.
//
// Paths may be redirected for tests, with the environment variables scripts/hugepages.sh
// uses: FERRY_HUGEPAGES_SYSFS, FERRY_PROC_MOUNTS, FERRY_THP_SYSFS; and FERRY_DOCTOR_DEV_SHM
// for /dev/shm.
#include "ferry_doctor.hpp"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <ferry/options.hpp>
#include <nlohmann/json.hpp>

namespace ferry::tools {
namespace {

namespace fs = std::filesystem;

enum class Status { ok, warn, fail };

struct Check {
  explicit Check(std::string n) : name(std::move(n)) {}
  std::string name;
  Status status = Status::ok;
  std::string detail;
  std::string fix;  // a command or a setting; empty when nothing is to be done
};

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

std::string mib(double bytes) {
  char b[32];
  if (bytes >= 1024.0 * 1024 * 1024) {
    std::snprintf(b, sizeof b, "%.1f GiB", bytes / (1024.0 * 1024 * 1024));
  } else {
    std::snprintf(b, sizeof b, "%.1f MiB", bytes / (1024.0 * 1024));
  }
  return b;
}

std::string read_first_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  std::getline(in, line);
  return line;
}

/// /proc/mounts entries of a file system type: mount points and options.
std::vector<std::pair<std::string, std::string>> mounts_of(const std::string& type) {
  std::vector<std::pair<std::string, std::string>> out;
  std::ifstream in(env_or("FERRY_PROC_MOUNTS", "/proc/mounts"));
  std::string dev, dir, fstype, opts;
  std::string rest;
  while (in >> dev >> dir >> fstype >> opts) {
    std::getline(in, rest);
    if (fstype == type) out.emplace_back(dir, opts);
  }
  return out;
}

Check dev_shm() {
  Check c("dev-shm");
  const std::string path = env_or("FERRY_DOCTOR_DEV_SHM", "/dev/shm");
  struct statvfs v {};
  struct stat st {};
  if (::statvfs(path.c_str(), &v) != 0 || ::stat(path.c_str(), &st) != 0) {
    c.status = Status::fail;
    c.detail = path + " is missing (" + std::strerror(errno) + "): named rings cannot be created";
    c.fix = "sudo mkdir -p /dev/shm && sudo mount -t tmpfs -o mode=1777,size=1g tmpfs /dev/shm";
    return c;
  }
  const double total = static_cast<double>(v.f_blocks) * static_cast<double>(v.f_frsize);
  const double free = static_cast<double>(v.f_bavail) * static_cast<double>(v.f_frsize);
  char mode[8];
  std::snprintf(mode, sizeof mode, "%o", st.st_mode & 07777);
  c.detail = path + ": " + mib(total) + ", " + mib(free) + " free, mode " + mode;
  if ((st.st_mode & 01777) != 01777) {
    c.status = Status::fail;
    c.detail += ": not writable by every user with the sticky bit (1777)";
    c.fix = "sudo chmod 1777 " + path;
  } else if (total < 256.0 * 1024 * 1024) {
    // Docker and most container runtimes give /dev/shm 64 MiB.
    c.status = Status::warn;
    c.detail += ": named rings (ferry::shm::Segment::create) live here, and this holds few of them "
                "(the Communicator's rings are memfds and do not count against it)";
    c.fix = "docker run --shm-size=1g ... (Kubernetes: an emptyDir with medium: Memory on /dev/shm), or "
            "sudo mount -o remount,size=1g " + path;
  } else if (free < 64.0 * 1024 * 1024) {
    c.status = Status::warn;
    c.detail += ": almost full";
    c.fix = "ls -l " + path + " (left-over segments of dead processes can be removed)";
  }
  return c;
}

Check memfd() {
  Check c("memfd");
  const int fd = ::memfd_create("ferry-doctor", MFD_CLOEXEC);
  if (fd < 0) {
    c.status = Status::fail;
    c.detail = std::string("memfd_create failed: ") + std::strerror(errno) +
               ": the shm transport cannot make its rings (a seccomp profile may forbid it)";
    c.fix = "allow memfd_create in the container's seccomp profile (docker: --security-opt seccomp=PROFILE)";
    return c;
  }
  constexpr std::size_t kSize = std::size_t{1} << 20;
  void* p = MAP_FAILED;
  if (::ftruncate(fd, kSize) == 0) p = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  const int err = errno;
  ::close(fd);
  if (p == MAP_FAILED) {
    c.status = Status::fail;
    c.detail = std::string("a 1 MiB memfd could not be mapped: ") + std::strerror(err);
    c.fix = "check the memory limit of this process's cgroup (shared memory counts against it)";
    return c;
  }
  ::munmap(p, kSize);
  c.detail = "a 1 MiB ring's memory can be created and mapped";
  return c;
}

Check hugepages() {
  Check c("hugepages");
  const fs::path pool = fs::path(env_or("FERRY_HUGEPAGES_SYSFS", "/sys/kernel/mm/hugepages")) / "hugepages-2048kB";
  const std::string nr = read_first_line(pool / "nr_hugepages");
  const std::string free = read_first_line(pool / "free_hugepages");
  if (nr.empty()) {
    c.status = Status::warn;
    c.detail = "no 2 MiB hugepage pool (" + pool.string() + "): rings use 4 KiB pages";
    return c;
  }
  c.detail = "2 MiB pages: " + nr + " reserved, " + free + " free";
  if (free.empty() || std::stoul(free) == 0) {
    c.status = Status::warn;
    c.detail += ": rings fall back to 4 KiB pages (with transparent hugepages advised)";
    c.fix = "sudo scripts/hugepages.sh reserve 64   (2 MiB each; a 1 MiB ring pair per client needs 1-2)";
  }
  return c;
}

Check hugetlbfs() {
  Check c("hugetlbfs");
  const auto m = mounts_of("hugetlbfs");
  if (m.empty()) {
    c.status = Status::warn;
    c.detail = "no hugetlbfs mounted: named rings cannot use hugepages (memfd rings can, from the pool)";
    c.fix = "sudo scripts/hugepages.sh mount";
    return c;
  }
  c.detail = "mounted at";
  for (const auto& [dir, opts] : m) c.detail += " " + dir + " (" + opts + ")";
  return c;
}

Check thp() {
  Check c("transparent-hugepages");
  const fs::path p = fs::path(env_or("FERRY_THP_SYSFS", "/sys/kernel/mm/transparent_hugepage")) / "enabled";
  const std::string mode = read_first_line(p);
  if (mode.empty()) {
    c.detail = "not available (" + p.string() + ")";
    return c;
  }
  c.detail = "enabled: " + mode;
  if (mode.find("[never]") != std::string::npos) {
    c.status = Status::warn;
    c.detail += ": rings on 4 KiB pages cannot be backed by transparent hugepages";
    c.fix = "echo madvise | sudo tee " + p.string();
  }
  return c;
}

Check limits() {
  Check c("limits");
  rlimit files{};
  rlimit lock{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  ::getrlimit(RLIMIT_MEMLOCK, &lock);
  const auto text = [](rlim_t v) { return v == RLIM_INFINITY ? std::string("unlimited") : std::to_string(v); };
  c.detail = "open files " + text(files.rlim_cur) + " (hard " + text(files.rlim_max) + "), memlock " +
             text(lock.rlim_cur) + " (Ferry locks no memory)";
  // A shm server holds 6 descriptors per client (the rendezvous socket, two ring memfds' worth
  // of wake-up sockets), a TCP one 1: 1024 clients need several thousand.
  if (files.rlim_cur != RLIM_INFINITY && files.rlim_cur < 8192) {
    c.status = Status::warn;
    c.detail += ": a server holds about 6 descriptors per shm client, so this serves about " +
                std::to_string(files.rlim_cur / 6) + " of them";
    c.fix = "ulimit -n " + text(std::min<rlim_t>(files.rlim_max, 65536)) +
            " (or LimitNOFILE= in the service's systemd unit)";
  }
  return c;
}

/// The namespace inode of `kind` for pid ("" when unreadable).
std::string ns_of(const std::string& pid, const char* kind) {
  std::error_code ec;
  const fs::path target = fs::read_symlink("/proc/" + pid + "/ns/" + kind, ec);
  return ec ? std::string() : target.string();
}

Check ipc_namespace() {
  Check c("ipc-namespace");
  const std::string self = ns_of("self", "ipc");
  const std::string init = ns_of("1", "ipc");
  c.detail = "this process: " + (self.empty() ? std::string("unknown") : self);
  if (init.empty()) {
    c.detail += " (PID 1's is not readable here: compare it with your peers')";
  } else if (init != self) {
    c.status = Status::warn;
    c.detail += ", PID 1: " + init + ": a container of its own; processes outside it cannot share "
                "memory with it (auto:// reaches them over TCP)";
    c.fix = "share the IPC namespace with the peers (docker run --ipc=host, or --ipc=container:NAME)";
  }
  return c;
}

Check net_namespace() {
  Check c("net-namespace");
  const std::string self = ns_of("self", "net");
  const std::string init = ns_of("1", "net");
  c.detail = "this process: " + (self.empty() ? std::string("unknown") : self);
  if (!init.empty() && init != self) {
    c.detail += ", PID 1: " + init + ": loopback addresses here are not the host's; auto:// clients "
                "outside must use an address this namespace listens on";
  }
  return c;
}

Check shm_dir() {
  Check c("shm-directory");
  const fs::path dir = ferry::shm_directory();
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    const fs::path parent = dir.parent_path();
    if (::access(parent.c_str(), W_OK | X_OK) != 0) {
      c.status = Status::fail;
      c.detail = dir.string() + " does not exist and " + parent.string() + " is not writable: servers cannot listen";
      c.fix = "export FERRY_SHM_DIR=DIR (an owner-only directory of yours), or ShmOptions::directory";
    } else {
      c.detail = dir.string() + " (created owner-only by the first server)";
    }
    return c;
  }
  char mode[8];
  std::snprintf(mode, sizeof mode, "%o", st.st_mode & 07777);
  c.detail = dir.string() + ", mode " + mode + ", owner uid " + std::to_string(st.st_uid);
  if (!S_ISDIR(st.st_mode)) {
    c.status = Status::fail;
    c.detail += ": not a directory";
    c.fix = "rm " + dir.string() + "   (or export FERRY_SHM_DIR=DIR)";
  } else if (st.st_uid != ::geteuid()) {
    c.status = Status::fail;
    c.detail += ": owned by another user (uid " + std::to_string(st.st_uid) + ", you are " +
                std::to_string(::geteuid()) + "): its sockets are not yours to trust";
    c.fix = "export FERRY_SHM_DIR=DIR (a directory of yours), or remove " + dir.string();
  } else if ((st.st_mode & 022) != 0) {
    // Servers refuse such a default directory; one named by FERRY_SHM_DIR is used as it is.
    const char* named = std::getenv("FERRY_SHM_DIR");
    c.status = named != nullptr && *named != '\0' ? Status::warn : Status::fail;
    c.detail += c.status == Status::fail ? ": others can write into it: servers refuse it"
                                         : ": others can write into it (and replace a server's socket)";
    c.fix = "chmod 700 " + dir.string() + "   (to serve other users, name them in ShmOptions::allow_uids)";
  }
  return c;
}

const char* status_name(Status s) {
  switch (s) {
    case Status::ok: return "ok";
    case Status::warn: return "warn";
    case Status::fail: return "fail";
  }
  return "?";
}

}  // namespace

int doctor_main(bool json) {
  const std::vector<Check> checks{dev_shm(), memfd(),         hugepages(),     hugetlbfs(), thp(),
                                  limits(),  ipc_namespace(), net_namespace(), shm_dir()};
  int problems = 0;
  int warnings = 0;
  for (const auto& c : checks) {
    problems += c.status == Status::fail ? 1 : 0;
    warnings += c.status == Status::warn ? 1 : 0;
  }
  if (json) {
    nlohmann::ordered_json out;
    out["problems"] = problems;
    out["warnings"] = warnings;
    out["checks"] = nlohmann::ordered_json::array();
    for (const auto& c : checks) {
      out["checks"].push_back({{"name", c.name}, {"status", status_name(c.status)}, {"detail", c.detail}, {"fix", c.fix}});
    }
    std::cout << out.dump() << std::endl;
  } else {
    std::cout << "ferry doctor: " << checks.size() << " checks, " << problems << " problem(s), " << warnings
              << " warning(s)\n";
    for (const auto& c : checks) {
      char head[64];
      std::snprintf(head, sizeof head, "  %-5s %-22s ", status_name(c.status), c.name.c_str());
      std::cout << head << c.detail << "\n";
      if (!c.fix.empty()) std::cout << "        fix: " << c.fix << "\n";
    }
    std::cout.flush();
  }
  return problems > 0 ? 1 : 0;
}

}  // namespace ferry::tools
