// SPDX-License-Identifier: Apache-2.0
// The receiving half every byte-stream transport shares (TCP reads, shared-memory ring
// records): parses frames out of the bytes as they arrive, reassembles messages into the
// receive queue, and decides when to wake get() and when to acknowledge. Layer: src/core.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include <ferry/error.hpp>

#include "framing/frame.hpp"
#include "framing/reassembler.hpp"

namespace ferry::detail {

class CommunicatorImpl;
class Session;

/// One connection's reader. Not thread-safe: one reader at a time (the transport's strand).
class FrameReader {
 public:
  explicit FrameReader(CommunicatorImpl& owner);

  /// A connection is handshaken: frames go to `session`, the next message is `next_expected`;
  /// `checksums`: every frame carries a CRC-32C trailer (framing::kHelloChecksums agreed).
  void start(std::shared_ptr<Session> session, std::uint64_t next_expected, bool checksums = false);

  /// Takes bytes of the stream. Returns how many were consumed: all of `in`, unless the
  /// receive queue filled (paused(); feed the rest after resume()) or the input is bad
  /// (error set, with why; the connection must fail). A frame header split across calls is
  /// kept here until it is whole.
  std::size_t feed(std::span<const std::byte> in, Errc& error, std::string& why);

  /// A data chunk is in progress: its remaining bytes may be written straight into
  /// chunk_target() and announced with advance(), then feed({}) completes the message.
  [[nodiscard]] bool in_payload() const noexcept { return m_in_payload; }
  [[nodiscard]] std::span<std::byte> chunk_target() noexcept { return m_reassembler.chunk_target(); }
  void advance(std::size_t n) noexcept;

  /// Close frames are left to the transport's own thread: feed() stops after one
  /// (close_pending()) until apply_close() hands it to the session. For reads on a caller's
  /// thread (get()), where a session's end must not run the user's callbacks.
  void set_defer_close(bool on) noexcept { m_defer_close = on; }
  [[nodiscard]] bool close_pending() const noexcept { return m_close_pending; }
  void apply_close();

  /// The receive queue was full: reading must wait until the link's resume_reading().
  [[nodiscard]] bool paused() const noexcept { return m_paused; }
  void resume() noexcept { m_paused = false; }

  /// After a read round: wakes get() once per burst and acknowledges when due.
  /// source_idle: nothing more is readable right now; buffered_empty: the transport holds no
  /// unconsumed bytes (what it still holds waits for resume()).
  void end_round(bool source_idle, bool buffered_empty);
  /// A round made progress that end_round() has not settled yet (whether the source is idle
  /// costs a system call in TCP: ask only then).
  [[nodiscard]] bool round_open() const noexcept { return m_round_progress || m_round_delivered || m_unacked; }
  /// Wakes get() for messages delivered since the last wake-up (the link is going away).
  void wake_pending();
  /// Messages delivered to the receive queue so far.
  [[nodiscard]] std::uint64_t delivered() const noexcept { return m_delivered; }
  /// Checksums were agreed for this connection (start()).
  [[nodiscard]] bool checksums() const noexcept { return m_checksums; }
  /// Checksums on: bad bytes before a frame's checksum vouched for it are damage in transit
  /// (peer_lost, resumable), not the peer's protocol error; after kMaxDamagedInARow damaged
  /// connections in a row without one verified frame, protocol_error (the session ends).
  /// Also for what a transport wraps the frames in (an MQTT publish header) once started.
  void damaged(Errc& error, std::string& why, const std::string& what);

 private:
  void wake_getters();
  /// A whole (and, with checksums, verified) frame takes effect. False: stop feeding (error
  /// set, or a deferred close).
  bool apply(const framing::FrameHeader& h, Errc& error, std::string& why);
  CommunicatorImpl& m_owner;
  std::shared_ptr<Session> m_session;
  framing::Reassembler m_reassembler;
  std::array<std::byte, framing::kHeaderSize> m_carry{};  // a header split across feeds
  std::size_t m_carry_len = 0;
  bool m_in_payload = false;
  bool m_checksums = false;
  bool m_in_trailer = false;                                // the frame in m_pending waits for its trailer
  framing::FrameHeader m_pending{};
  std::uint32_t m_crc = 0;                                  // of m_pending's header and payload
  std::array<std::byte, framing::kTrailerSize> m_trailer{};
  std::size_t m_trailer_len = 0;
  std::uint64_t m_verified = 0;  // frames whose checksum matched on this connection
  bool m_paused = false;
  bool m_defer_close = false;
  bool m_close_pending = false;
  Errc m_close_reason{};
  std::uint64_t m_round_bytes = 0;    // payload bytes taken in this read round
  bool m_round_progress = false;      // a data frame arrived in this round
  bool m_round_delivered = false;     // messages went to the receive queue, get() not woken yet
  unsigned m_unwoken_rounds = 0;      // read rounds since get() was last woken
  std::uint64_t m_unwoken_bytes = 0;  // bytes delivered since get() was last woken
  std::uint64_t m_delivered = 0;
  std::uint64_t m_unacked_bytes = 0;  // payload bytes received since the last ack request
  bool m_unacked = false;             // frames arrived since the last ack request
};

}  // namespace ferry::detail
