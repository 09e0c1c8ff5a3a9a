// logos-p2p C++ client, asynchronous (kj promises), on the Stream capability in pull mode.
//
// Everything here lives on ONE kj event loop thread (the one that called `connect`): the
// objects are not thread-safe, and promises are waited on that thread's WaitScope. For a
// blocking, thread-safe API use logos_p2p/facade.hpp, which runs this on a thread of its own.
//
// Failures reject the promises with a kj::Exception whose description carries a
// "[logos-p2p:<kind>]" marker (or a DISCONNECTED exception when the RPC connection broke);
// `logos::p2p::wait` waits and throws the typed exception of errors.hpp instead.
//
//   auto io = kj::setupAsyncIo();
//   auto node = logos::p2p::wait(logos::p2p::connect(io, "unix:/tmp/n.sock"), io.waitScope);
//   auto stream = logos::p2p::wait(node.openStream(peer, {"/echo/1.0.0"}, {addr}, 10000), io.waitScope);
//   logos::p2p::wait(stream.write(bytes), io.waitScope);
#pragma once

#include <kj/async-io.h>
#include <kj/async.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "logos_p2p/errors.hpp"
#include "logos_p2p/types.hpp"

namespace logos::p2p {

using Bytes = std::vector<uint8_t>;

constexpr uint32_t kDefaultMaxLp = 1024 * 1024;  // readLp's default maxSize, as Python's
constexpr uint32_t kMaxReadAnswer = 1024 * 1024;  // Stream.read's largest maxBytes

struct NodeInfo {
  std::string peerId;
  std::vector<std::string> addrs;
  std::string version;
};

enum class Direction : uint8_t { inbound, outbound };

struct StreamInfo {
  uint64_t id = 0;  // the node's id (unique within the node process)
  std::string protocol;
  std::string remotePeerId;
  std::string remoteAddr;
  Direction direction = Direction::inbound;
};

struct Connection;  // the RPC connection (private)
struct StreamState;

// One libp2p stream (inbound or outbound). Move-only. Destroying it, or release(), without
// close() or reset() releases the capability: the node resets the stream (capabilityDropped).
// One read and one write may be pending at a time (a second is Busy).
class Stream {
 public:
  explicit Stream(std::shared_ptr<StreamState> state);
  Stream(Stream&&) noexcept;
  Stream& operator=(Stream&&) noexcept;
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream();

  const StreamInfo& info() const;
  kj::Promise<StreamInfo> fetchInfo();  // Stream.info, asked of the node

  // Up to maxBytes as soon as any are there; empty at end of stream.
  kj::Promise<Bytes> read(size_t maxBytes = 65536);
  // Exactly n bytes; EndOfStream if the stream ends first (the partial bytes are dropped).
  // A cancelled readExactly keeps what it received for the next read.
  kj::Promise<Bytes> readExactly(size_t n);
  // One unsigned-varint length-prefixed frame (nim-libp2p readLp). EndOfStream at end of
  // stream (before or inside a frame); FrameTooLarge over maxSize (left unread).
  kj::Promise<Bytes> readLp(uint32_t maxSize = kDefaultMaxLp);

  // Returns once the data is in flight within a bounded window (512 KiB of unanswered
  // writes, 256 KiB per call); a failed earlier write fails a later write/closeWrite/close.
  // A write cancelled half-way leaves the stream unwritable: reset it.
  kj::Promise<void> write(Bytes data);
  kj::Promise<void> writeLp(const Bytes& data);
  kj::Promise<void> closeWrite();  // half-close after flushing; a second call does nothing
  kj::Promise<void> close();       // graceful close of both directions, then release
  kj::Promise<void> reset();       // abortive; never fails
  void release();                  // drop the capability now (the node resets an unclosed stream)

  bool released() const;

 private:
  std::shared_ptr<StreamState> state_;
};

class Registration {
 public:
  Registration(std::shared_ptr<void> cap, std::vector<std::string> protocols, uint64_t id);
  Registration(Registration&&) noexcept;
  Registration& operator=(Registration&&) noexcept;
  ~Registration();  // releases the capability: the node unmounts the protocols

  const std::vector<std::string>& protocols() const { return protocols_; }
  uint64_t id() const { return id_; }
  kj::Promise<void> unregister();  // now, and wait for the node's answer (idempotent)

 private:
  std::shared_ptr<void> cap_;  // an rpc::Registration::Client
  std::vector<std::string> protocols_;
  uint64_t id_;
};

struct RegisterOptions {
  bool share = false;
  uint32_t acceptTimeoutMs = 0;  // 0 = node default
};

struct ServeOptions {
  bool share = false;
  uint32_t maxSize = 0;    // 0 = 1 MiB
  uint32_t timeoutMs = 0;  // 0 = 30 s
};

// Node.subscribePeerEvents: one event per peer (first connection up, last one down).
enum class DisconnectReason : uint8_t { closedByUs, closedByPeer, error };
const char* disconnectReasonName(DisconnectReason reason);

struct PeerEvent {
  enum class Type : uint8_t { connected, disconnected, identified, overflowed };
  Type type = Type::connected;
  std::string peerId;                     // "" for overflowed
  std::string remoteAddr;                 // connected
  Direction direction = Direction::inbound;  // connected: inbound = the peer dialed us
  DisconnectReason reason = DisconnectReason::error;  // disconnected
  std::vector<std::string> protocols;     // identified
  std::string agentVersion;               // identified
};

// Dropping it (or cancel()) unsubscribes. Move-only.
class Subscription {
 public:
  explicit Subscription(std::shared_ptr<void> cap);
  Subscription(Subscription&&) noexcept;
  Subscription& operator=(Subscription&&) noexcept;
  ~Subscription();
  kj::Promise<void> cancel();  // idempotent

 private:
  std::shared_ptr<void> cap_;  // an rpc::Subscription::Client
};

// Called on the event loop thread for each peer event, in order; must not block. The node
// sends the next event once the call returns. Throwing unsubscribes.
using PeerEventHandler = std::function<void(const PeerEvent&)>;

// Called on the event loop thread for each inbound stream; must not block (start a task).
// Throwing makes the node reset the stream (handlerFailed).
using Handler = std::function<void(Stream)>;
// Node.serve: the reply to one request. Failing resets that stream.
using Responder = std::function<kj::Promise<Bytes>(Bytes request, StreamInfo info)>;

class Node {
 public:
  explicit Node(std::shared_ptr<Connection> connection);

  kj::Promise<NodeInfo> info();
  kj::Promise<void> setModuleName(const std::string& name);
  // Node.connectPeer: addr is a multiaddr ending in /p2p/<peerId>; timeoutMs 0 = the node's.
  kj::Promise<PeerInfo> connectPeer(const std::string& addr, uint32_t timeoutMs = 0);
  kj::Promise<void> disconnectPeer(const std::string& peerId);  // closes every connection to it
  kj::Promise<std::vector<PeerInfo>> peers();                    // the peers connected now
  kj::Promise<NodeStatus> status();
  kj::Promise<Registration> registerProtocols(const std::vector<std::string>& protocols, Handler handler,
                                              RegisterOptions options = {});
  // timeoutMs 0 = the node's 30 s. peerId may be "" when addrs name the peer.
  kj::Promise<Stream> openStream(const std::string& peerId, const std::vector<std::string>& protocols,
                                 const std::vector<std::string>& addrs = {}, uint32_t timeoutMs = 0);
  kj::Promise<Bytes> request(const std::string& peerId, const std::vector<std::string>& protocols,
                             const Bytes& data, const std::vector<std::string>& addrs = {}, uint32_t timeoutMs = 0,
                             uint32_t maxSize = 0, bool closeWrite = true);
  kj::Promise<Registration> serve(const std::vector<std::string>& protocols, Responder responder,
                                  ServeOptions options = {});
  // queueSize 0 = the node's 256 (1..4096).
  kj::Promise<Subscription> subscribePeerEvents(PeerEventHandler handler, uint32_t queueSize = 0);

  // Resolves when the node announces its shutdown or the RPC connection ends.
  kj::Promise<void> onEnded();
  bool shuttingDown() const;  // the node announced its shutdown
  bool disconnected() const;  // the RPC connection ended

 private:
  std::shared_ptr<Connection> conn_;
};


// address: "unix:PATH", "tcp:HOST:PORT" or "tls:HOST:PORT". tcp: runs the token exchange
// (src/logos_p2p/_auth.py) before any Cap'n Proto byte; tls: runs TLS 1.3 first, checks the
// node's certificate, then the same exchange inside it (or none, when the node admitted this
// client by its certificate). A refusal is AuthenticationFailed; an unreachable endpoint
// NodeDisconnected.
kj::Promise<Node> connect(kj::AsyncIoContext& io, const std::string& address, const ConnectOptions& options);
kj::Promise<Node> connect(kj::AsyncIoContext& io, const std::string& address, const std::string& token = "");

// Wait on `promise` and throw the typed exception of a failure (errors.hpp).
template <typename T>
T wait(kj::Promise<T>&& promise, kj::WaitScope& waitScope, bool shuttingDown = false) {
  try {
    return promise.wait(waitScope);
  } catch (const kj::Exception& e) {
    raise(e, shuttingDown);
  }
}
inline void wait(kj::Promise<void>&& promise, kj::WaitScope& waitScope, bool shuttingDown = false) {
  try {
    promise.wait(waitScope);
  } catch (const kj::Exception& e) {
    raise(e, shuttingDown);
  }
}

// uvarint(len(data)) ++ data
Bytes lpFrame(const Bytes& data);

}  // namespace logos::p2p
