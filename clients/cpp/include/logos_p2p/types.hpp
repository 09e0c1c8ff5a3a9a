// Plain types of the C++ client that the facade shares (no kj here): ConnectOptions, PeerInfo,
// ModuleStatus, NodeStatus.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "logos_p2p/errors.hpp"

namespace logos::p2p {

// How to reach and trust a node: tcp: and tls: need a token (tls: a certificate check too);
// unix: checks that the process behind the socket runs as this user, root or nodeUid.
struct ConnectOptions {
  // tcp:/tls: the node's token; "" = $LOGOS_P2P_TOKEN, $LOGOS_P2P_TOKEN_FILE or this user's
  // default token file (a node on this machine).
  std::string token;
  // tls: the node's certificate, pinned: "sha256:<hex of the DER's SHA-256>" as `logos-p2p
  // info` and the node's ready line print it ("" = $LOGOS_P2P_FINGERPRINT).
  std::string fingerprint;
  // tls: without a fingerprint, check the node's chain and host name against this CA file
  // (PEM; "" = $LOGOS_P2P_TLS_CA). One of the two is needed.
  std::string caFile;
  // tls: this client's certificate chain and key (PEM; keyFile "" = in certFile), for a node
  // that admits clients by certificate (--tls-client-certs).
  std::string certFile;
  std::string keyFile;
  // unix: a uid the node may run as besides this user and root (-1 = $LOGOS_P2P_NODE_UID only)
  int64_t nodeUid = -1;
};

// Node.connectPeer / Node.peers: a connected peer and the remote addresses of its connections.
struct PeerInfo {
  std::string peerId;
  std::vector<std::string> addrs;
};

// Node.status: one module (RPC connection) of the node. The node does not tell a module
// which row is its own: modules are told apart by the name each gave (setModuleName).
struct ModuleStatus {
  uint64_t id = 0;
  std::string name;
  std::vector<std::string> protocols;  // registered by this module
  uint32_t registrations = 0;
  uint32_t inboundStreams = 0;
  uint32_t outboundStreams = 0;
  uint64_t bytesIn = 0;
  uint64_t bytesOut = 0;
  uint64_t bufferedBytes = 0;
  uint64_t badMessages = 0;
};

// Node.status: what the node holds (the schema's Status without its limits and refusals).
struct NodeStatus {
  std::string peerId;
  std::vector<ModuleStatus> modules;  // every module of the node, this one included
  uint32_t streams = 0;               // open bridged streams, all modules
  uint32_t registrations = 0;
  uint64_t resets[10] = {};           // resets since start, indexed by Cause
  uint64_t streamsTotal = 0;          // streams bridged since start
  uint32_t tasks = 0;                 // node tasks in progress (0 when idle)
  uint64_t authFailures = 0;
  uint32_t reservations = 0;
  uint32_t subscriptions = 0;  // peer event subscriptions, all modules
  uint64_t resetsOf(Cause cause) const { return resets[static_cast<size_t>(cause)]; }
  // the first row named `name` (nullptr if none)
  const ModuleStatus* module(const std::string& name) const {
    for (const auto& m : modules)
      if (m.name == name) return &m;
    return nullptr;
  }
};

}  // namespace logos::p2p
