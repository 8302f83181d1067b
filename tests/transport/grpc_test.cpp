// SPDX-License-Identifier: Apache-2.0
// What only the gRPC transport has: the method it serves, and what a gRPC client that is not
// Ferry (or a Ferry client that misbehaves) gets from it. A raw gRPC client made with the
// generic stub plays the peer.
#include <gtest/gtest.h>

#include <ferry/ferry.hpp>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "framing/frame.hpp"
#include "transport/grpc/grpc_transport.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;
constexpr auto kWait = 20s;

/// A plain gRPC client of the server's port: one bidirectional call to `method`.
class RawGrpcCall {
 public:
  RawGrpcCall(const Communicator& server, const std::string& method) {
    const Endpoint e = Endpoint::parse(server.local_endpoint());
    m_channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(e.port), grpc::InsecureChannelCredentials());
    m_stub = std::make_unique<grpc::GenericStub>(m_channel);
    m_ctx.set_deadline(std::chrono::system_clock::now() + kWait);
    m_stream = m_stub->PrepareCall(&m_ctx, method, &m_cq);
    m_stream->StartCall(tag(1));
    expect_tag(1);
  }
  ~RawGrpcCall() {
    m_ctx.TryCancel();
    m_cq.Shutdown();
    void* t = nullptr;
    bool ok = false;
    while (m_cq.Next(&t, &ok)) {
    }
  }
  RawGrpcCall(const RawGrpcCall&) = delete;
  RawGrpcCall& operator=(const RawGrpcCall&) = delete;

  /// Writes one message; false if the call is over.
  bool write(const std::string& bytes) {
    const grpc::Slice s(bytes);
    const grpc::ByteBuffer b(&s, 1);
    m_stream->Write(b, tag(2));
    return expect_tag(2);
  }
  /// Reads one message; nullopt once the server ended the call.
  std::optional<std::string> read() {
    grpc::ByteBuffer b;
    m_stream->Read(&b, tag(3));
    if (!expect_tag(3)) return std::nullopt;
    grpc::Slice s;
    if (!b.DumpToSingleSlice(&s).ok()) return std::string();
    return std::string(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  /// The status the server ended the call with (reads until then).
  grpc::Status finish() {
    grpc::Status status;
    m_stream->Finish(&status, tag(4));
    expect_tag(4);
    return status;
  }

 private:
  static void* tag(std::intptr_t n) { return reinterpret_cast<void*>(n); }
  bool expect_tag(std::intptr_t n) {
    void* t = nullptr;
    bool ok = false;
    if (!m_cq.Next(&t, &ok)) return false;
    EXPECT_EQ(t, tag(n));
    return ok;
  }

  std::shared_ptr<grpc::Channel> m_channel;
  std::unique_ptr<grpc::GenericStub> m_stub;
  grpc::ClientContext m_ctx;
  grpc::CompletionQueue m_cq;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> m_stream;
};

Options grpc_server() {
  Options o;
  o.endpoint = "grpc://127.0.0.1:0";
  o.connection.handshake_timeout = 2s;
  return o;
}

void still_serving(Communicator& server) {
  Options co;
  co.endpoint = server.local_endpoint();
  auto client = open(Purpose::client, co);
  client.put(std::string("still here")).wait_delivered();
  const auto m = server.get_for(kWait);
  ASSERT_TRUE(m.has_value());
  EXPECT_EQ(m->text(), "still here");
  EXPECT_EQ(server.stats().transport_of(client.id()), "grpc");
}

TEST(GrpcTransport, AnotherMethodIsUnimplemented) {
  auto server = open(Purpose::server, grpc_server());
  RawGrpcCall call(server, "/other.Service/Method");
  const grpc::Status s = call.finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNIMPLEMENTED) << s.error_message();
  still_serving(server);
}

TEST(GrpcTransport, AFirstMessageThatIsNoHelloOrTooLargeEndsTheCall) {
  auto server = open(Purpose::server, grpc_server());
  for (const std::size_t size : {std::size_t{4}, std::size_t{100}, framing::kHelloSize}) {
    RawGrpcCall call(server, detail::grpc_link::kMethod);
    (void)call.write(std::string(size, 'x'));  // no hello, of a hello's size or not
    // A refusing hello says why (its status), then the call ends.
    const auto reply = call.read();
    ASSERT_TRUE(reply.has_value());
    ASSERT_EQ(reply->size(), framing::kHelloSize);
    EXPECT_EQ(static_cast<std::uint8_t>((*reply)[60]), static_cast<std::uint8_t>(Errc::protocol_error));
    EXPECT_FALSE(call.read().has_value());
  }
  {
    // Larger than any gRPC message Ferry sends (4 MiB): gRPC refuses it before the server
    // buffers it, hello or not.
    RawGrpcCall call(server, detail::grpc_link::kMethod);
    (void)call.write(std::string((4 << 20) + 1, 'x'));
    EXPECT_FALSE(call.read().has_value());
    EXPECT_EQ(call.finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  EXPECT_TRUE(server.peers().empty());
  still_serving(server);
}

TEST(GrpcTransport, ASilentCallIsDroppedAtTheHandshakeTimeout) {
  auto server = open(Purpose::server, grpc_server());
  RawGrpcCall call(server, detail::grpc_link::kMethod);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(call.read().has_value());  // the server ends the call: handshake_timeout (2 s)
  EXPECT_LT(std::chrono::steady_clock::now() - t0, kWait);
  still_serving(server);
}

TEST(GrpcTransport, StatsNameTheTransportAndTheLimitsAllowLargeMessages) {
  auto server = open(Purpose::server, grpc_server());
  Options co;
  co.endpoint = server.local_endpoint();
  auto client = open(Purpose::client, co);
  // Larger than gRPC's default 4 MiB receive cap, in one put: the framing chunks it and a
  // batch of chunks travels in one gRPC message.
  Bytes big(12 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big.data()[i] = static_cast<std::byte>(i * 7);
  client.put(Payload(Bytes::copy_of(big.span()))).wait_delivered();
  const auto m = server.get_for(kWait);
  ASSERT_TRUE(m.has_value());
  EXPECT_TRUE(m->data.span().size() == big.size() && std::equal(big.span().begin(), big.span().end(), m->data.span().begin()));
  const Stats s = server.stats();
  ASSERT_EQ(s.peers.size(), 1u);
  EXPECT_EQ(s.peers[0].transport, "grpc");
  EXPECT_NE(s.peers[0].remote.find("127.0.0.1"), std::string::npos) << s.peers[0].remote;
  EXPECT_EQ(client.stats().transport_of(server.id()), "grpc");
}

}  // namespace
}  // namespace ferry
