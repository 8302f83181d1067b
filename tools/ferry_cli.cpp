// SPDX-License-Identifier: Apache-2.0
// ferry: send, receive and echo Ferry messages from the command line (ferry recv | send | echo),
// over any endpoint ferry::open() accepts; and check this machine for shared memory (ferry
// doctor). Layer: tools/.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <iostream>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <ferry/ferry.hpp>

#include "ferry_doctor.hpp"
#include <nlohmann/json.hpp>

#ifndef FERRY_VERSION
#define FERRY_VERSION "unknown"
#endif

namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;  // keys in insertion order: "peer", "size", "text"

/// How often the server loops wake up to notice a signal.
constexpr std::chrono::milliseconds kPollInterval{100};
/// ferry send keeps at most this many messages (and bytes) undelivered at a time.
constexpr std::size_t kSendWindowMessages = 1024;
constexpr std::size_t kSendWindowBytes = std::size_t{16} << 20;
/// ferry echo stops taking messages while this many echoes are undelivered (back-pressure).
constexpr std::size_t kEchoWindowMessages = 4096;
/// The default output shows at most this many bytes of a binary message, in hex.
constexpr std::size_t kHexPrefixBytes = 64;

// ---------------------------------------------------------------------------------------------
// Signals: SIGINT and SIGTERM ask a server command to close cleanly and exit 0.

volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int /*signal*/) { g_stop = 1; }

void install_stop_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESETHAND;  // a second signal while closing ends the process at once
  for (const int signal : {SIGINT, SIGTERM}) {
    if (::sigaction(signal, &action, nullptr) != 0) {
      throw std::runtime_error(std::string("cannot install a signal handler: ") + std::strerror(errno));
    }
  }
}

bool stop_requested() noexcept { return g_stop != 0; }

// ---------------------------------------------------------------------------------------------
// Options shared by the commands

struct CommonArgs {
  std::string url;
  std::string tls_cert, tls_key, tls_ca, tls_server_name;
  bool tls_no_verify_hostname = false;
  bool tls_require_client_cert = false;
  std::string id;
  unsigned workers = 1;
  std::string message_size;
  std::int64_t timeout_ms = 0;  // 0: the library's default
};

/// "1048576", "64K", "16MiB", "1G": a byte count. Throws std::invalid_argument.
std::size_t parse_size(const std::string& text) {
  std::size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 18) {
    throw std::invalid_argument("'" + text + "' is not a byte count (e.g. 1048576, 64K, 16M, 1G)");
  }
  const std::uint64_t value = std::stoull(text.substr(0, digits));
  std::string unit = text.substr(digits);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  unsigned shift = 0;
  if (unit.empty() || unit == "B") {
    shift = 0;
  } else if (unit == "K" || unit == "KB" || unit == "KIB") {
    shift = 10;
  } else if (unit == "M" || unit == "MB" || unit == "MIB") {
    shift = 20;
  } else if (unit == "G" || unit == "GB" || unit == "GIB") {
    shift = 30;
  } else {
    throw std::invalid_argument("unknown unit in '" + text + "' (use B, K, M or G)");
  }
  if (value == 0) throw std::invalid_argument("'" + text + "' must be more than 0 bytes");
  if (value > (std::uint64_t{1} << (62 - shift))) throw std::invalid_argument("'" + text + "' is too large");
  return static_cast<std::size_t>(value << shift);
}

const CLI::Validator kByteCount(
    [](const std::string& text) -> std::string {
      try {
        (void)parse_size(text);
        return {};
      } catch (const std::exception& e) {
        return e.what();
      }
    },
    "", "byte count");

const CLI::Validator kExistingFile = CLI::ExistingFile.description("");

/// The options of every command. Client-only and server-only TLS options are added by
/// add_client_options / add_server_options, so no command shows an option it ignores.
void add_common_options(CLI::App& cmd, CommonArgs& args) {
  cmd.add_option("URL", args.url, "endpoint: tcp://host:port or tls://host:port")->required()->type_name("");
  cmd.add_option("--id", args.id, "this side's id (default: random)")->type_name("UUID")->group("Connection");
  cmd.add_option("--workers", args.workers, "network I/O threads, 1 to 256 (default 1)")
      ->check(CLI::Range(1, 256).description(""))
      ->type_name("N")
      ->group("Connection");
  cmd.add_option("--message-size", args.message_size,
                 "largest message this side accepts, e.g. 1048576, 64K, 16M (default 1G)")
      ->check(kByteCount)
      ->type_name("BYTES")
      ->group("Connection");
  cmd.add_option("--tls-cert", args.tls_cert, "PEM certificate chain (server: required for tls://; client: mutual TLS)")
      ->check(kExistingFile)
      ->type_name("FILE")
      ->group("TLS");
  cmd.add_option("--tls-key", args.tls_key, "PEM private key of --tls-cert")
      ->check(kExistingFile)
      ->type_name("FILE")
      ->group("TLS");
}

void add_server_options(CLI::App& cmd, CommonArgs& args) {
  add_common_options(cmd, args);
  cmd.add_option("--tls-ca", args.tls_ca, "PEM CA certificates that verify client certificates")
      ->check(kExistingFile)
      ->type_name("FILE")
      ->group("TLS");
  cmd.add_flag("--tls-require-client-cert", args.tls_require_client_cert,
               "refuse clients without a certificate signed by --tls-ca (mutual TLS)")
      ->group("TLS");
}

void add_client_options(CLI::App& cmd, CommonArgs& args) {
  add_common_options(cmd, args);
  cmd.add_option("--timeout", args.timeout_ms, "connect and handshake timeout in milliseconds (default 10000)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{86'400'000}).description(""))
      ->type_name("MS")
      ->group("Connection");
  cmd.add_option("--tls-ca", args.tls_ca, "PEM CA certificates that verify the server (default: the system store)")
      ->check(kExistingFile)
      ->type_name("FILE")
      ->group("TLS");
  cmd.add_option("--tls-server-name", args.tls_server_name,
                 "name the server's certificate must carry (default: the URL's host)")
      ->type_name("NAME")
      ->group("TLS");
  cmd.add_flag("--tls-no-verify-hostname", args.tls_no_verify_hostname,
               "do not check the server certificate's name (its chain is still verified)")
      ->group("TLS");
}

ferry::Options make_options(const CommonArgs& args) {
  ferry::Options options;
  options.endpoint = args.url;
  if (!args.id.empty()) options.id = ferry::PeerId::parse(args.id);
  options.workers = args.workers;
  if (!args.message_size.empty()) options.connection.message_size = parse_size(args.message_size);
  if (args.timeout_ms > 0) options.connection.connect_timeout = std::chrono::milliseconds(args.timeout_ms);
  options.security.certificate = args.tls_cert;
  options.security.key = args.tls_key;
  options.security.ca = args.tls_ca;
  options.security.server_name = args.tls_server_name;
  options.security.verify_hostname = !args.tls_no_verify_hostname;
  options.security.require_client_certificate = args.tls_require_client_cert;
  return options;
}

/// Usage checks CLI11 cannot express; throws CLI::ValidationError (exit code 2).
void check_usage(const CommonArgs& args, bool server) {
  if (args.tls_cert.empty() != args.tls_key.empty()) {
    throw CLI::ValidationError("--tls-cert and --tls-key", "give both or neither");
  }
  if (server && args.url.starts_with("tls://") && args.tls_cert.empty()) {
    throw CLI::ValidationError("URL", "a tls:// server needs --tls-cert FILE and --tls-key FILE");
  }
  if (args.tls_require_client_cert && args.tls_ca.empty()) {
    throw CLI::ValidationError("--tls-require-client-cert", "needs --tls-ca FILE to verify clients");
  }
}

/// A server is listening: tell the user (and scripts that asked for port 0) where.
void announce(const ferry::Communicator& comm) {
  std::fprintf(stderr, "listening %s\n", comm.local_endpoint().c_str());
  std::fflush(stderr);
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// ---------------------------------------------------------------------------------------------
// Output of received messages

void write_stdout(std::string_view bytes) {
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), stdout) != bytes.size()) {
    throw std::runtime_error(std::string("cannot write to stdout: ") + std::strerror(errno));
  }
}

void flush_stdout() {
  if (std::fflush(stdout) != 0) {
    throw std::runtime_error(std::string("cannot write to stdout: ") + std::strerror(errno));
  }
}

/// Decodes the UTF-8 sequence at text[i]; returns its length (0: invalid) and the code point.
std::size_t decode_utf8(std::string_view text, std::size_t i, char32_t& cp) {
  const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  const unsigned char lead = byte(i);
  std::size_t length = 0;
  if (lead < 0x80) {
    cp = lead;
    return 1;
  }
  if ((lead & 0xE0) == 0xC0) {
    length = 2;
    cp = lead & 0x1Fu;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3;
    cp = lead & 0x0Fu;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4;
    cp = lead & 0x07u;
  } else {
    return 0;
  }
  if (text.size() - i < length) return 0;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (byte(i + k) & 0x3Fu);
  }
  constexpr char32_t kShortest[] = {0, 0, 0x80, 0x800, 0x10000};  // reject overlong forms
  if (cp < kShortest[length] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return length;
}

bool is_utf8(std::string_view text) {
  char32_t cp = 0;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = decode_utf8(text, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

/// Valid UTF-8 without control characters (tab allowed): safe to print as one line.
bool is_printable_line(std::string_view text) {
  char32_t cp = 0;
  for (std::size_t i = 0; i < text.size();) {
    const std::size_t n = decode_utf8(text, i, cp);
    if (n == 0) return false;
    if ((cp < 0x20 && cp != U'\t') || (cp >= 0x7F && cp <= 0x9F)) return false;
    i += n;
  }
  return true;
}

std::string base64(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << 16 |
                            static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8 |
                            static_cast<unsigned char>(bytes[i + 2]);
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  const std::size_t rest = bytes.size() - i;
  if (rest > 0) {
    std::uint32_t v = static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (rest == 2) v |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

/// "[binary 300 bytes] 000102...0f 101112...1f ..." — the first kHexPrefixBytes bytes.
std::string hex_line(std::string_view bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "[binary " + std::to_string(bytes.size()) + " bytes]";
  const std::size_t shown = std::min(bytes.size(), kHexPrefixBytes);
  for (std::size_t i = 0; i < shown; ++i) {
    if (i % 16 == 0) out += ' ';
    const auto b = static_cast<unsigned char>(bytes[i]);
    out += kDigits[b >> 4];
    out += kDigits[b & 15];
  }
  if (shown < bytes.size()) out += " ...";
  return out;
}

enum class OutputFormat { text, raw, json };

void print_message(const ferry::Message& message, OutputFormat format) {
  const std::string_view bytes = message.text();
  switch (format) {
    case OutputFormat::raw:
      write_stdout(bytes);
      break;
    case OutputFormat::json: {
      Json line;
      line["peer"] = message.peer.to_string();
      line["size"] = bytes.size();
      if (is_utf8(bytes)) {
        line["text"] = std::string(bytes);
      } else {
        line["base64"] = base64(bytes);
      }
      write_stdout(line.dump());
      write_stdout("\n");
      break;
    }
    case OutputFormat::text: {
      // One trailing newline is the line end the user typed, not part of what we judge.
      const std::string_view body = bytes.ends_with('\n') ? bytes.substr(0, bytes.size() - 1) : bytes;
      write_stdout(is_printable_line(body) ? body : std::string_view(hex_line(bytes)));
      write_stdout("\n");
      break;
    }
  }
  flush_stdout();
}

// ---------------------------------------------------------------------------------------------
// ferry recv

struct RecvArgs {
  CommonArgs common;
  std::uint64_t count = 0;  // 0: until a signal
  bool raw = false;
  bool json = false;
};

int run_recv(const RecvArgs& args) {
  install_stop_handlers();
  ferry::Communicator comm = ferry::open(ferry::Purpose::server, make_options(args.common));
  announce(comm);
  const OutputFormat format = args.raw ? OutputFormat::raw : args.json ? OutputFormat::json : OutputFormat::text;
  std::uint64_t received = 0;
  while (!stop_requested() && (args.count == 0 || received < args.count)) {
    std::optional<ferry::Message> message = comm.get_for(kPollInterval);
    if (!message) continue;
    print_message(*message, format);
    ++received;
  }
  comm.close();
  return 0;
}

// ---------------------------------------------------------------------------------------------
// ferry send

struct SendArgs {
  CommonArgs common;
  std::string text;  // "" or "-": stdin
  bool text_given = false;
  std::uint64_t count = 1;
  bool whole = false;
  bool json = false;
};

/// Puts messages with a bounded number of them undelivered; any failure throws ferry::Error.
class Sender {
 public:
  explicit Sender(ferry::Communicator& comm) : m_comm(comm) {}

  /// Sends the bytes of `message` `count` times (copies for all but the last).
  void send(std::string message, std::uint64_t count) {
    const std::size_t size = message.size();
    for (std::uint64_t i = 1; i < count; ++i) put(ferry::Payload::copy(std::string_view(message)), size);
    put(ferry::Payload(std::move(message)), size);
  }

  /// Waits until every message is delivered.
  void finish() {
    while (!m_window.empty()) retire_one();
  }

  [[nodiscard]] std::uint64_t messages() const noexcept { return m_messages; }
  [[nodiscard]] std::uint64_t bytes() const noexcept { return m_bytes; }

 private:
  void put(ferry::Payload payload, std::size_t size) {
    m_window.emplace_back(m_comm.put(std::move(payload)), size);
    m_window_bytes += size;
    while (m_window.size() > kSendWindowMessages || (m_window_bytes > kSendWindowBytes && m_window.size() > 1)) {
      retire_one();
    }
  }

  void retire_one() {
    auto [handle, size] = std::move(m_window.front());
    m_window.pop_front();
    m_window_bytes -= size;
    handle.wait_delivered();
    ++m_messages;
    m_bytes += size;
  }

  ferry::Communicator& m_comm;
  std::deque<std::pair<ferry::PutHandle, std::size_t>> m_window;
  std::size_t m_window_bytes = 0;
  std::uint64_t m_messages = 0;
  std::uint64_t m_bytes = 0;
};

std::string read_all_stdin() {
  std::string all;
  char buffer[1 << 16];
  for (;;) {
    const std::size_t n = std::fread(buffer, 1, sizeof buffer, stdin);
    all.append(buffer, n);
    if (n < sizeof buffer) break;
  }
  if (std::ferror(stdin)) throw std::runtime_error(std::string("cannot read stdin: ") + std::strerror(errno));
  return all;
}

int run_send(const SendArgs& args) {
  ferry::Communicator comm = ferry::open(ferry::Purpose::client, make_options(args.common));
  const Clock::time_point start = Clock::now();
  Sender sender(comm);
  if (args.text_given && args.text != "-") {
    sender.send(args.text, args.count);
  } else if (args.whole) {
    sender.send(read_all_stdin(), args.count);
  } else {
    std::ios::sync_with_stdio(false);
    std::string line;
    while (std::getline(std::cin, line)) sender.send(std::move(line), args.count);  // getline clears it
    if (std::cin.bad()) throw std::runtime_error(std::string("cannot read stdin: ") + std::strerror(errno));
  }
  sender.finish();
  const double seconds = seconds_since(start);
  comm.close();
  if (args.json) {
    Json summary;
    summary["sent"] = sender.messages();
    summary["bytes"] = sender.bytes();
    summary["seconds"] = seconds;
    write_stdout(summary.dump());
    write_stdout("\n");
    flush_stdout();
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
// ferry echo

struct EchoArgs {
  CommonArgs common;
  std::uint64_t count = 0;  // 0: until a signal
  bool json = false;
};

/// The echoes still in flight, and what became of the others.
class EchoTracker {
 public:
  void add(ferry::PutHandle handle) { m_pending.push_back(std::move(handle)); }

  /// Retires the finished echoes at the front; with `block`, waits (a poll interval at a time,
  /// until a signal) while the window is full.
  void reap(bool block) {
    while (!m_pending.empty()) {
      if (!m_pending.front().delivered()) {
        if (!block || m_pending.size() < kEchoWindowMessages || stop_requested()) return;
        (void)m_pending.front().wait_delivered_for(kPollInterval);
        continue;
      }
      retire(m_pending.front());
      m_pending.pop_front();
    }
  }

  /// After close(): every echo has completed, delivered or not.
  void finish() {
    for (const auto& handle : m_pending) retire(handle);
    m_pending.clear();
  }

  [[nodiscard]] std::uint64_t undelivered() const noexcept { return m_undelivered; }

 private:
  void retire(const ferry::PutHandle& handle) {
    const std::vector<ferry::PeerError> errors = handle.errors();
    if (errors.empty() && handle.delivered()) return;
    ++m_undelivered;
    for (const auto& e : errors) {
      // A client that left before its echo arrived is ordinary; anything else is worth a line.
      const bool peer_gone = e.error == ferry::Errc::closed || e.error == ferry::Errc::not_found ||
                             e.error == ferry::Errc::peer_lost;
      if (!peer_gone) {
        std::fprintf(stderr, "ferry: echo to %s failed: %s\n", e.peer.to_string().c_str(), e.error.message().c_str());
      }
    }
  }

  std::deque<ferry::PutHandle> m_pending;
  std::uint64_t m_undelivered = 0;
};

int run_echo(const EchoArgs& args) {
  install_stop_handlers();
  ferry::Communicator comm = ferry::open(ferry::Purpose::server, make_options(args.common));
  announce(comm);
  const Clock::time_point start = Clock::now();
  EchoTracker tracker;
  std::uint64_t echoed = 0;
  std::uint64_t bytes = 0;
  while (!stop_requested() && (args.count == 0 || echoed < args.count)) {
    tracker.reap(true);
    std::optional<ferry::Message> message = comm.get_for(kPollInterval);
    if (!message) continue;
    bytes += message->data.size();
    tracker.add(comm.put(std::move(message->data), message->peer));
    ++echoed;
  }
  comm.close();  // waits (up to the close timeout) for the echoes to be acknowledged
  tracker.reap(false);
  tracker.finish();
  if (args.json) {
    Json summary;
    summary["echoed"] = echoed;
    summary["undelivered"] = tracker.undelivered();
    summary["bytes"] = bytes;
    summary["seconds"] = seconds_since(start);
    write_stdout(summary.dump());
    write_stdout("\n");
    flush_stdout();
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry: send, receive and echo Ferry messages from the command line.", "ferry"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("ferry ") + FERRY_VERSION);
  app.footer(
      "Examples:\n"
      "  ferry recv tcp://127.0.0.1:0 --json       a server on a free port (printed on stderr)\n"
      "  ferry send tcp://127.0.0.1:51966 hello    one message\n"
      "  ferry send tcp://127.0.0.1:51966 -        one message per line of stdin\n"
      "  ferry send tcp://127.0.0.1:51966 --whole < file.bin\n"
      "Exit status: 0 success, 1 a Ferry or I/O error (one line on stderr), 2 bad usage.");

  RecvArgs recv;
  auto* recv_cmd = app.add_subcommand(
      "recv", "Listen at URL and print each message received (until --count messages, SIGINT or SIGTERM).");
  add_server_options(*recv_cmd, recv.common);
  recv_cmd->add_option("--count", recv.count, "exit after N messages (default: run until SIGINT or SIGTERM)")
      ->check(CLI::PositiveNumber.description(""))
      ->type_name("N");
  auto* raw_flag = recv_cmd->add_flag("--raw", recv.raw, "write the message bytes exactly, with no separators");
  recv_cmd->add_flag("--json", recv.json,
                     "one JSON object per message: {\"peer\", \"size\", \"text\"} for valid UTF-8, "
                     "{\"peer\", \"size\", \"base64\"} otherwise")
      ->excludes(raw_flag);
  recv_cmd->footer(
      "Prints \"listening <endpoint>\" on stderr once listening (with port 0: the port it got).\n"
      "Default output, one line per message: the text when it is valid UTF-8 without control\n"
      "characters (tab and one trailing newline allowed), otherwise \"[binary N bytes]\" and the\n"
      "first 64 bytes in hex. SIGINT or SIGTERM: close cleanly and exit 0.");

  bool doctor_json = false;
  auto* doctor_cmd = app.add_subcommand(
      "doctor", "Check what makes shared memory fail in practice here, and print the fix for each problem.");
  doctor_cmd->add_flag("--json", doctor_json, "one JSON object: {\"problems\", \"warnings\", \"checks\": [...]}");
  doctor_cmd->footer(
      "Checks /dev/shm (size, mode), memfd_create, the 2 MiB hugepage pool, hugetlbfs mounts,\n"
      "transparent hugepages, descriptor and memlock limits, IPC and network namespaces, and the\n"
      "shm:// rendezvous directory. Exit status: 0 no problem (warnings allowed), 1 a problem.");

  SendArgs send;
  auto* send_cmd = app.add_subcommand(
      "send", "Connect to the server at URL, send TEXT or stdin, wait until every message is delivered, close.");
  add_client_options(*send_cmd, send.common);
  auto* text_opt =
      send_cmd->add_option("TEXT", send.text, "the message; '-' or none: read stdin (see --whole)")->type_name("");
  send_cmd->add_option("--count", send.count, "send each message N times")
      ->check(CLI::PositiveNumber.description(""))
      ->type_name("N");
  send_cmd->add_flag("--whole", send.whole, "send all of stdin as one message (bytes exactly)");
  send_cmd->add_flag("--json", send.json, "print a summary: {\"sent\": N, \"bytes\": B, \"seconds\": S}");
  send_cmd->footer(
      "Stdin (TEXT '-' or absent): by default each line is one message, without its newline;\n"
      "with --whole all of stdin, binary or not, is one message. A TEXT that starts with '-'\n"
      "goes after '--'. \"seconds\" runs from connected to the last delivery.");

  EchoArgs echo;
  auto* echo_cmd = app.add_subcommand(
      "echo", "Listen at URL and send each message back to its sender (until --count messages, SIGINT or SIGTERM).");
  add_server_options(*echo_cmd, echo.common);
  echo_cmd->add_option("--count", echo.count, "exit after echoing N messages (default: run until SIGINT or SIGTERM)")
      ->check(CLI::PositiveNumber.description(""))
      ->type_name("N");
  echo_cmd->add_flag("--json", echo.json,
                     "on exit print {\"echoed\": N, \"undelivered\": U, \"bytes\": B, \"seconds\": S}");
  echo_cmd->footer(
      "Prints \"listening <endpoint>\" on stderr once listening. Echoes to a client that left\n"
      "first count as undelivered; other echo failures are reported on stderr.");

  try {
    app.parse(argc, argv);
    if (*recv_cmd) check_usage(recv.common, true);
    if (*echo_cmd) check_usage(echo.common, true);
    if (*send_cmd) {
      check_usage(send.common, false);
      send.text_given = text_opt->count() > 0;
      if (send.whole && send.text_given && send.text != "-") {
        throw CLI::ValidationError("--whole", "reads stdin; it cannot be combined with TEXT");
      }
    }
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help, the version, or the error and a hint
    return code == 0 ? 0 : 2;
  }

  try {
    if (*recv_cmd) return run_recv(recv);
    if (*send_cmd) return run_send(send);
    if (*echo_cmd) return run_echo(echo);
    if (*doctor_cmd) return ferry::tools::doctor_main(doctor_json);
  } catch (const std::exception& e) {  // ferry::Error, and I/O errors on stdin/stdout
    std::fprintf(stderr, "ferry: %s\n", e.what());
    return 1;
  }
  return 2;
}
