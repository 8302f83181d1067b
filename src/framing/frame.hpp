// SPDX-License-Identifier: Apache-2.0
// The wire format shared by every transport: the handshake hello and the frame header, their
// encoding and their validation. Layer: src/framing (no I/O here).
//
// Byte order: little-endian. Every field read from a peer is untrusted and validated here or
// by the Reassembler before use.
//
// Hello (kHelloSize bytes, sent by each side once at the start of a connection: the client
// first, the server replies):
//
//   0        8        10       12       16                 32          40          48          56     60      64     68
//   +--------+--------+--------+--------+------------------+-----------+-----------+-----------+------+-------+------+
//   | magic  |version | size   | flags  | peer id (UUID)   | next_     | first_    | max_      | max_ |status | crc  |
//   | 8 B    | u16=2  | u16=68 | u32    | 16 B             | expected  | unacked   | message   | chunk| u32   | u32  |
//   +--------+--------+--------+--------+------------------+-----------+-----------+-----------+------+-------+------+
//   next_expected: the id of the next message this side expects from the peer (resumption);
//   first_unacked: the lowest message id this side will (re)send; max_message / max_chunk: the
//   largest message and chunk this side accepts; status: 0, or the Errc with which the server
//   refuses the client (the connection then closes). flags: kHelloResume (client: resume my
//   session if you have it; server: resumed), kHelloProbe (auto:// client: only tell me where
//   you are; the server replies with its hello and a Locality block, then closes, and no
//   session is made), kHelloChecksums (client: every frame both ways carries a checksum;
//   server: agreed, echoed). crc: the CRC-32C of the `size - 4` bytes before it.
//
// Reading a hello (decode_hello; a stream reads the first kHelloPrefixSize bytes, asks
// hello_size() how many make the whole hello, then reads the rest):
//   - a magic with more than 2 of its 8 bytes wrong: not a Ferry peer (protocol_error);
//   - a checksum that does not match, or a magic with 1-2 bytes wrong: the hello was damaged on
//     the wire (peer_lost: nothing is decided from it, no session is made; a client retries);
//   - another version, judged only from a hello whose checksum matches (a damaged version field
//     is damage, not a refusal): version_mismatch. Version 1 (64 bytes, size 64) carried no
//     checksum and is recognised by its version and size. From version 2 on every hello ends
//     in the CRC of the bytes before it, whatever its size (at most kMaxHelloSize).
//
// Locality (exactly kLocalitySize bytes, after the hello of a probe's reply):
//
//   0          8              24            32      36      38    40                      148  156   160
//   +----------+--------------+-------------+-------+-------+-----+-----------------------+----+-----+
//   | "FERRYLOC"| boot id      | IPC ns inode| uid   | path  | zero| rendezvous socket path|zero| crc |
//   | 8 B      | 16 B         | u64         | u32   | u16   | u16 | 108 B, NUL-padded     |    | u32 |
//   +----------+--------------+-------------+-------+-------+-----+-----------------------+----+-----+
//   path: the length of the server's shm rendezvous socket path; 0 when it offers none.
//   crc: the CRC-32C of bytes 0-155 (a mismatch: damaged on the wire, peer_lost).
//
// Frame header (kHeaderSize bytes), followed by `length` payload bytes:
//
//   0      1      2        4          8             16            24            32
//   +------+------+--------+----------+-------------+-------------+-------------+
//   | type | flags| zero   | length   | a           | b           | c           |
//   | u8   | u8=0 | u16=0  | u32      | u64         | u64         | u64         |
//   +------+------+--------+----------+-------------+-------------+-------------+
//   data:      a = message id (1, 2, ... per direction), b = offset of this chunk,
//              c = total message length; length = chunk length.
//   ack:       a = highest message id delivered (all ids <= a are in the peer's receive
//              queue), b = payload bytes received on this connection; length = 0.
//   keepalive: length = 0, a = b = c = 0.
//   close:     a = the Errc why (0: a clean close); length = 0.
//
// With checksums agreed in the handshake (kHelloChecksums), each frame (header and payload) is
// followed by a 4-byte trailer: the CRC-32C of its header and payload, little-endian. The
// frame takes effect only once its trailer matches; a mismatch fails the connection as lost
// (Errc::peer_lost: a resumable session resends what was not acknowledged; see FrameReader).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include <ferry/error.hpp>
#include <ferry/peer_id.hpp>

namespace ferry::framing {

inline constexpr std::array<std::uint8_t, 8> kMagic = {'F', 'E', 'R', 'R', 'Y', '\r', '\n', 0x1a};
inline constexpr std::uint16_t kProtocolVersion = 2;
inline constexpr std::size_t kHelloSize = 68;
/// What a stream reads first to learn a hello's size (magic, version, size).
inline constexpr std::size_t kHelloPrefixSize = 12;
/// The largest hello of any version this side will read to judge it.
inline constexpr std::size_t kMaxHelloSize = 1024;
inline constexpr std::size_t kHeaderSize = 32;
inline constexpr std::uint32_t kHelloResume = 1u << 0;
inline constexpr std::uint32_t kHelloProbe = 1u << 1;
inline constexpr std::uint32_t kHelloChecksums = 1u << 2;
/// The checksum trailer after each frame when kHelloChecksums was agreed.
inline constexpr std::size_t kTrailerSize = 4;
inline constexpr std::size_t kLocalitySize = 160;
inline constexpr std::size_t kMaxLocalityPath = 107;  // a Unix socket path (sun_path less its NUL)
/// The largest chunk any side may announce (the length field is 32-bit).
inline constexpr std::uint64_t kMaxChunk = std::uint64_t{1} << 30;

struct Hello {
  std::uint16_t version = kProtocolVersion;
  std::uint32_t flags = 0;
  PeerId id;
  std::uint64_t next_expected = 1;
  std::uint64_t first_unacked = 1;
  std::uint64_t max_message = 0;
  std::uint32_t max_chunk = 0;
  std::uint32_t status = 0;
};

/// Where a server runs, as an auto:// client compares it with where it runs itself.
struct Locality {
  std::array<std::uint8_t, 16> boot_id{};  // /proc/sys/kernel/random/boot_id
  std::uint64_t ipc_namespace = 0;         // inode of /proc/self/ns/ipc
  std::uint32_t uid = 0;
  std::string shm_path;                    // rendezvous socket, "" if none
};

void encode_locality(const Locality& l, std::span<std::byte, kLocalitySize> out) noexcept;
/// Decodes and validates a server's locality block (path length, NUL bytes, zero fields).
[[nodiscard]] Errc decode_locality(std::span<const std::byte, kLocalitySize> in, Locality& out, std::string& why);

enum class FrameType : std::uint8_t { data = 1, ack = 2, keepalive = 3, close = 4 };

struct FrameHeader {
  FrameType type = FrameType::keepalive;
  std::uint32_t length = 0;
  std::uint64_t a = 0;
  std::uint64_t b = 0;
  std::uint64_t c = 0;
};

void encode_hello(const Hello& hello, std::span<std::byte, kHelloSize> out) noexcept;
/// From a hello's first kHelloPrefixSize bytes, the size of the whole hello (what a stream
/// reads before decode_hello). Errc{} and `size` set, or the error decode_hello would give:
/// protocol_error (not a Ferry peer) or peer_lost (damaged).
[[nodiscard]] Errc hello_size(std::span<const std::byte, kHelloPrefixSize> prefix, std::size_t& size,
                              std::string& why);
/// Decodes and validates a peer's whole hello (see "Reading a hello" above for what each error
/// means). Errc::version_mismatch leaves out.version set for the caller's refusal.
[[nodiscard]] Errc decode_hello(std::span<const std::byte> in, Hello& out, std::string& why);
/// The bytes are a whole hello of version 2 or later whose checksum matches: whatever it says
/// (even a field decode_hello refuses), a peer said it, not the wire.
[[nodiscard]] bool hello_checks_out(std::span<const std::byte> in) noexcept;

void encode_header(const FrameHeader& header, std::span<std::byte, kHeaderSize> out) noexcept;
/// Decodes a frame header and checks what needs no session state: known type, zero reserved
/// bits, the length rules of each type, length <= max_chunk. Errc::protocol_error otherwise.
[[nodiscard]] Errc decode_header(std::span<const std::byte, kHeaderSize> in,
                                 std::uint32_t max_chunk, FrameHeader& out, std::string& why);

}  // namespace ferry::framing
