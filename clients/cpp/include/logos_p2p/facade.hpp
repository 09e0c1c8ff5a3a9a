// A flattened, thread-safe, blocking facade over the C++ client, in the vocabulary of the
// Logos libp2p module: mount/unmount protocols, dial, stream ids, events. No Qt.
//
// The facade owns a thread running the kj event loop and the RPC connection; every call,
// from any thread, is marshalled onto it (kj::Executor::executeSync) and blocks until it
// is done or its timeout passes (timeoutMs 0 = no timeout of the facade's own). A read that
// times out loses no byte. Stream ids are this facade's own (1, 2, ...), not the node's.
// Errors are thrown as the exceptions of errors.hpp.
//
// Destruction is defined while other threads are inside its methods. The destructor
//   1. makes every call blocked in the facade (a read, a dial, nextEvent, ...) return at
//      once with NodeDisconnected (cause moduleGone, "the facade is closed"), and every
//      call that begins from then on fail the same way, without waiting;
//   2. waits until no thread is inside a facade method any more;
//   3. resets every stream it still holds, unmounts its protocols (served ones too),
//      unsubscribes and closes the connection;
//   4. joins its own threads: the event callback's (after the callback in progress
//      returns) and the responders' (after the responders in progress return).
// Events not yet taken when destruction begins are dropped (the callback gets no more), and
// requests waiting for a responder are reset.
// Callbacks and responders may call the facade while it is being destroyed (they get
// NodeDisconnected) and may even destroy it themselves. But a callback or responder that
// blocks until something the destroying thread would do after the destructor keeps the
// destructor waiting. Once the destructor has returned the object is gone: a thread that
// calls it afterwards (it was not inside when destruction began) is the caller's bug.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "logos_p2p/errors.hpp"
#include "logos_p2p/types.hpp"

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

// Facade::serve: the reply to one request (Node.serve), run on one of the facade's
// responder threads, never on the event loop's; it may block, and may call the facade.
// Throwing resets that stream (the peer reads a reset; the node counts handlerFailed).
using FacadeResponder = std::function<Bytes(const Bytes& request, const FacadeStreamInfo& info)>;

struct FacadeServeOptions {
  bool share = false;      // as mountProtocol's share
  uint32_t maxSize = 0;    // the largest request accepted; 0 = 1 MiB
  uint32_t timeoutMs = 0;  // the whole exchange, from the stream's arrival; 0 = 30 s
};

// At most this many responders run at once (on as many threads, started as needed); further
// requests wait in line, within their serve timeoutMs.
constexpr size_t kFacadeResponderThreads = 8;

// Node.connectPeer / peers / status, as the asynchronous client has them (logos_p2p/types.hpp).
using FacadePeerInfo = PeerInfo;
using FacadeModuleStatus = ModuleStatus;
using FacadeNodeStatus = NodeStatus;

class Facade {
 public:
  // Connects (blocking) to `address` ("unix:PATH"); throws NodeDisconnected if it cannot.
  explicit Facade(const std::string& address, const std::string& moduleName = "", uint32_t connectTimeoutMs = 10000);
  // tcp:/tls: with explicit trust (token, pinned fingerprint or CA, client certificate);
  // without options they come from the environment ($LOGOS_P2P_TOKEN_FILE, ...).
  Facade(const std::string& address, const ConnectOptions& options, const std::string& moduleName = "",
         uint32_t connectTimeoutMs = 10000);
  ~Facade();  // see above: defined while other threads are inside
  Facade(const Facade&) = delete;
  Facade& operator=(const Facade&) = delete;

  std::string peerId(uint32_t timeoutMs = 10000);          // the node's
  std::vector<std::string> addrs(uint32_t timeoutMs = 10000);  // the node's dialable addresses

  // ProtocolInUse if mounted (by this facade, or by another module without share on both)
  void mountProtocol(const std::string& proto, uint32_t timeoutMs = 10000, bool share = false);
  void unmountProtocol(const std::string& proto, uint32_t timeoutMs = 10000);  // InvalidArgument if not

  // Node.serve: one length-prefixed request per inbound stream of `proto`, answered by
  // `responder` (see FacadeResponder) as one length-prefixed reply; the node then closes
  // the stream. ProtocolInUse as mountProtocol. unserve (or unmountProtocol) unmounts it and
  // returns once no responder of it runs (except the calling one, from inside a responder);
  // requests still waiting in line are reset, and the responder is not called again.
  void serve(const std::string& proto, FacadeResponder responder, const FacadeServeOptions& options = {},
             uint32_t timeoutMs = 10000);
  void unserve(const std::string& proto, uint32_t timeoutMs = 10000);  // InvalidArgument if not served

  // The node's peers: connect (addr ends in /p2p/<peerId>; timeoutMs 0 = the node's own
  // dial timeout), disconnect (every connection to it), list the connected ones.
  FacadePeerInfo connectPeer(const std::string& addr, uint32_t timeoutMs = 0);
  void disconnectPeer(const std::string& peerId, uint32_t timeoutMs = 10000);
  std::vector<FacadePeerInfo> peers(uint32_t timeoutMs = 10000);
  FacadeNodeStatus status(uint32_t timeoutMs = 10000);

  // An outbound stream; timeoutMs bounds the dial and the negotiation (0 = the node's 30 s).
  uint64_t dial(const std::string& peerId, const std::string& proto, const std::vector<std::string>& addrs = {},
                uint32_t timeoutMs = 0);

  // Node.request: one length-prefixed frame there, one back (at most maxSize bytes, 0 = 1 MiB);
  // timeoutMs bounds the whole exchange (0 = the node's open timeout).
  Bytes request(const std::string& peerId, const std::string& proto, const Bytes& data,
                const std::vector<std::string>& addrs = {}, uint32_t timeoutMs = 0, uint32_t maxSize = 0);

  // Peer events from now on, as events of nextEvent/the callback (call once; a second call
  // is InvalidArgument). queueSize (1..4096, 0 = 256) bounds the peer events held for this
  // facade twice over: by the node (for events the facade has not taken yet) and by the
  // facade itself (for events its owner has not taken yet from nextEvent or the callback).
  // The facade takes every event from the node at once (the node's queue only fills when the
  // facade's loop is starved), so it is the facade's bound that a slow owner reaches: when
  // queueSize peer events are waiting and another comes, the facade drops the waiting ones
  // and that one too, and queues one overflowed event in their place, as the node does. So
  // an owner that stops reading costs at most queueSize peer events of memory; the events
  // after an overflowed event are changes that came after it (resynchronise with peers()).
  // An overflowed event from the node right after the facade's own is not repeated.
  // Stream events (protocolStream, streamReset, ...) are never dropped: each is about a
  // stream the facade holds, and the node's stream limits bound those.
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
  // the last event (nodeShutdown/disconnected) it throws NodeShutdown/NodeDisconnected;
  // once the facade's destruction began, NodeDisconnected ("the facade is closed").
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
