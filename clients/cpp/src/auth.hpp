// The token exchange of tcp: endpoints (src/logos_p2p/_auth.py), client side. Private.
#pragma once

#include <kj/async-io.h>

#include <string>

namespace logos::p2p::auth {

// The token to prove: given, else $LOGOS_P2P_TOKEN, $LOGOS_P2P_TOKEN_FILE, or this user's
// default token file ($XDG_RUNTIME_DIR/logos-p2p/rpc-token, /tmp/logos-p2p-<uid>/rpc-token);
// "" if none. Stripped; shorter than 16 characters is invalidArgument.
std::string clientToken(const std::string& given);

// Prove `token` to the node on `stream` and check its proof back, within 5 s; fails with
// an authenticationFailed marker.
// Inside TLS (`inTls`), a node that admitted this client by its certificate says so in its
// hello (version 2) and asks for no token.
kj::Promise<void> authenticate(kj::AsyncIoStream& stream, kj::Timer& timer, std::string token, bool inTls = false);

}  // namespace logos::p2p::auth
