// SPDX-License-Identifier: Apache-2.0
// MosquittoBroker: writes mosquitto.conf (and a password file, made with mosquitto_passwd),
// spawns `mosquitto -c`, and waits for its listeners.
#include "support/mosquitto.hpp"

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

extern char** environ;

namespace ferry::testing {
namespace {

/// A port on 127.0.0.1 that was free a moment ago (the broker binds it next; a clash makes
/// start() fail and the constructor try other ports).
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error("socket");
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    throw std::runtime_error("bind 127.0.0.1:0");
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

bool accepts(std::uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

/// The TCP ports that process `pid` listens on (its socket inodes matched in /proc/net/tcp).
std::vector<std::uint16_t> listening_ports(pid_t pid) {
  std::vector<std::string> inodes;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    const std::string target = std::filesystem::read_symlink(e.path(), ec).string();
    if (!ec && target.rfind("socket:[", 0) == 0) inodes.push_back(target.substr(8, target.size() - 9));
  }
  std::vector<std::uint16_t> ports;
  std::ifstream tcp("/proc/net/tcp");
  std::string line;
  std::getline(tcp, line);  // the header
  while (std::getline(tcp, line)) {
    std::istringstream f(line);
    std::string slot, local, remote, state, queues, timer, retr, uid, timeout, inode;
    f >> slot >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >> inode;
    if (state != "0A" || std::find(inodes.begin(), inodes.end(), inode) == inodes.end()) continue;  // 0A: LISTEN
    ports.push_back(static_cast<std::uint16_t>(std::stoul(local.substr(local.find(':') + 1), nullptr, 16)));
  }
  return ports;
}

}  // namespace

MosquittoBroker::MosquittoBroker(Config config) : m_config(config) {
  std::string tmpl = (std::filesystem::temp_directory_path() / "ferry-mosquitto-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp");
  m_dir = tmpl;
  try {
    if (m_config.tls) m_certs = std::make_unique<TlsCerts>();
    if (m_config.auth) {
      const auto r = run_command({"mosquitto_passwd", "-b", "-c", (m_dir / "passwd").string(), user(), password()});
      if (r.exit_code != 0) throw std::runtime_error("mosquitto_passwd failed: " + r.output);
    }
    for (int attempt = 0;; ++attempt) {
      m_port = free_port();
      m_tls_port = m_config.tls ? free_port() : 0;
      m_auth_port = m_config.auth ? free_port() : 0;
      write_config();
      try {
        start();
        return;
      } catch (const std::runtime_error&) {
        if (attempt == 2) throw;  // three sets of ports taken meanwhile: not a port clash
      }
    }
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove_all(m_dir, ec);
    throw;
  }
}

MosquittoBroker::~MosquittoBroker() {
  stop(true);
  std::error_code ec;
  std::filesystem::remove_all(m_dir, ec);
}

void MosquittoBroker::write_config() const {
  std::ofstream c(m_dir / "mosquitto.conf");
  c << "# written by the Ferry test fixture (tests/support/mosquitto.cpp)\n";
  // Mosquitto started as root switches to the user "mosquitto", which cannot read our 0600
  // keys or this directory: stay as the user that runs the tests.
  if (::geteuid() == 0) c << "user root\n";
  c << "per_listener_settings true\n"
    << "persistence false\n"
    << "log_dest file " << (m_dir / "mosquitto.log").string() << "\n"
    << "log_type error\nlog_type warning\nlog_type notice\n"
    << "max_queued_messages " << m_config.max_queued_messages << "\n"
    << "max_queued_bytes 0\n"
    << "message_size_limit 0\n"
    // Mosquitto leaves Nagle on by default: every small publish it forwards would wait for
    // the subscriber's delayed ACK (~40 ms a hop on loopback).
    << "set_tcp_nodelay true\n";
  c << "listener " << m_port << " 127.0.0.1\nallow_anonymous true\n";
  if (m_config.tls) {
    c << "listener " << m_tls_port << " 127.0.0.1\nallow_anonymous true\n"
      << "certfile " << m_certs->server_chain().string() << "\n"
      << "keyfile " << m_certs->server_key().string() << "\n"
      << "cafile " << m_certs->ca().string() << "\n";
  }
  if (m_config.auth) {
    c << "listener " << m_auth_port << " 127.0.0.1\nallow_anonymous false\n"
      << "password_file " << (m_dir / "passwd").string() << "\n";
  }
  if (!c) throw std::runtime_error("cannot write " + (m_dir / "mosquitto.conf").string());
}

void MosquittoBroker::start() {
  const std::string conf = (m_dir / "mosquitto.conf").string();
  std::vector<std::string> args{"mosquitto", "-c", conf};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, (m_dir / "stdout.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  const int rc = ::posix_spawnp(&m_pid, "mosquitto", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    m_pid = -1;
    throw std::runtime_error("cannot start mosquitto (is the mosquitto package installed?): " + std::to_string(rc));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    int st = 0;
    if (::waitpid(m_pid, &st, WNOHANG) == m_pid) {
      m_pid = -1;
      throw std::runtime_error("mosquitto exited at start: " + log());
    }
    // Ours only when this process holds them (a port another test took meanwhile accepts too,
    // and makes mosquitto exit once it tries to bind it).
    const auto held = listening_ports(m_pid);
    const auto ours = [&](std::uint16_t p) { return std::find(held.begin(), held.end(), p) != held.end() && accepts(p); };
    if (ours(m_port) && (!m_config.tls || ours(m_tls_port)) && (!m_config.auth || ours(m_auth_port))) return;
    if (std::chrono::steady_clock::now() >= deadline) {
      stop(false);
      throw std::runtime_error("mosquitto did not listen within 10 s: " + log());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void MosquittoBroker::stop(bool graceful) noexcept {
  if (m_pid <= 0) return;
  ::kill(m_pid, graceful ? SIGTERM : SIGKILL);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  int st = 0;
  while (::waitpid(m_pid, &st, WNOHANG) != m_pid) {
    if (std::chrono::steady_clock::now() >= deadline) {
      ::kill(m_pid, SIGKILL);
      ::waitpid(m_pid, &st, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  m_pid = -1;
}

void MosquittoBroker::kill() { stop(false); }

void MosquittoBroker::restart() {
  stop(true);
  start();
}

std::string MosquittoBroker::log() const {
  std::string out;
  for (const char* f : {"mosquitto.log", "stdout.log"}) {
    std::ifstream in(m_dir / f);
    std::ostringstream s;
    s << in.rdbuf();
    out += s.str();
  }
  return out;
}

}  // namespace ferry::testing
