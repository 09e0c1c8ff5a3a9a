// unix:, tcp: and tls: endpoints: reach the node, then prove who we are (and check who it is).
#include "transport.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

#include "auth.hpp"
#include "tls.hpp"

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

// HOST of "HOST:PORT" or "[HOST]:PORT".
std::string hostOf(const std::string& hostPort) {
  size_t colon = hostPort.rfind(':');
  std::string host = colon == std::string::npos ? hostPort : hostPort.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host;
}

std::string optionOrEnv(const std::string& given, const char* env) {
  if (!given.empty()) return given;
  const char* value = std::getenv(env);
  return value ? value : "";
}

tls::Trust tlsTrust(const std::string& hostPort, const ConnectOptions& options) {
  tls::Trust trust;
  std::string pin = optionOrEnv(options.fingerprint, "LOGOS_P2P_FINGERPRINT");
  if (!pin.empty()) trust.fingerprint = tls::parseFingerprint(pin);
  trust.caFile = optionOrEnv(options.caFile, "LOGOS_P2P_TLS_CA");
  if (trust.fingerprint.empty() && trust.caFile.empty())
    kj::throwFatalException(makeException(
        ErrorKind::authenticationFailed,
        "a tls: endpoint needs the node's certificate fingerprint (ConnectOptions::fingerprint, or "
        "$LOGOS_P2P_FINGERPRINT; `logos-p2p info` on the node prints it) or a CA file (caFile, $LOGOS_P2P_TLS_CA)"));
  trust.certFile = options.certFile;
  trust.keyFile = options.keyFile;
  trust.host = hostOf(hostPort);
  return trust;
}

}  // namespace

kj::Promise<kj::Own<kj::AsyncIoStream>> open(kj::AsyncIoContext& io, const std::string& address,
                                             const ConnectOptions& options) {
  enum class Kind { unixSocket, tcp, tls };
  Kind kind;
  std::string target;  // as kj's parseAddress takes it
  if (address.rfind("unix:", 0) == 0) {
    kind = Kind::unixSocket;
    target = address;
  } else if (address.rfind("tcp:", 0) == 0 || address.rfind("tls:", 0) == 0) {
    kind = address[1] == 'c' ? Kind::tcp : Kind::tls;
    target = address.substr(4);
  } else {
    return makeException(ErrorKind::invalidArgument, "expected unix:PATH, tcp:HOST:PORT or tls:HOST:PORT, got " + address);
  }
  std::string secret;
  tls::Trust trust;
  try {
    // a client that cannot check the node does not connect at all
    if (kind == Kind::tls) trust = tlsTrust(target, options);
    if (kind != Kind::unixSocket) secret = auth::clientToken(options.token);
  } catch (const kj::Exception& e) {
    return kj::cp(e);
  }
  kj::Timer& timer = io.provider->getTimer();
  auto reached = io.provider->getNetwork()
                     .parseAddress(target.c_str())
                     .then([](kj::Own<kj::NetworkAddress> addr) { return addr->connect().attach(kj::mv(addr)); })
                     .catch_([address](kj::Exception&& e) -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
                       return unreachable(address, e);
                     });
  if (kind == Kind::unixSocket) {
    return reached.then([path = target.substr(5), options](kj::Own<kj::AsyncIoStream> stream) {
      return checkUnixPeer(kj::mv(stream), path, options);
    });
  }
  if (kind == Kind::tls) {
    reached = reached.then([trust, &timer](kj::Own<kj::AsyncIoStream> stream) {
      // the handshake within the exchange's 5 s as well
      return timer.timeoutAfter(5 * kj::SECONDS, kj::evalNow([&]() { return tls::connect(kj::mv(stream), trust); }))
          .catch_([](kj::Exception&& e) -> kj::Promise<kj::Own<kj::AsyncIoStream>> {
            if (e.getType() == kj::Exception::Type::OVERLOADED)
              return makeException(ErrorKind::authenticationFailed, "the node did not complete the TLS handshake in time");
            return kj::mv(e);
          });
    });
  }
  bool inTls = kind == Kind::tls;
  return reached.then([secret, &timer, inTls](kj::Own<kj::AsyncIoStream> stream) {
    auto& ref = *stream;
    return auth::authenticate(ref, timer, secret, inTls).then([s = kj::mv(stream)]() mutable { return kj::mv(s); });
  });
}

}  // namespace logos::p2p::transport
