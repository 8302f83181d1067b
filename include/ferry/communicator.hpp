// SPDX-License-Identifier: Apache-2.0
// ferry::Communicator and ferry::open(): one API for every transport. Public API (pimpl: no
// Boost, OpenSSL or transport header reaches users).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include <ferry/message.hpp>
#include <ferry/options.hpp>
#include <ferry/peer_id.hpp>
#include <ferry/put_handle.hpp>

namespace ferry {

namespace detail {
class CommunicatorImpl;
struct Access;  // internal (src/core/access.hpp): the library's own tests reach the implementation
}

/// One peer's connection as stats() sees it.
struct PeerStats {
  PeerId id;
  std::string transport;  ///< "tcp", "tls", "shm"
  /// How the transport runs: for shm the ring size and the page size backing it.
  std::string transport_detail;
  std::string remote;     ///< the peer's address as the transport sees it
  bool connected = false;
  /// Frames on the current connection carry CRC-32C trailers (ConnectionOptions::checksums).
  bool checksums = false;
  std::uint64_t connects = 0;  ///< 1 + the number of resumed reconnections
  std::uint64_t messages_sent = 0, bytes_sent = 0;          ///< payload, acknowledged
  std::uint64_t messages_received = 0, bytes_received = 0;  ///< payload, delivered to get()
  std::uint64_t messages_queued = 0, bytes_queued = 0;      ///< to this peer, not yet acknowledged
};

struct Stats {
  std::vector<PeerStats> peers;
  std::uint64_t receive_queue_messages = 0, receive_queue_bytes = 0;
  /// The transport of one peer ("" when unknown).
  [[nodiscard]] std::string transport_of(const PeerId& peer) const {
    for (const auto& p : peers) {
      if (p.id == peer) return p.transport;
    }
    return {};
  }
};

/// A server or a client. Move-only; thread-safe: any thread may put, get and close.
class Communicator {
 public:
  Communicator(Communicator&&) noexcept;
  Communicator& operator=(Communicator&&) noexcept;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  /// Closes (see close()), swallowing its errors.
  ~Communicator();

  [[nodiscard]] const PeerId& id() const noexcept;
  [[nodiscard]] Purpose purpose() const noexcept;
  /// The endpoint actually in use: for a server bound to port 0, the port it got.
  [[nodiscard]] std::string local_endpoint() const;

  /// Queues a message and returns at once: never blocks on the network. Without peers a
  /// client sends to its server and a server to every connected client (the bytes are shared,
  /// not copied per peer). FIFO per (sender, receiver). Failures go to the handle, never
  /// thrown: Errc::closed after close(), Errc::not_found for a peer that is not connected (or
  /// a client naming a peer other than its server), Errc::message_too_large over the peer's
  /// limit, Errc::would_block when a peer's send queue is full.
  PutHandle put(Payload payload, std::span<const PeerId> peers = {});
  /// put() of any value with a Codec: Bytes/std::string rvalues are moved, other values
  /// encoded; a span is copied (use Payload::borrow to avoid the copy).
  template <class T, class... P>
    requires(std::conjunction_v<std::is_convertible<const P&, const PeerId&>...>)
  PutHandle put(T&& value, const P&... peers) {
    const PeerId list[sizeof...(P) + 1] = {peers..., PeerId{}};
    return put(to_payload(std::forward<T>(value)), std::span<const PeerId>(list, sizeof...(P)));
  }

  /// Blocks for the next message from any peer (one arrival order across peers). Throws
  /// ferry::Error: Errc::closed once closed and drained; a client also Errc::peer_lost once its
  /// session with the server is lost and drained.
  [[nodiscard]] Message get();
  /// As get(), but std::nullopt when the timeout passes first.
  [[nodiscard]] std::optional<Message> get_for(std::chrono::nanoseconds timeout);
  /// The next message if one is queued, else std::nullopt. Never blocks, never throws.
  [[nodiscard]] std::optional<Message> try_get() noexcept;

  /// Ends every session cleanly: waits (up to close_timeout) for queued messages to be
  /// acknowledged, tells the peers, stops. Idempotent. Messages already received stay readable
  /// by get(), which then throws Errc::closed; pending puts fail with Errc::closed.
  void close();
  [[nodiscard]] bool closed() const noexcept;

  /// Connected peers (a client: its server, once connected).
  [[nodiscard]] std::vector<PeerId> peers() const;
  [[nodiscard]] Stats stats() const;

 private:
  friend Communicator open(Purpose, Options);
  friend struct detail::Access;
  explicit Communicator(std::unique_ptr<detail::CommunicatorImpl> impl) noexcept;

  template <class T>
  static Payload to_payload(T&& value) {
    using D = std::remove_cvref_t<T>;
    if constexpr (std::is_same_v<D, Payload>) {
      return Payload(std::forward<T>(value));
    } else if constexpr ((std::is_same_v<D, Bytes> || std::is_same_v<D, std::string>) &&
                         std::is_rvalue_reference_v<T&&>) {
      return Payload(std::move(value));
    } else if constexpr (std::is_convertible_v<const T&, std::span<const std::byte>>) {
      return Payload::copy(std::span<const std::byte>(value));
    } else if constexpr (std::is_convertible_v<const T&, std::string_view>) {
      return Payload::copy(std::string_view(value));
    } else {
      return Payload::encode<D>(value);
    }
  }

  std::unique_ptr<detail::CommunicatorImpl> m_impl;
};

/// Creates a server (listening before open() returns) or a client (connected and handshaken
/// before open() returns, within connect_timeout). Throws ferry::Error: Errc::invalid_argument
/// for a bad endpoint or option (the message names it), Errc::address_in_use,
/// Errc::timed_out, Errc::permission_denied, Errc::version_mismatch, Errc::protocol_error,
/// Errc::unavailable (a transport not built in).
[[nodiscard]] Communicator open(Purpose purpose, Options options = {});

}  // namespace ferry
