// SPDX-License-Identifier: Apache-2.0
// PutState and the PutHandle methods over it. Layer: src/core.
#include "core/put_state.hpp"

#include <ferry/error.hpp>

namespace ferry::detail {

PutState::PutState(Payload payload, std::span<const PeerId> peers)
    : m_payload(std::make_shared<const Payload>(std::move(payload))),
      m_borrowed(m_payload->borrowed()),
      m_unsent(peers.size()),
      m_undelivered(peers.size()) {
  m_slots.reserve(peers.size());
  for (const PeerId& p : peers) m_slots.push_back(Slot{p, Progress::pending, {}});
}

void PutState::advance(std::size_t slot, Progress to, std::error_code error) {
  bool notify = false;
  {
    const std::lock_guard lock(m_mutex);
    Slot& s = m_slots[slot];
    if (s.progress == Progress::delivered || s.progress == Progress::failed) return;
    if (to == Progress::sent && s.progress == Progress::sent) return;
    if (s.progress == Progress::pending) {
      --m_unsent;
      notify = m_unsent == 0;
    }
    if (to != Progress::sent) {
      --m_undelivered;
      notify = notify || m_undelivered == 0;
    }
    s.progress = to;
    s.error = error;
    if (m_undelivered == 0) m_payload.reset();  // sessions hold their own reference
  }
  if (notify) m_cv.notify_all();
}

void PutState::sent(std::size_t slot) { advance(slot, Progress::sent, {}); }
void PutState::delivered(std::size_t slot) { advance(slot, Progress::delivered, {}); }
void PutState::fail(std::size_t slot, std::error_code error) {
  advance(slot, Progress::failed, error);
}

bool PutState::ready() const {
  const std::lock_guard lock(m_mutex);
  return m_unsent == 0;
}

bool PutState::all_delivered() const {
  const std::lock_guard lock(m_mutex);
  return m_undelivered == 0;
}

bool PutState::wait(bool delivered, std::chrono::nanoseconds timeout) const {
  std::unique_lock lock(m_mutex);
  const auto done = [&] { return (delivered ? m_undelivered : m_unsent) == 0; };
  if (timeout == std::chrono::nanoseconds::max()) {
    m_cv.wait(lock, done);
    return true;
  }
  return m_cv.wait_for(lock, timeout, done);
}

std::vector<PeerError> PutState::errors() const {
  const std::lock_guard lock(m_mutex);
  std::vector<PeerError> out;
  for (const Slot& s : m_slots) {
    if (s.progress == Progress::failed) out.push_back({s.peer, s.error});
  }
  return out;
}

std::vector<PeerId> PutState::peers() const {
  std::vector<PeerId> out;
  out.reserve(m_slots.size());
  for (const Slot& s : m_slots) out.push_back(s.peer);
  return out;
}

}  // namespace ferry::detail

namespace ferry {
namespace {

void throw_first_error(const detail::PutState& state) {
  const auto errors = state.errors();
  if (errors.empty()) return;
  const PeerError& first = errors.front();
  std::string what = "put to " + first.peer.to_string();
  if (errors.size() > 1) what += " (and " + std::to_string(errors.size() - 1) + " more peers)";
  // Error appends the code's message itself.
  if (first.error.category() == error_category()) {
    throw Error(static_cast<Errc>(first.error.value()), what);
  }
  throw Error(Errc::system, what + ": " + first.error.message());
}

}  // namespace

PutHandle::PutHandle(std::shared_ptr<detail::PutState> state) noexcept : m_state(std::move(state)) {}

bool PutHandle::ready() const noexcept { return !m_state || m_state->ready(); }
bool PutHandle::delivered() const noexcept { return !m_state || m_state->all_delivered(); }

void PutHandle::wait() const {
  if (!m_state) return;
  (void)m_state->wait(false, std::chrono::nanoseconds::max());
  throw_first_error(*m_state);
}

bool PutHandle::wait_for(std::chrono::nanoseconds timeout) const {
  if (!m_state) return true;
  if (!m_state->wait(false, timeout)) return false;
  throw_first_error(*m_state);
  return true;
}

void PutHandle::wait_delivered() const {
  if (!m_state) return;
  (void)m_state->wait(true, std::chrono::nanoseconds::max());
  throw_first_error(*m_state);
}

bool PutHandle::wait_delivered_for(std::chrono::nanoseconds timeout) const {
  if (!m_state) return true;
  if (!m_state->wait(true, timeout)) return false;
  throw_first_error(*m_state);
  return true;
}

std::vector<PeerError> PutHandle::errors() const {
  return m_state ? m_state->errors() : std::vector<PeerError>{};
}

std::vector<PeerId> PutHandle::peers() const {
  return m_state ? m_state->peers() : std::vector<PeerId>{};
}

}  // namespace ferry
