// TLS 1.3 under the RPC connection of tls: endpoints (src/logos_p2p/_tls.py), client side,
// with OpenSSL on memory BIOs so it runs on any kj stream. Private.
#pragma once

#include <kj/async-io.h>

#include <string>

namespace logos::p2p::tls {

struct Trust {
  std::string fingerprint;  // "sha256:<64 hex>" (parseFingerprint), or "" to use caFile
  std::string caFile;       // chain and host name checked against it when no fingerprint
  std::string certFile;     // this client's certificate chain (PEM), or ""
  std::string keyFile;      // its key ("" = in certFile)
  std::string host;         // the endpoint's host (name or IP) for SNI and the host check
};

// "sha256:..." as `logos-p2p info` prints it; colons between bytes and upper case allowed
// (as `openssl x509 -fingerprint` prints it). invalidArgument otherwise.
std::string parseFingerprint(const std::string& text);

// The TLS 1.3 client handshake on `raw`, then the node's certificate checked: a stream of
// the plaintext. A handshake that fails or a certificate that is not the pinned one is
// authenticationFailed; unreadable files or options are invalidArgument.
kj::Promise<kj::Own<kj::AsyncIoStream>> connect(kj::Own<kj::AsyncIoStream> raw, const Trust& trust);

}  // namespace logos::p2p::tls
