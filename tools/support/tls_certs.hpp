// SPDX-License-Identifier: Apache-2.0
// TlsCerts: a throw-away CA and certificates (EC P-256) generated with the openssl CLI into a
// fresh temporary directory, for the TLS tests and ferry-bench's TLS runs (tools/ layer).
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

namespace ferry::testing {

/// What a command run by run_command() did.
struct CommandResult {
  int exit_code = -1;  // exit status; 128 + signal if killed by a signal; -1 if timed out
  std::string output;  // stdout and stderr, interleaved
};

/// Runs argv (argv[0] is looked up in PATH) with posix_spawn, capturing stdout and stderr,
/// and waits at most `timeout` (then kills it and reports exit_code -1). Blocks the caller.
/// Throws std::runtime_error if the program cannot be started.
CommandResult run_command(const std::vector<std::string>& argv,
                          std::chrono::milliseconds timeout = std::chrono::seconds(30));

/// Generates, in a new directory made with mkdtemp under $TMPDIR (or /tmp):
/// - ca.pem / ca.key: a self-signed CA (CN "Ferry Test CA");
/// - server.pem / server.key: a server certificate signed by the CA (subjectAltName
///   DNS:localhost, IP:127.0.0.1, IP:::1; extendedKeyUsage serverAuth); server.pem holds the
///   chain: the server certificate, then the CA certificate;
/// - client.pem / client.key: a client certificate (CN "ferry-test-client") signed by the CA,
///   extendedKeyUsage clientAuth, for mutual TLS;
/// - wrong_ca.pem / wrong_ca.key: an unrelated self-signed CA;
/// - wrong_host.pem / wrong_host.key: a server certificate signed by the real CA for
///   DNS:example.invalid only (chain like server.pem), for hostname-mismatch tests.
/// Keys are EC P-256 in PKCS#8 PEM, mode 0600. Certificates are valid from now for 2 days.
/// The constructor blocks while openssl runs (about 5 invocations, well under 1 s) and throws
/// std::runtime_error, with openssl's output, if any step fails. The program is "openssl"
/// from PATH, or $FERRY_OPENSSL if set. The destructor removes the directory.
///
/// Thread safety: the accessors are const and may be called from any thread.
class TlsCerts {
 public:
  TlsCerts();
  ~TlsCerts();
  TlsCerts(const TlsCerts&) = delete;
  TlsCerts& operator=(const TlsCerts&) = delete;
  /// The moved-from object owns nothing (its paths are relative names under an empty dir).
  TlsCerts(TlsCerts&& other) noexcept;
  TlsCerts& operator=(TlsCerts&& other) noexcept;

  const std::filesystem::path& dir() const { return m_dir; }
  std::filesystem::path ca() const { return m_dir / "ca.pem"; }
  std::filesystem::path ca_key() const { return m_dir / "ca.key"; }
  std::filesystem::path server_chain() const { return m_dir / "server.pem"; }
  std::filesystem::path server_key() const { return m_dir / "server.key"; }
  std::filesystem::path client_cert() const { return m_dir / "client.pem"; }
  std::filesystem::path client_key() const { return m_dir / "client.key"; }
  std::filesystem::path wrong_ca() const { return m_dir / "wrong_ca.pem"; }
  std::filesystem::path wrong_ca_key() const { return m_dir / "wrong_ca.key"; }
  std::filesystem::path wrong_host_chain() const { return m_dir / "wrong_host.pem"; }
  std::filesystem::path wrong_host_key() const { return m_dir / "wrong_host.key"; }

 private:
  void generate();
  void remove() noexcept;

  std::filesystem::path m_dir;
};

}  // namespace ferry::testing
