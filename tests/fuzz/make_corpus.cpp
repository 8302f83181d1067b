// SPDX-License-Identifier: Apache-2.0
// Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/) from Ferry's own encoders,
// so each seed is a well-formed input the fuzzer mutates from: frame streams, hellos and a
// probe's locality block, endpoint URLs, and byte-ring images written by a real producer.
//   ferry_fuzz_make_corpus tests/fuzz/corpus
// Layer: tests/fuzz.
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <vector>

#include <ferry/peer_id.hpp>
#include <ferry/shm/layout.hpp>
#include <ferry/shm/ring.hpp>
#include <ferry/shm/segment.hpp>

#include "framing/frame.hpp"

namespace fs = std::filesystem;
using namespace ferry::framing;

namespace {

void write(const fs::path& file, std::span<const std::byte> bytes) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

void header(std::vector<std::byte>& out, FrameType type, std::uint32_t length, std::uint64_t a, std::uint64_t b,
            std::uint64_t c) {
  std::array<std::byte, kHeaderSize> h{};
  encode_header({type, length, a, b, c}, h);
  out.insert(out.end(), h.begin(), h.end());
}

void message(std::vector<std::byte>& out, std::uint64_t id, std::size_t size, std::size_t chunk) {
  if (size == 0) header(out, FrameType::data, 0, id, 0, 0);
  for (std::size_t off = 0; off < size; off += chunk) {
    const std::size_t n = std::min(chunk, size - off);
    header(out, FrameType::data, static_cast<std::uint32_t>(n), id, off, size);
    for (std::size_t i = 0; i < n; ++i) out.push_back(static_cast<std::byte>('a' + (off + i) % 26));
  }
}

void frames(const fs::path& dir) {
  std::vector<std::byte> s;
  message(s, 1, 5, 4096);
  write(dir / "one-message", s);
  s.clear();
  message(s, 1, 10000, 4096);  // three chunks
  header(s, FrameType::ack, 0, 1, 0, 0);
  message(s, 2, 0, 4096);      // an empty message
  header(s, FrameType::keepalive, 0, 0, 0, 0);
  message(s, 3, 100, 30);
  header(s, FrameType::close, 0, 0, 0, 0);
  write(dir / "chunks-ack-keepalive-close", s);
  s.clear();
  message(s, 1, 64, 64);
  message(s, 2, 64, 64);
  message(s, 3, 64, 64);
  write(dir / "three-small", s);
}

void hellos(const fs::path& dir) {
  Hello h;
  h.id = ferry::PeerId::random();
  h.max_message = 64 << 20;
  h.max_chunk = 256 << 10;
  std::array<std::byte, kHelloSize> raw{};
  encode_hello(h, raw);
  write(dir / "client", raw);
  h.flags = kHelloResume;
  h.next_expected = 17;
  h.first_unacked = 9;
  encode_hello(h, raw);
  write(dir / "resume", raw);
  h.flags = kHelloProbe;
  h.next_expected = h.first_unacked = 1;
  encode_hello(h, raw);
  Locality l;
  l.boot_id.fill(0x5a);
  l.ipc_namespace = 4026531839;
  l.uid = 1000;
  l.shm_path = "/tmp/ferry-1000/auto-127.0.0.1-51966.sock";
  std::array<std::byte, kLocalitySize> loc{};
  encode_locality(l, loc);
  std::vector<std::byte> probe(raw.begin(), raw.end());
  probe.insert(probe.end(), loc.begin(), loc.end());
  write(dir / "probe-reply", probe);
}

void endpoints(const fs::path& dir) {
  const char* urls[] = {"tcp://127.0.0.1:5000", "tls://example.org:443", "shm://orders", "auto://0.0.0.0:51966",
                        "grpc://[::1]:50051",   "grpcs://svc.local:8443", "mqtt://broker:1883/ferry/a",
                        "mqtts://127.0.0.1:8883/x", "tcp://[fe80::1]:1", "shm://a.b-c_d"};
  int i = 0;
  for (const char* u : urls) {
    const std::string s(u);
    write(dir / ("url-" + std::to_string(i++)), std::as_bytes(std::span(s)));
  }
}

// The target's input: a flag byte (0: header untouched), the producer/consumer/wait lines and
// the data region of a 4 KiB ring after `first` writes of `size` bytes, `read` reads and
// `second` more writes (which wrap past the end when the first ones filled it).
void ring(const fs::path& file, std::size_t size, int first, int read, int second) {
  namespace shm = ferry::shm;
  namespace layout = ferry::shm::layout;
  shm::Segment seg = shm::Segment::create_anonymous({shm::RingKind::byte_ring, 4096, 0});
  shm::ByteRing::Producer producer(seg);
  shm::ByteRing::Consumer consumer(seg);
  std::vector<std::byte> payload(size, std::byte{0x42});
  for (int i = 0; i < first; ++i) (void)producer.try_push(payload);
  for (int i = 0; i < read; ++i) {
    std::span<const std::byte> m;
    if (consumer.try_peek(m) == shm::Status::ok) consumer.release();
  }
  for (int i = 0; i < second; ++i) (void)producer.try_push(payload);
  const std::byte* base = seg.data() - layout::kDataOffset;
  constexpr std::size_t lines = sizeof(layout::Control) - sizeof(layout::SegmentHeader);
  std::vector<std::byte> out(1 + lines + 4096);  // out[0] = 0: the header untouched
  std::memcpy(out.data() + 1, base + sizeof(layout::SegmentHeader), lines);
  std::memcpy(out.data() + 1 + lines, seg.data(), 4096);
  // No owners: this process is gone when the target runs, and a ring whose consumer died is
  // refused before anything is read.
  const auto clear = [&](std::size_t offset) { std::memset(out.data() + 1 + offset - sizeof(layout::SegmentHeader), 0, 8); };
  clear(offsetof(layout::Control, producer) + offsetof(layout::ProducerLine, owner));
  clear(offsetof(layout::Control, consumer) + offsetof(layout::ConsumerLine, owner));
  write(file, out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: ferry_fuzz_make_corpus DIR (tests/fuzz/corpus)\n");
    return 2;
  }
  const fs::path root(argv[1]);
  frames(root / "frames");
  hellos(root / "hello");
  endpoints(root / "endpoint");
  ring(root / "ring" / "three-small", 40, 3, 0, 0);
  ring(root / "ring" / "wrapped", 1000, 3, 3, 2);  // past the end: a padding record first
  ring(root / "ring" / "full", 500, 20, 0, 0);
  ring(root / "ring" / "empty", 8, 0, 0, 0);
  std::printf("seed corpora written to %s\n", root.c_str());
  return 0;
}
