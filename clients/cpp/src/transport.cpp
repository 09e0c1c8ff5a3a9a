// unix:, tcp: and tls: endpoints: reach the node, then prove who we are (and check who it is).
#include "transport.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

#include "auth.hpp"

namespace logos::p2p::transport {

namespace {

kj::Exception unreachable(const std::string& address, const kj::Exception& e) {
  return kj::Exception(kj::Exception::Type::DISCONNECTED, __FILE__, __LINE__,
                       kj::str("cannot reach the node at ", address.c_str(), ": ", e.getDescription()));
}

// The uids a unix: node may run as: this user, root, and $LOGOS_P2P_NODE_UID (as Python's
// client: another user's socket in the node's place is refused).
bool trustedUid(uid_t uid, const ConnectOptions& options) {
  if (uid == getuid() || uid == 0) return true;
  if (options.nodeUid >= 0 && uid == static_cast<uid_t>(options.nodeUid)) return true;
  const char* named = std::getenv("LOGOS_P2P_NODE_UID");
  return named && *named && std::to_string(uid) == named;
}

kj::Promise<kj::Own<kj::AsyncIoStream>> checkUnixPeer(kj::Own<kj::AsyncIoStream> stream, const std::string& path,
                                                      const ConnectOptions& options) {
  KJ_IF_MAYBE(fd, stream->getFd()) {
    struct ucred cred {};
    socklen_t len = sizeof(cred);
    if (getsockopt(*fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
      return makeException(ErrorKind::authenticationFailed, "cannot read the credentials of the process behind " + path);
    if (!trustedUid(cred.uid, options))
      return makeException(ErrorKind::authenticationFailed,
                           "the process behind " + path + " runs as uid " + std::to_string(cred.uid) +
                               ", not as this user or root: refused (another user's socket in the node's "
                               "place?); trust that uid with nodeUid or $LOGOS_P2P_NODE_UID");
  }
  return kj::mv(stream);
}

}  // namespace

kj::Promise<kj::Own<kj::AsyncIoStream>> open(kj::AsyncIoContext& io, const std::string& address,
                                             const ConnectOptions& options) {
  bool isUnix = address.rfind("unix:", 0) == 0;
  bool tcp = address.rfind("tcp:", 0) == 0;
  if (!isUnix && !tcp)
    return makeException(ErrorKind::invalidArgument, "expected unix:PATH or tcp:HOST:PORT, got " + address);
  std::string secret;
  if (tcp) {
    try {
      secret = auth::clientToken(options.token);
    } catch (const kj::Exception& e) {
      return kj::cp(e);
    }
  }
  kj::Timer& timer = io.provider->getTimer();
  std::string target = tcp ? address.substr(4) : address;
  return io.provider->getNetwork()
      .parseAddress(target.c_str())
      .then([](kj::Own<kj::NetworkAddress> addr) { return addr->connect().attach(kj::mv(addr)); })
      .then(
          [isUnix, secret, &timer, target, options](kj::Own<kj::AsyncIoStream> stream)
              -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
            if (isUnix) return checkUnixPeer(kj::mv(stream), target.substr(5), options);
            auto& ref = *stream;
            return auth::authenticate(ref, timer, secret).then([s = kj::mv(stream)]() mutable { return kj::mv(s); });
          },
          [address](kj::Exception&& e) -> kj::Promise<kj::Own<kj::AsyncIoStream>> { return unreachable(address, e); });
}

}  // namespace logos::p2p::transport
