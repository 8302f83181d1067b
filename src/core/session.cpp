// SPDX-License-Identifier: Apache-2.0
// Session: send queue until acknowledgement, resumption, flow control, close handshake.
// Layer: src/core.
#include "core/session.hpp"

#include <algorithm>

#include "core/communicator_impl.hpp"

namespace ferry::detail {

Session::Session(CommunicatorImpl& owner, const PeerId& peer, const ConnectionOptions& options)
    : m_owner(owner), m_peer(peer), m_options(options) {}

Errc Session::enqueue(const std::shared_ptr<PutState>& state, std::uint32_t slot,
                      const std::shared_ptr<const Payload>& payload) {
  const std::size_t size = payload->bytes().size();
  std::shared_ptr<Link> link;
  {
    const std::lock_guard lock(m_mutex);
    if (m_state == State::ended || m_close_due || m_close_sent || m_peer_closed) {
      return m_end_error && m_end_error.category() == error_category()
                 ? static_cast<Errc>(m_end_error.value())
                 : Errc::closed;
    }
    if (size > m_peer_max_message) return Errc::message_too_large;
    if (m_out.size() >= m_options.send_queue_messages ||
        (m_out_bytes + size > m_options.send_queue_bytes && !m_out.empty())) {
      return Errc::would_block;
    }
    m_out.push_back(OutMsg{m_next_send_id++, state, payload, slot});
    m_out_bytes += size;
    link = m_link;
  }
  if (link) link->kick();
  return Errc{};
}

void Session::fill_hello(framing::Hello& hello) const {
  const std::lock_guard lock(m_mutex);
  hello.next_expected = m_next_expected;
  hello.first_unacked = m_out.empty() ? m_next_send_id : m_out.front().id;
}

Errc Session::attach(const std::shared_ptr<Link>& link, const framing::Hello& peer, bool resumed,
                     std::uint64_t& next_expected, std::string& why) {
  std::vector<OutMsg> done;
  {
    const std::lock_guard lock(m_mutex);
    if (m_state == State::ended) {
      why = "session already ended";
      return Errc::closed;
    }
    if (resumed) {
      // The peer resends from its first unacknowledged id: it must not skip ids we lack.
      if (peer.first_unacked > m_next_expected) {
        why = "peer resumes from message " + std::to_string(peer.first_unacked) +
              " but message " + std::to_string(m_next_expected) + " never arrived";
        return Errc::protocol_error;
      }
      if (peer.next_expected > m_next_send_id) {
        why = "peer expects message " + std::to_string(peer.next_expected) +
              " which was never sent";
        return Errc::protocol_error;
      }
      while (!m_out.empty() && m_out.front().id < peer.next_expected) {
        m_out_bytes -= m_out.front().payload->bytes().size();
        done.push_back(std::move(m_out.front()));
        m_out.pop_front();
      }
    } else {
      // A new session on the other side: our ids restart from what it says it expects next
      // and from its first message (nothing of it was ever delivered here in this session).
      m_next_expected = peer.first_unacked;
      if (!m_out.empty() && peer.next_expected > m_out.front().id) {
        why = "new session expects message " + std::to_string(peer.next_expected) +
              " beyond our first unacknowledged " + std::to_string(m_out.front().id);
        return Errc::protocol_error;
      }
    }
    m_peer_max_message = peer.max_message;
    m_peer_max_chunk = peer.max_chunk;
    m_cursor = 0;
    m_cursor_offset = 0;
    m_dispatched_id = m_out.empty() ? m_next_send_id - 1 : m_out.front().id - 1;
    m_peer_delivered = m_dispatched_id;
    m_conn_sent = 0;
    m_conn_acked = 0;
    m_conn_received = 0;
    m_ack_due = false;
    m_acked_delivered = m_next_expected - 1;
    m_acked_received = 0;
    m_link = link;
    m_state = State::live;
    ++m_connects;
    next_expected = m_next_expected;
    m_messages_sent += done.size();
    for (const OutMsg& m : done) m_bytes_sent += m.payload->bytes().size();
  }
  for (OutMsg& m : done) m.state->delivered(m.slot);
  return Errc{};
}

bool Session::fill(framing::Batch& batch, WriteRecord& record, bool keepalive) {
  const std::lock_guard lock(m_mutex);
  if (m_state != State::live) return false;
  // An ack when one is due, or riding along with data when the peer's view is stale.
  const bool stale = m_next_expected - 1 != m_acked_delivered || m_conn_received != m_acked_received;
  const auto add_ack = [&] {
    batch.add(framing::FrameHeader{framing::FrameType::ack, 0, m_next_expected - 1,
                                   m_conn_received, 0},
              {});
    m_ack_due = false;
    m_acked_delivered = m_next_expected - 1;
    m_acked_received = m_conn_received;
  };
  if (m_ack_due || (stale && m_cursor < m_out.size())) add_ack();
  const std::uint64_t chunk_limit =
      std::min<std::uint64_t>(m_peer_max_chunk, std::max<std::size_t>(m_options.transport_size, 1));
  while (!batch.full() && m_cursor < m_out.size()) {
    const std::uint64_t in_flight = m_conn_sent - m_conn_acked;
    if (in_flight > 0 && in_flight >= m_options.send_window) break;
    const OutMsg& m = m_out[m_cursor];
    const std::span<const std::byte> bytes = m.payload->bytes();
    const std::uint64_t chunk = std::min<std::uint64_t>(chunk_limit, bytes.size() - m_cursor_offset);
    batch.add(framing::FrameHeader{framing::FrameType::data, static_cast<std::uint32_t>(chunk), m.id,
                                   m_cursor_offset, bytes.size()},
              bytes.subspan(static_cast<std::size_t>(m_cursor_offset), static_cast<std::size_t>(chunk)));
    if (record.payloads.empty() || record.payloads.back() != m.payload) {
      record.payloads.push_back(m.payload);
    }
    m_conn_sent += chunk;
    m_cursor_offset += chunk;
    if (m_cursor_offset == bytes.size()) {
      record.completed_ids.push_back(m.id);
      m_dispatched_id = m.id;
      ++m_cursor;
      m_cursor_offset = 0;
    }
  }
  record.more = batch.full() && m_cursor < m_out.size();
  if (m_close_due && !m_close_sent && !record.close && m_cursor == m_out.size()) {
    // The close frame always follows an ack of everything delivered: the peer fails whatever
    // it has not seen acknowledged when the close arrives.
    if (m_next_expected - 1 != m_acked_delivered) add_ack();
    batch.add(framing::FrameHeader{framing::FrameType::close, 0,
                                   static_cast<std::uint64_t>(m_close_reason), 0, 0},
              {});
    record.close = true;
  }
  if (keepalive && batch.empty()) {
    batch.add(framing::FrameHeader{framing::FrameType::keepalive, 0, 0, 0, 0}, {});
  }
  if (batch.empty()) return false;
  ++m_writes_in_flight;
  return true;
}

void Session::write_over_locked(std::vector<OutMsg>& fail_now) noexcept {
  if (m_writes_in_flight > 0) --m_writes_in_flight;
  // A vector moves out without allocating; an empty one costs nothing per write.
  if (m_writes_in_flight == 0) fail_now.swap(m_fail_after_write);
}

void Session::fail_parked(std::vector<OutMsg>& fail_now) const {
  for (OutMsg& m : fail_now) m.state->fail(m.slot, m_fail_after_write_why);
}

void Session::write_failed(WriteRecord& record) {
  std::vector<OutMsg> fail_now;
  {
    const std::lock_guard lock(m_mutex);
    write_over_locked(fail_now);
  }
  record.clear();
  fail_parked(fail_now);
}

void Session::written(WriteRecord& record) {
  bool end_now = false;
  std::vector<OutMsg> fail_now;
  {
    const std::lock_guard lock(m_mutex);
    if (!record.completed_ids.empty() && !m_out.empty()) {
      const std::uint64_t front = m_out.front().id;
      for (const std::uint64_t id : record.completed_ids) {
        if (id < front) continue;  // acknowledged already
        const std::size_t i = static_cast<std::size_t>(id - front);
        if (i >= m_out.size()) break;
        OutMsg& m = m_out[i];
        // A borrowed payload is "sent" only when acknowledged: a resend may still need it.
        if (!m.state->borrowed()) record.sent.emplace_back(m.state, m.slot);
      }
    }
    if (record.close) {
      m_close_sent = true;
      end_now = m_peer_closed;  // our close answered theirs: done
    }
    write_over_locked(fail_now);  // last: nothing above may throw with the parked puts taken
  }
  // Outside the session lock: a put() on another thread is not held up by the notifications.
  for (auto& [state, slot] : record.sent) state->sent(slot);
  record.sent.clear();
  fail_parked(fail_now);
  if (end_now) end(make_error_code(Errc::closed));
}

void Session::received_bytes(std::uint64_t n) {
  const std::lock_guard lock(m_mutex);
  m_conn_received += n;
}

void Session::delivered_one(std::uint64_t bytes) {
  const std::lock_guard lock(m_mutex);
  ++m_next_expected;
  ++m_messages_received;
  m_bytes_received += bytes;
}

void Session::ack_due() {
  std::shared_ptr<Link> link;
  {
    const std::lock_guard lock(m_mutex);
    m_ack_due = true;
    link = m_link;
  }
  if (link) link->kick();
}

Errc Session::on_ack(std::uint64_t delivered_id, std::uint64_t received, std::string& why) {
  std::vector<OutMsg> done;
  std::shared_ptr<Link> link;
  {
    const std::lock_guard lock(m_mutex);
    if (delivered_id < m_peer_delivered || delivered_id > m_dispatched_id) {
      why = "ack of message " + std::to_string(delivered_id) + " outside [" +
            std::to_string(m_peer_delivered) + ", " + std::to_string(m_dispatched_id) + "]";
      return Errc::protocol_error;
    }
    if (received < m_conn_acked || received > m_conn_sent) {
      why = "ack of " + std::to_string(received) + " bytes outside [" +
            std::to_string(m_conn_acked) + ", " + std::to_string(m_conn_sent) + "]";
      return Errc::protocol_error;
    }
    const bool was_blocked = m_conn_sent - m_conn_acked >= m_options.send_window;
    m_peer_delivered = delivered_id;
    m_conn_acked = received;
    while (!m_out.empty() && m_out.front().id <= delivered_id) {
      m_out_bytes -= m_out.front().payload->bytes().size();
      done.push_back(std::move(m_out.front()));
      m_out.pop_front();
      --m_cursor;  // every acknowledged message was fully dispatched, so it lay before the cursor
    }
    m_messages_sent += done.size();
    for (const OutMsg& m : done) m_bytes_sent += m.payload->bytes().size();
    if (was_blocked && m_conn_sent - m_conn_acked < m_options.send_window) link = m_link;
  }
  for (OutMsg& m : done) m.state->delivered(m.slot);
  if (link) link->kick();
  return Errc{};
}

void Session::on_peer_close(Errc reason) {
  std::shared_ptr<Link> link;
  bool end_now = false;
  {
    const std::lock_guard lock(m_mutex);
    m_peer_closed = true;
    if (reason != Errc{} && !m_end_error) m_end_error = make_error_code(reason);
    if (m_close_sent) {
      end_now = true;
    } else {
      // Answer with an ack of everything received (the peer's messages before its close are
      // delivered) and our close; messages not yet sent fail with closed when the session ends.
      m_ack_due = true;
      m_close_due = true;
      m_close_reason = Errc{};
      m_cursor = m_out.size();
      link = m_link;
    }
  }
  if (end_now) end(make_error_code(Errc::closed));
  if (link) link->kick();
}

void Session::link_down(const Link* link, std::error_code why, bool resumable) {
  bool resume = false;
  bool closing = false;
  std::uint64_t epoch = 0;
  {
    const std::lock_guard lock(m_mutex);
    if (m_link.get() != link || m_state != State::live) return;
    m_link.reset();
    closing = m_close_due || m_close_sent || m_peer_closed;
    const bool bad_input = why == make_error_code(Errc::protocol_error) ||
                           why == make_error_code(Errc::message_too_large) ||
                           why == make_error_code(Errc::version_mismatch);
    resume = resumable && !closing && !bad_input && m_options.resume_timeout.count() > 0;
    if (resume) {
      m_state = State::detached;
      epoch = ++m_detach_epoch;
    }
  }
  m_owner.peer_disconnected(*this, closing ? make_error_code(Errc::closed) : why);
  if (resume) {
    m_owner.session_detached(shared_from_this(), epoch);
  } else {
    end(closing ? make_error_code(Errc::closed) : why);
  }
}

void Session::begin_close() {
  std::shared_ptr<Link> link;
  {
    const std::lock_guard lock(m_mutex);
    if (m_state == State::ended || m_close_due || m_close_sent) return;
    m_close_due = true;
    m_close_reason = Errc{};
    link = m_link;
  }
  if (link) link->kick();
}

void Session::end(std::error_code why) {
  std::deque<OutMsg> failed;
  std::shared_ptr<Link> link;
  {
    const std::lock_guard lock(m_mutex);
    if (m_state == State::ended) return;
    m_state = State::ended;
    if (!m_end_error) m_end_error = why;
    failed.swap(m_out);
    m_out_bytes = 0;
    m_cursor = 0;
    link = std::move(m_link);
    if (m_writes_in_flight > 0) {
      // A write may still read these payloads: they fail when it is over.
      m_fail_after_write.reserve(failed.size());
      for (OutMsg& m : failed) m_fail_after_write.push_back(std::move(m));
      m_fail_after_write_why = why;
      failed.clear();
    }
  }
  for (OutMsg& m : failed) m.state->fail(m.slot, why);
  if (link) {
    link->shutdown(why);
    m_owner.peer_disconnected(*this, why);
  }
  m_owner.session_ended(*this, why);
}

Session::State Session::state() const {
  const std::lock_guard lock(m_mutex);
  return m_state;
}

bool Session::drained() const {
  const std::lock_guard lock(m_mutex);
  return m_state == State::ended || m_out.empty();
}

std::shared_ptr<Link> Session::link() const {
  const std::lock_guard lock(m_mutex);
  return m_link;
}

std::uint64_t Session::detach_epoch() const {
  const std::lock_guard lock(m_mutex);
  return m_detach_epoch;
}

void Session::set_checksums(bool on) {
  const std::lock_guard lock(m_mutex);
  m_checksums = on;
}

unsigned Session::damaged_connection(bool progressed) {
  const std::lock_guard lock(m_mutex);
  m_damaged_in_a_row = progressed ? 1 : m_damaged_in_a_row + 1;
  return m_damaged_in_a_row;
}

void Session::stats(PeerStats& out) const {
  const std::lock_guard lock(m_mutex);
  out.id = m_peer;
  out.connected = m_state == State::live && m_link != nullptr;
  out.checksums = out.connected && m_checksums;
  if (m_link) {
    out.transport = m_link->transport();
    out.remote = m_link->remote();
    out.transport_detail = m_link->detail();
  }
  out.connects = m_connects;
  out.messages_sent = m_messages_sent;
  out.bytes_sent = m_bytes_sent;
  out.messages_received = m_messages_received;
  out.bytes_received = m_bytes_received;
  out.messages_queued = m_out.size();
  out.bytes_queued = m_out_bytes;
}

}  // namespace ferry::detail
