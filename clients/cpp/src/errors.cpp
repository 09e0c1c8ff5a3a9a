// The one place where failures are read: markers -> ErrorInfo -> typed exceptions.
#include "logos_p2p/errors.hpp"

#include <kj/exception.h>

#include <cctype>
#include <cstring>

#include "text.hpp"

namespace logos::p2p {

namespace {

struct KindName {
  ErrorKind kind;
  const char* name;
};

const KindName kKinds[] = {
    {ErrorKind::streamReset, "streamReset"},
    {ErrorKind::streamClosed, "streamClosed"},
    {ErrorKind::busy, "busy"},
    {ErrorKind::nodeShutdown, "nodeShutdown"},
    {ErrorKind::nodeDisconnected, "nodeDisconnected"},
    {ErrorKind::protocolNotSupported, "protocolNotSupported"},
    {ErrorKind::peerUnreachable, "peerUnreachable"},
    {ErrorKind::negotiationFailed, "negotiationFailed"},
    {ErrorKind::timeout, "timeout"},
    {ErrorKind::invalidArgument, "invalidArgument"},
    {ErrorKind::protocolInUse, "protocolInUse"},
    {ErrorKind::limitExceeded, "limitExceeded"},
    {ErrorKind::frameTooLarge, "frameTooLarge"},
    {ErrorKind::endOfStream, "endOfStream"},
    {ErrorKind::internal, "internal"},
    {ErrorKind::authenticationFailed, "authenticationFailed"},  // made here, never sent by a node
};

const char* const kCauseNames[] = {
    "localReset", "remoteReset", "connectionLost", "nodeShutdown",  "moduleGone",
    "capabilityDropped", "handlerFailed", "timeout", "limitExceeded", "protocolError",
};

// "stream-reset" -> "streamReset" (nodes before 0.2 spelled kinds in kebab-case)
std::string camel(const std::string& kind) {
  std::string out;
  bool upper = false;
  for (char c : kind) {
    if (c == '-') {
      upper = true;
      continue;
    }
    out += upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : c;
    upper = false;
  }
  return out;
}

std::string lastLine(const std::string& text) {
  std::string t = trim(text);
  size_t nl = t.rfind('\n');
  return nl == std::string::npos ? t : trim(t.substr(nl + 1));
}

}  // namespace

const char* causeName(Cause cause) {
  auto i = static_cast<size_t>(cause);
  return i < sizeof(kCauseNames) / sizeof(kCauseNames[0]) ? kCauseNames[i] : "protocolError";
}

Cause parseCause(const std::string& name) {
  for (size_t i = 0; i < sizeof(kCauseNames) / sizeof(kCauseNames[0]); ++i) {
    if (name == kCauseNames[i]) return static_cast<Cause>(i);
  }
  return Cause::protocolError;
}

const char* kindName(ErrorKind kind) {
  if (kind == ErrorKind::ok) return "ok";
  for (const auto& k : kKinds) {
    if (k.kind == kind) return k.name;
  }
  return "internal";
}

ErrorInfo classifyText(const std::string& text) {
  static const std::string kMarker = "[logos-p2p:";
  size_t at = text.rfind(kMarker);
  if (at == std::string::npos) return {ErrorKind::internal, Cause::protocolError, lastLine(text)};
  size_t close = text.find(']', at);
  if (close == std::string::npos) return {ErrorKind::internal, Cause::protocolError, lastLine(text)};
  std::string tag = text.substr(at + kMarker.size(), close - at - kMarker.size());
  size_t eol = text.find('\n', close);
  std::string message = trim(text.substr(close + 1, eol == std::string::npos ? std::string::npos : eol - close - 1));
  std::string kind = tag, cause;
  size_t colon = tag.find(':');
  if (colon != std::string::npos) {
    kind = tag.substr(0, colon);
    cause = tag.substr(colon + 1);
  }
  kind = camel(kind);
  ErrorInfo info{ErrorKind::internal, Cause::protocolError, message};
  if (kind == "streamReset") {
    info.cause = parseCause(cause);
    info.kind = info.cause == Cause::nodeShutdown  ? ErrorKind::nodeShutdown
                : info.cause == Cause::moduleGone ? ErrorKind::nodeDisconnected
                                                   : ErrorKind::streamReset;
    return info;
  }
  for (const auto& k : kKinds) {
    if (kind == k.name && k.kind != ErrorKind::streamReset) {
      info.kind = k.kind;  // nodeDisconnected: this client's own marker (makeException)
      if (k.kind == ErrorKind::nodeShutdown) info.cause = Cause::nodeShutdown;
      if (k.kind == ErrorKind::nodeDisconnected) info.cause = Cause::moduleGone;
      return info;
    }
  }
  if (info.message.empty()) info.message = lastLine(text);
  return info;  // unknown kind: internal
}

ErrorInfo classify(const kj::Exception& exception, bool shuttingDown) {
  std::string description = exception.getDescription().cStr();
  if (description.find("[logos-p2p:") != std::string::npos) return classifyText(description);
  if (exception.getType() == kj::Exception::Type::DISCONNECTED) {
    if (shuttingDown) return {ErrorKind::nodeShutdown, Cause::nodeShutdown, "the node shut down"};
    return {ErrorKind::nodeDisconnected, Cause::moduleGone,
            "the RPC connection to the node broke: " + lastLine(description)};
  }
  return {ErrorKind::internal, Cause::protocolError, lastLine(description)};
}

kj::Exception makeException(ErrorKind kind, const std::string& message, Cause cause) {
  std::string marker = "[logos-p2p:";
  marker += kindName(kind);
  if (kind == ErrorKind::streamReset) {
    marker += ":";
    marker += causeName(cause);
  }
  marker += "] " + message;
  auto type = kind == ErrorKind::nodeDisconnected ? kj::Exception::Type::DISCONNECTED : kj::Exception::Type::FAILED;
  return kj::Exception(type, __FILE__, __LINE__, kj::heapString(marker.c_str()));
}

void raise(const ErrorInfo& info) {
  const std::string& m = info.message;
  switch (info.kind) {
    case ErrorKind::streamReset: throw StreamReset(m.empty() ? std::string("stream reset (") + causeName(info.cause) + ")" : m, info.cause);
    case ErrorKind::nodeShutdown: throw NodeShutdown(m.empty() ? "the node is shutting down" : m);
    case ErrorKind::nodeDisconnected: throw NodeDisconnected(m);
    case ErrorKind::streamClosed: throw StreamClosed(m);
    case ErrorKind::busy: throw Busy(m);
    case ErrorKind::protocolNotSupported: throw ProtocolNotSupported(m);
    case ErrorKind::peerUnreachable: throw PeerUnreachable(m);
    case ErrorKind::negotiationFailed: throw NegotiationFailed(m);
    case ErrorKind::timeout: throw Timeout(m);
    case ErrorKind::invalidArgument: throw InvalidArgument(m);
    case ErrorKind::protocolInUse: throw ProtocolInUse(m);
    case ErrorKind::limitExceeded: throw LimitExceeded(m);
    case ErrorKind::frameTooLarge: throw FrameTooLarge(m);
    case ErrorKind::endOfStream: throw EndOfStream(m);
    case ErrorKind::authenticationFailed: throw AuthenticationFailed(m);
    case ErrorKind::ok:
    case ErrorKind::internal: break;
  }
  throw RpcError(m);
}

void raise(const kj::Exception& exception, bool shuttingDown) { raise(classify(exception, shuttingDown)); }

}  // namespace logos::p2p
