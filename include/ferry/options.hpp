// SPDX-License-Identifier: Apache-2.0
// ferry::Options: everything open() needs, as a plain aggregate with defaults. Public API.
#pragma once

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <system_error>
#include <vector>

#include <ferry/peer_id.hpp>

namespace ferry {

/// A server accepts clients and may address any of them; a client talks to one server.
enum class Purpose { server, client };

/// Limits and timings of every connection (net-queue's ConnectionOptions, plus the bounds and
/// keep-alives it lacks). All sizes are bytes.
struct ConnectionOptions {
  /// Client: every frame both ways carries a CRC-32C of its header and payload, checked before
  /// it takes effect; a mismatch (or bytes that make no valid frame before a checksum vouched
  /// for them) fails the connection as lost (Errc::peer_lost), the session resumes and resends
  /// what was not acknowledged, so bytes lost or altered on the way (a faulty proxy, a broker)
  /// never reach get(). Nine damaged connections in a row without one good frame end the
  /// session with Errc::protocol_error. Over tcp, tls, grpc, grpcs, mqtt and mqtts (the
  /// server follows the client; PeerStats::checksums says whether a connection uses them);
  /// shm:// has no wire and ignores it. Off by default: TCP's checksum and TLS's record MACs
  /// cover the usual paths, and the CRC costs a pass over every message on each side.
  bool checksums = false;
  /// Largest chunk a message is split into on the wire (net-queue's protocol_size).
  std::size_t transport_size = std::size_t{1} << 20;
  /// Small frames queued together are merged into one write up to this size
  /// (net-queue's efficient_size).
  std::size_t merge_size = std::size_t{64} << 10;
  /// Largest message this side accepts; a larger one is refused with
  /// Errc::message_too_large, never split. At most 1 TiB (open() refuses more).
  std::size_t message_size = std::size_t{1} << 30;
  /// Bytes a peer may have written but not yet acknowledged; beyond it put handles stay
  /// pending until acknowledgements arrive (back-pressure).
  std::size_t send_window = std::size_t{32} << 20;
  /// Messages and bytes queued for one peer (sent or not, until acknowledged). A put beyond
  /// either fails for that peer with Errc::would_block: put() never blocks and never drops.
  std::size_t send_queue_messages = std::size_t{1} << 20;
  std::size_t send_queue_bytes = std::size_t{1} << 30;
  /// Messages and bytes received from one peer and not yet taken by get(). When either is
  /// reached Ferry stops reading from that peer (the peer's puts stay pending); other peers
  /// are not affected. A single message larger than the byte bound is still admitted when
  /// that peer has nothing queued.
  std::size_t receive_queue_messages = std::size_t{1} << 16;
  std::size_t receive_queue_bytes = std::size_t{32} << 20;
  /// Server: live connections beyond this are refused in the handshake.
  std::size_t max_connections = 1024;

  /// Client: how long open() and each reconnection attempt series may take.
  std::chrono::milliseconds connect_timeout{10'000};
  /// A connection that has not completed the (TLS and) Ferry handshake by then is dropped.
  std::chrono::milliseconds handshake_timeout{5'000};
  /// A keep-alive is sent when nothing else was sent for this long...
  std::chrono::milliseconds keepalive_interval{1'000};
  /// ...and a peer that sent nothing for this long is declared lost (Errc::peer_lost).
  std::chrono::milliseconds keepalive_timeout{5'000};
  /// After a dropped connection a session is kept this long for the client to reconnect
  /// with the same id and resume (unacknowledged messages resent, duplicates suppressed).
  /// Its pending puts fail with Errc::peer_lost when it expires. Zero: no resumption.
  std::chrono::milliseconds resume_timeout{10'000};
  /// close() waits at most this long for queued messages to be acknowledged.
  std::chrono::milliseconds close_timeout{5'000};
};

/// TLS material for tls:// endpoints. Paths to PEM files.
struct SecurityOptions {
  /// Server: its private key and certificate chain (required for tls://). Client: its own key
  /// and certificate for mutual TLS (optional).
  std::filesystem::path key;
  std::filesystem::path certificate;
  /// Client: CA certificates that verify the server (empty: the system store).
  /// Server: CA certificates that verify client certificates.
  std::filesystem::path ca;
  /// Client: check that the server's certificate names the host it connects to
  /// (server_name if set, otherwise the endpoint's host).
  bool verify_hostname = true;
  std::string server_name;
  /// Server: refuse clients without a certificate signed by `ca` (mutual TLS).
  bool require_client_certificate = false;
};

/// Shared memory: shm:// endpoints and the local leg of auto://.
struct ShmOptions {
  /// Bytes of each ring, one per direction per client (created by the server): a power of
  /// two in [64 KiB, 1 GiB]. Messages larger than a ring stream through it in pieces.
  std::size_t ring_size = std::size_t{1} << 20;
  /// Back the rings with hugepages when the host has them (2 MiB pages, then normal pages
  /// with transparent hugepages advised); stats() says which page size is in use.
  bool huge_pages = true;
  /// Directory of the rendezvous sockets (`<directory>/<name>.sock`); both sides must use the
  /// same one. Empty: $FERRY_SHM_DIR, else $XDG_RUNTIME_DIR/ferry, else /tmp/ferry-<uid>,
  /// created owner-only (0700) and refused when another user owns it or can write to it. To
  /// serve other users, name a directory they can reach.
  std::filesystem::path directory;
  /// Server: besides its own user, these users and groups (the connecting process's uid and
  /// primary gid, as the kernel reports them) may connect; anyone else is refused with
  /// Errc::permission_denied. Non-empty lists make the socket file world-connectable (0666):
  /// the check is this list.
  std::vector<std::uint32_t> allow_uids;
  std::vector<std::uint32_t> allow_gids;
  /// A get() that finds nothing polls its rings this long before it sleeps (the peer writes
  /// from another process, so this takes no CPU from it), and Ferry's I/O thread polls as long
  /// after the last message before it sleeps (not when the process may run on one CPU only,
  /// where it would compete with the thread in get()). A message that follows closely then
  /// costs no wake-up. At most 10 ms.
  std::chrono::microseconds spin{20};
};

/// The directory of shm:// rendezvous sockets these options name (ShmOptions::directory, or the
/// default it describes). Does not create or check it.
[[nodiscard]] std::filesystem::path shm_directory(const ShmOptions& options = {});

/// MQTT: mqtt:// and mqtts:// endpoints (mqtts: TLS to the broker, with SecurityOptions' ca,
/// and certificate and key when the broker wants client certificates). The server and each of
/// its clients are clients of the broker; topics live under the endpoint's prefix.
struct MqttOptions {
  /// The broker's credentials (MQTT username and password); empty: none.
  std::string username;
  std::string password;
  /// 1 (the default): the broker acknowledges each publish and queues publishes for a
  /// subscriber that is briefly behind. 0: no broker acknowledgements; a publish the broker
  /// drops is detected by its sequence number, counted (stats' transport_detail: "lost") and
  /// resent by resuming the session. Either way Ferry's own acknowledgements make delivery end
  /// to end; a message is lost only when the session itself ends.
  int qos = 1;
  /// The largest publish (payload bytes); a larger batch goes in several publishes. paho
  /// finishes a publish that does not fit the socket's free send buffer only when its poll
  /// times out (1 s) unless something arrives, so publishes stay well below the buffer.
  std::size_t publish_size = std::size_t{256} << 10;
  /// Publishes and bytes one side may have sent on a connection that its peer has not
  /// acknowledged (each side tells the other the window it accepts). The server is one broker
  /// client for all its connections: keep the count times the busy connections below the
  /// broker's per-client queue (Mosquitto 2: max_queued_messages, 1000 by default), beyond
  /// which it drops publishes (each drop then costs a resumption).
  std::size_t window_publishes = 64;
  std::size_t window_bytes = std::size_t{1} << 20;
  /// The longest a side waits for the broker to say whether a server's presence is retained
  /// on <prefix>/server (normally known after one round trip to the broker). A client that
  /// finds none reports that no server is there (retried until connect_timeout); a server
  /// that finds another server's refuses to start (address_in_use).
  std::chrono::milliseconds presence_wait{1000};
};

/// Everything open() needs. Thread-safety of the callbacks: they run on a Ferry worker thread,
/// must not block, and must not call close() on the same communicator.
struct Options {
  /// This side's id; a client reusing an id resumes its session.
  PeerId id = PeerId::random();
  /// Where a server listens or a client connects: see ferry::Endpoint.
  std::string endpoint = "tcp://127.0.0.1:51966";
  ConnectionOptions connection{};
  SecurityOptions security{};
  ShmOptions shm{};
  MqttOptions mqtt{};
  /// Threads that run the network I/O (one event loop shared by every connection).
  unsigned workers = 1;
  /// A blocking get() that finds nothing polls the receive queue this long before it sleeps:
  /// a round trip then costs no wake-up on either side (see the README for loopback figures)
  /// at the price of a busy CPU while it polls. Zero (the default) sleeps at once; ignored
  /// when the process may run on one CPU only. At most 10 ms.
  std::chrono::microseconds receive_spin{0};
  /// A peer connected (or reconnected and resumed its session).
  std::function<void(const PeerId&)> on_connect;
  /// A peer's connection ended: Errc::closed for a clean close, Errc::peer_lost for EOF, a
  /// reset or a keep-alive timeout, Errc::protocol_error for bad input.
  std::function<void(const PeerId&, std::error_code)> on_disconnect;
};

}  // namespace ferry
