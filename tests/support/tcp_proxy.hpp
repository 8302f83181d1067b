// SPDX-License-Identifier: Apache-2.0
// TcpProxy: a loopback TCP forwarder for tests (test support layer). It cuts, refuses, delays,
// splits, drops and corrupts proxied connections on demand, to exercise a transport's failures.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ferry::testing {

/// Which way bytes travel through the proxy: from the connecting side (the client) to the
/// target (the server), or back.
enum class Direction { client_to_server, server_to_client };

/// Forwards every connection accepted on 127.0.0.1:port() to target_host:target_port, both
/// ways, on one background I/O thread. EOF is propagated as a half-close (shutdown of the
/// sending side), a reset or an error on either side resets both sides.
///
/// Faults are all off by default and can be changed at any time from any thread; a change
/// applies from the next piece of data forwarded. The forwarding pipeline for every chunk read
/// from one side is: split into pieces of at most max_chunk bytes; for each piece in order:
/// drop it (probability), else flip one random bit in it (probability), truncate it to what
/// an armed cut_after_bytes still allows, wait the delay, write it to the other side.
///
/// Thread safety: every member function may be called from any thread, concurrently.
class TcpProxy {
 public:
  /// Resolves the target (not connected until a client arrives) and starts listening on
  /// 127.0.0.1, port 0 (an ephemeral port), before returning. Blocks briefly; does not wait
  /// for anything on the network. Throws std::system_error if the target cannot be resolved
  /// or the listening socket cannot be set up.
  TcpProxy(std::string target_host, std::uint16_t target_port);
  /// Resets every connection, stops accepting and joins the I/O thread. Bounded: never waits
  /// on a peer.
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  /// The local port clients connect to (on 127.0.0.1).
  std::uint16_t port() const;

  /// Resets every current connection, both sides (SO_LINGER 0 then close: each endpoint sees
  /// ECONNRESET, or EOF, at its next read). Connections the kernel has completed but the
  /// proxy has not accepted yet are reset too. New connections are accepted afterwards as
  /// usual. Blocks until done (it runs on the I/O thread; throws std::runtime_error if that
  /// thread does not answer within 10 s, which would be a bug).
  void cut_all();

  /// While true, each newly accepted connection is reset at once, before any connection to
  /// the target is made (the client's connect succeeds, its first read sees a reset): the
  /// server looks unreachable. Existing connections are not affected.
  void set_refuse(bool refuse);

  /// Arms a one-shot cut. Counting starts now on connections already open and at their start
  /// on connections opened later; on each, bytes forwarded in direction `d` count against
  /// `n`. The first connection to reach n bytes gets exactly n bytes forwarded in `d` (a chunk
  /// crossing the limit is truncated), is then reset on both sides once the receiving side
  /// has acknowledged those bytes (waited for at most 2 s), and the cut is disarmed: other
  /// connections and later ones are not cut. n == 0 cuts at the next chunk in `d` without
  /// forwarding any of it. Arming again replaces a cut that has not fired yet.
  void cut_after_bytes(std::uint64_t n, Direction d);
  /// Disarms a cut_after_bytes that has not fired yet.
  void cancel_cut_after_bytes();

  /// Delay before each piece in `d` is written. Reading from the source side pauses while a
  /// piece waits, so the delay also limits throughput (at most one piece per delay).
  void set_delay(Direction d, std::chrono::nanoseconds delay);
  /// Splits forwarded data in `d` into separate writes of at most `max_chunk` bytes (both
  /// sides have TCP_NODELAY, so each write leaves as its own segment). 0: no splitting.
  void set_max_chunk(Direction d, std::size_t max_chunk);
  /// Silently discards each piece in `d` with probability p (the stream loses those bytes;
  /// the connection stays up). Requires: 0 <= p <= 1 (else std::invalid_argument).
  void set_drop_probability(Direction d, double p);
  /// Flips one random bit of each piece in `d` with probability p.
  /// Requires: 0 <= p <= 1 (else std::invalid_argument).
  void set_corrupt_probability(Direction d, double p);
  /// Reseeds the random generator behind drop and corrupt (one generator for both
  /// directions; the default seed is fixed, so runs are reproducible for the same chunking).
  void set_seed(std::uint64_t seed);
  /// Turns every delay, split, drop and corrupt setting off in both directions (refuse and
  /// an armed cut are left as they are).
  void clear_faults();

  /// Connections accepted since construction, including refused ones.
  std::uint64_t connections_accepted() const;
  /// Connections reset at once because set_refuse(true) was in force.
  std::uint64_t connections_refused() const;
  /// Connections reset by cut_all() or by a cut_after_bytes that fired.
  std::uint64_t connections_cut() const;
  /// Connections currently proxied (accepted, not yet closed or reset).
  std::uint64_t active_connections() const;
  /// Bytes written to the receiving side in `d`, over all connections.
  std::uint64_t bytes_forwarded(Direction d) const;
  /// Writes made in `d` (pieces forwarded), over all connections.
  std::uint64_t chunks_forwarded(Direction d) const;
  /// Pieces discarded in `d` by set_drop_probability.
  std::uint64_t chunks_dropped(Direction d) const;
  /// Pieces in `d` that had a bit flipped by set_corrupt_probability.
  std::uint64_t chunks_corrupted(Direction d) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> m_impl;
};

}  // namespace ferry::testing
