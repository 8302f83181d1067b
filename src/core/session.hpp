// SPDX-License-Identifier: Apache-2.0
// A session: everything Ferry keeps about one peer across connections — the messages queued
// for it until acknowledged (for resending after a dropped connection), message ids in both
// directions, flow control and the close handshake. Layer: src/core.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include <ferry/communicator.hpp>
#include <ferry/options.hpp>
#include <ferry/peer_id.hpp>

#include "core/link.hpp"
#include "core/put_state.hpp"
#include "framing/batch.hpp"
#include "framing/frame.hpp"

namespace ferry::detail {

class CommunicatorImpl;

/// What one write carries beyond its bytes: the payloads it references (kept alive until the
/// write completes) and the ids of the messages whose last chunk it holds.
struct WriteRecord {
  std::vector<std::shared_ptr<const Payload>> payloads;
  std::vector<std::uint64_t> completed_ids;
  bool close = false;
  /// fill() stopped because the batch was full, with more data due (not held by the send
  /// window, whose ack kicks the link): the writer must go on without waiting for a kick.
  bool more = false;
  /// Scratch for written(): the put states to mark sent once the session lock is released.
  std::vector<std::pair<std::shared_ptr<PutState>, std::uint32_t>> sent;
  void clear() {
    payloads.clear();
    completed_ids.clear();
    close = false;
    more = false;
    sent.clear();
  }
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  enum class State { live, detached, ended };

  Session(CommunicatorImpl& owner, const PeerId& peer, const ConnectionOptions& options);

  [[nodiscard]] const PeerId& peer() const noexcept { return m_peer; }

  // --- put() side (any thread) ---
  /// Queues one peer's part of a put. Errc{} or the error that fails this slot at once.
  [[nodiscard]] Errc enqueue(const std::shared_ptr<PutState>& state, std::uint32_t slot,
                             const std::shared_ptr<const Payload>& payload);

  // --- connection set-up (transport threads, before the link reads or writes) ---
  /// What this side says in its hello for this session.
  void fill_hello(framing::Hello& hello) const;
  /// Binds a handshaken link. peer is the peer's hello; resumed says whether the session
  /// continues (messages the peer has are dropped, the rest resent from offset 0). Returns the
  /// id the reader must expect next, or an error (why set) when the peer's ids are
  /// inconsistent with ours.
  [[nodiscard]] Errc attach(const std::shared_ptr<Link>& link, const framing::Hello& peer,
                            bool resumed, std::uint64_t& next_expected, std::string& why);

  // --- the link's writer (one at a time) ---
  /// Adds what is due to the batch: an ack, a keep-alive (if asked and nothing else is due),
  /// data chunks within the send window, then the close frame. False if nothing was added.
  /// True starts a write: the link must then call written() or write_failed() exactly once,
  /// when the write no longer reads the batch's buffers.
  bool fill(framing::Batch& batch, WriteRecord& record, bool keepalive);
  /// The batch was written completely.
  void written(WriteRecord& record);
  /// The batch will not be written (the connection failed or was aborted): its buffers are
  /// no longer read. What it carried is resent on the next connection or fails with the end.
  void write_failed(WriteRecord& record);

  // --- the link's reader (one at a time) ---
  /// Payload bytes arrived on this connection (for the ack's flow-control count).
  void received_bytes(std::uint64_t n);
  /// A whole message of `bytes` was delivered to the receive queue (ids in order).
  void delivered_one(std::uint64_t bytes);
  /// Asks the writer to send an ack (once per read batch). Kicks the link.
  void ack_due();
  /// The current connection's frames carry checksums (shown in stats()).
  void set_checksums(bool on);
  /// A connection of this session failed on damaged bytes (checksums on); `progressed`: some
  /// of its frames checked out first. Returns how many damaged connections came in a row
  /// without progress: a peer that only ever sends damage is not resumed forever.
  unsigned damaged_connection(bool progressed);
  [[nodiscard]] Errc on_ack(std::uint64_t delivered_id, std::uint64_t received, std::string& why);
  /// The peer sent a close frame with this reason.
  void on_peer_close(Errc reason);

  // --- life cycle ---
  /// The link dropped (EOF, reset, timeout, bad input): detach it, then resume or end.
  /// resumable false: the peer cannot come back (its process is known to be dead): end now.
  void link_down(const Link* link, std::error_code why, bool resumable = true);
  /// Starts a clean close: flush, send the close frame, wait for the peer's.
  void begin_close();
  /// Ends the session: fails every pending put with why, drops the link. Idempotent. Puts
  /// that a write in flight may still read fail only when that write is over (written() or
  /// write_failed()), so a caller never frees a borrowed buffer the kernel is reading.
  void end(std::error_code why);
  [[nodiscard]] State state() const;
  /// True once nothing is queued to the peer (all acknowledged) or the session ended.
  [[nodiscard]] bool drained() const;
  [[nodiscard]] std::shared_ptr<Link> link() const;
  void stats(PeerStats& out) const;
  /// Increments each time the session detaches (an expiry timer checks it is still the one).
  [[nodiscard]] std::uint64_t detach_epoch() const;

  // Receive-queue accounting, guarded by the owner's receive mutex.
  std::uint64_t rx_messages = 0;
  std::uint64_t rx_bytes = 0;
  bool rx_paused = false;

 private:
  struct OutMsg {
    std::uint64_t id;
    std::shared_ptr<PutState> state;
    std::shared_ptr<const Payload> payload;
    std::uint32_t slot;
  };
  /// A write ended (written or failed): fails what end() set aside once none is in flight.
  void write_over_locked(std::vector<OutMsg>& fail_now) noexcept;
  void fail_parked(std::vector<OutMsg>& fail_now) const;

  CommunicatorImpl& m_owner;
  const PeerId m_peer;
  const ConnectionOptions m_options;

  mutable std::mutex m_mutex;
  State m_state = State::live;
  std::error_code m_end_error;
  std::shared_ptr<Link> m_link;
  std::uint64_t m_connects = 0;
  std::uint64_t m_detach_epoch = 0;
  // What the peer accepts (from its hello).
  std::uint64_t m_peer_max_message = 0;
  std::uint32_t m_peer_max_chunk = 0;
  // Send side.
  std::deque<OutMsg> m_out;          // unacknowledged, in id order
  std::size_t m_cursor = 0;          // index in m_out of the next message to write
  std::uint64_t m_cursor_offset = 0; // bytes of it already written
  std::uint64_t m_next_send_id = 1;
  std::uint64_t m_out_bytes = 0;
  std::uint64_t m_dispatched_id = 0;   // highest id fully handed to a write
  std::uint64_t m_conn_sent = 0;       // payload bytes handed to writes on this connection
  std::uint64_t m_conn_acked = 0;      // of those, received by the peer (its acks)
  std::uint64_t m_peer_delivered = 0;  // highest id the peer acknowledged
  std::uint32_t m_writes_in_flight = 0;  // fill() calls not yet answered by written()/write_failed()
  std::vector<OutMsg> m_fail_after_write;  // ended while a write was in flight: fail when it is over
  std::error_code m_fail_after_write_why;
  // Receive side.
  std::uint64_t m_next_expected = 1;
  std::uint64_t m_conn_received = 0;
  bool m_ack_due = false;
  bool m_checksums = false;
  unsigned m_damaged_in_a_row = 0;
  std::uint64_t m_acked_delivered = 0;  // what our last ack frame said
  std::uint64_t m_acked_received = 0;
  // Close handshake.
  bool m_close_due = false;   // send a close frame once the data is out
  bool m_close_sent = false;
  bool m_peer_closed = false;
  Errc m_close_reason{};
  // Stats.
  std::uint64_t m_messages_sent = 0, m_bytes_sent = 0;
  std::uint64_t m_messages_received = 0, m_bytes_received = 0;
};

}  // namespace ferry::detail
