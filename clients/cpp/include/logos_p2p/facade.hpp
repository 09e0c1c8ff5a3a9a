// A flattened, thread-safe, blocking facade over the C++ client, in the vocabulary of the
// Logos libp2p module: mount/unmount protocols, dial, stream ids, events. No Qt.
//
// The facade owns a thread running the kj event loop and the RPC connection; every call,
// from any thread, is marshalled onto it (kj::Executor::executeSync) and blocks until it
// is done or its timeout passes (timeoutMs 0 = no timeout of the facade's own). A read that
// times out loses no byte. Stream ids are this facade's own (1, 2, ...), not the node's.
// Errors are thrown as the exceptions of errors.hpp.
//
// Destroying the facade resets every stream it still holds, unmounts its protocols and
// closes the connection. Do not destroy it while other threads are inside its methods.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "logos_p2p/errors.hpp"

namespace logos::p2p {

using Bytes = std::vector<uint8_t>;

struct FacadeEvent {
  enum class Type : uint8_t {
    protocolStream,  // an inbound stream of a mounted protocol: streamId, proto, peerId, remoteAddr
    streamReset,     // an operation found the stream reset: streamId, cause, message
    nodeShutdown,    // the node is shutting down (the last event; calls then fail)
    disconnected,    // the RPC connection broke without a shutdown notice (the last event)
    // peer events, after subscribePeerEvents (per peer: its first connection up, its last down)
    peerConnected,     // peerId, remoteAddr, outbound (false: the peer dialed the node)
    peerDisconnected,  // peerId, reason ("closedByUs", "closedByPeer", "error")
    peerIdentified,    // peerId, agentVersion, protocols
    overflowed,        // the node dropped peer events (a full queue): resynchronise
  };
  Type type = Type::protocolStream;
  uint64_t streamId = 0;
  std::string proto;
  std::string peerId;
  std::string remoteAddr;
  Cause cause = Cause::protocolError;
  std::string message;
  bool outbound = false;     // peerConnected
  std::string reason;        // peerDisconnected
  std::string agentVersion;  // peerIdentified
  std::vector<std::string> protocols;  // peerIdentified
};

const char* eventTypeName(FacadeEvent::Type type);

struct FacadeStreamInfo {
  uint64_t streamId = 0;
  uint64_t nodeStreamId = 0;
  std::string proto;
  std::string peerId;
  std::string remoteAddr;
  bool outbound = false;
};

class Facade {
 public:
  // Connects (blocking) to `address` ("unix:PATH"); throws NodeDisconnected if it cannot.
  explicit Facade(const std::string& address, const std::string& moduleName = "", uint32_t connectTimeoutMs = 10000);
  ~Facade();
  Facade(const Facade&) = delete;
  Facade& operator=(const Facade&) = delete;

  std::string peerId(uint32_t timeoutMs = 10000);          // the node's
  std::vector<std::string> addrs(uint32_t timeoutMs = 10000);  // the node's dialable addresses

  // ProtocolInUse if mounted (by this facade, or by another module without share on both)
  void mountProtocol(const std::string& proto, uint32_t timeoutMs = 10000, bool share = false);
  void unmountProtocol(const std::string& proto, uint32_t timeoutMs = 10000);  // InvalidArgument if not

  // An outbound stream; timeoutMs bounds the dial and the negotiation (0 = the node's 30 s).
  uint64_t dial(const std::string& peerId, const std::string& proto, const std::vector<std::string>& addrs = {},
                uint32_t timeoutMs = 0);

  // Node.request: one length-prefixed frame there, one back (at most maxSize bytes, 0 = 1 MiB);
  // timeoutMs bounds the whole exchange (0 = the node's open timeout).
  Bytes request(const std::string& peerId, const std::string& proto, const Bytes& data,
                const std::vector<std::string>& addrs = {}, uint32_t timeoutMs = 0, uint32_t maxSize = 0);

  // Peer events from now on, as events of nextEvent/the callback (call once; a second call
  // is InvalidArgument). queueSize: the node's bound (0 = 256); over it, one overflowed event.
  void subscribePeerEvents(uint32_t queueSize = 0, uint32_t timeoutMs = 10000);
  void unsubscribePeerEvents(uint32_t timeoutMs = 10000);  // InvalidArgument if not subscribed

  Bytes streamRead(uint64_t id, size_t maxBytes, uint32_t timeoutMs = 0);  // empty = end of stream
  Bytes streamReadExactly(uint64_t id, size_t n, uint32_t timeoutMs = 0);
  Bytes streamReadLp(uint64_t id, uint32_t maxSize, uint32_t timeoutMs = 0);
  void streamWrite(uint64_t id, const Bytes& data, uint32_t timeoutMs = 0);
  void streamWriteLp(uint64_t id, const Bytes& data, uint32_t timeoutMs = 0);
  void streamCloseWithEOF(uint64_t id, uint32_t timeoutMs = 0);  // half-close; reading goes on
  void streamClose(uint64_t id, uint32_t timeoutMs = 0);         // graceful; frees the id
  void streamReset(uint64_t id);                                 // abortive; frees the id; never throws
                                                                 // for a known id
  void streamRelease(uint64_t id);  // frees the id; an unclosed stream is reset (capabilityDropped)
  FacadeStreamInfo streamInfo(uint64_t id);
  size_t streamCount();

  // The next event; nullopt when timeoutMs passes (0 = wait as long as it takes). After
  // the last event (nodeShutdown/disconnected) it throws NodeShutdown/NodeDisconnected.
  std::optional<FacadeEvent> nextEvent(uint32_t timeoutMs = 0);
  // Deliver events to `callback` instead, on a thread of the facade's (which may call the
  // facade). Set it once, before events matter; nextEvent is then not to be used.
  void setEventCallback(std::function<void(const FacadeEvent&)> callback);

  bool shuttingDown() const;  // the node announced its shutdown
  bool connected() const;     // the RPC connection is up

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace logos::p2p
