// ConnectOptions: how the C++ client reaches and trusts a node (no kj: the facade uses it too).
#pragma once

#include <cstdint>
#include <string>

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

}  // namespace logos::p2p
