// SPDX-License-Identifier: Apache-2.0
// The sending half every transport shares: the writer role of one link (whoever wins it in
// kick() writes, one thread at a time, on any thread) and the batch it writes. Layer: src/core.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

#include "core/frame_reader.hpp"
#include "core/session.hpp"
#include "framing/batch.hpp"

namespace ferry::detail {

/// Not thread-safe beyond claim()/want_keepalive(): the batch, the record and pending belong
/// to the role's holder.
class LinkWriter {
 public:
  explicit LinkWriter(std::size_t merge_size) : batch(merge_size) {}

  /// kick(): there is something to send. True when this thread won the writer role: it must
  /// write (next()) or hand the role on, and finally give it up with release() or drop().
  bool claim() noexcept {
    // sync(link.want_write) seq_cst store: a writer that is finishing must see it (its seq_cst
    // load in release()), or this thread's exchange below must see the writer gone.
    // Store-then-load on both sides: seq_cst on all four, as in the ring's wait handshake.
    m_want_write.store(true, std::memory_order_seq_cst);
    // sync(link.writing) seq_cst exchange: partner of the seq_cst store of false in release()
    // and drop(). Winning it makes this thread the writer.
    return !m_writing.exchange(true, std::memory_order_seq_cst);
  }

  /// The keep-alive timer asks for a keep-alive frame with the next batch (then kick()).
  void want_keepalive() noexcept {
    // relaxed: read by next(), ordered by claim()'s seq_cst store of m_want_write.
    m_keepalive_due.store(true, std::memory_order_relaxed);
  }

  /// Role holder: fills batch and record from the session. True: a write starts (pending is
  /// set; answer it with session.written()/write_failed() and clear pending). False: nothing
  /// is due and the role was given up (or handed to a concurrent kick()).
  bool next(Session& session) {
    for (;;) {
      // sync(link.want_write) seq_cst store: clear before filling; a kick() after it re-arms it.
      m_want_write.store(false, std::memory_order_seq_cst);
      batch.clear();
      record.clear();
      // relaxed: a hint set by the keep-alive timer; losing a race only delays the keep-alive.
      const bool keepalive = m_keepalive_due.exchange(false, std::memory_order_relaxed);
      if (session.fill(batch, record, keepalive)) {
        pending = true;
        return true;
      }
      if (!release()) return false;
    }
  }

  /// Role holder: gives the role up. True when a kick() that came meanwhile left the work to
  /// us and the role was taken back (the caller writes again); false when nothing is due or
  /// the kick() took the role itself.
  bool release() noexcept {
    // sync(link.writing) seq_cst store: partner of the exchange in claim().
    m_writing.store(false, std::memory_order_seq_cst);
    // sync(link.want_write) seq_cst load: pairs with the store in claim(); a kick that came
    // before the store above is seen here (or its exchange saw writing == false).
    if (!m_want_write.load(std::memory_order_seq_cst)) return false;
    // sync(link.writing) seq_cst exchange: reclaim the writer role unless a kick() took it.
    return !m_writing.exchange(true, std::memory_order_seq_cst);
  }

  /// Role holder: gives the role up without looking for more work (the link is not running
  /// or has failed; run() kicks again once it runs).
  void drop() noexcept {
    // sync(link.writing) seq_cst store: partner of the exchange in claim().
    m_writing.store(false, std::memory_order_seq_cst);
  }

  framing::Batch batch;
  WriteRecord record;
  bool pending = false;  // record awaits written()/write_failed()

 private:
  std::atomic<bool> m_writing{false};
  std::atomic<bool> m_want_write{false};
  std::atomic<bool> m_keepalive_due{false};
};

/// A handshake is done: `reader` takes the session's frames from `next_expected` on and
/// `writer` sends them, both with checksum trailers when the hello's `flags` agreed them
/// (framing::kHelloChecksums). Before the link runs (the writer role is not held yet).
inline void start_framing(FrameReader& reader, LinkWriter& writer, std::shared_ptr<Session> session,
                          std::uint64_t next_expected, std::uint32_t flags) {
  const bool checksums = (flags & framing::kHelloChecksums) != 0;
  if (session) session->set_checksums(checksums);
  reader.start(std::move(session), next_expected, checksums);
  writer.batch.set_checksums(checksums);
}

}  // namespace ferry::detail
