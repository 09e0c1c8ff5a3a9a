// The logos-p2p error family in C++, as logos_p2p.errors in Python.
//
// Every failure the node sends carries one marker, "[logos-p2p:<kind>] message", in its
// Cap'n Proto exception description. `classify` reads the LAST marker (both the camelCase
// and the older kebab-case spellings) and is the only place that does; `raise` throws the
// typed exception. Failures made by this library itself (busy, streamClosed, endOfStream,
// invalidArgument, timeout) are kj::Exceptions carrying a marker too (`makeException`), so
// the one classifier types everything.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

namespace kj {
class Exception;
}

namespace logos::p2p {

// Why a stream was reset: the schema's `Cause`, same order.
enum class Cause : uint8_t {
  localReset,
  remoteReset,
  connectionLost,
  nodeShutdown,
  moduleGone,
  capabilityDropped,
  handlerFailed,
  timeout,
  limitExceeded,
  protocolError,
};

const char* causeName(Cause cause);
Cause parseCause(const std::string& name);  // unknown -> protocolError

enum class ErrorKind : uint8_t {
  ok = 0,
  streamReset,           // cause says why; nodeShutdown / moduleGone included
  streamClosed,
  busy,
  nodeShutdown,          // the node is shutting down (also StreamReset, cause nodeShutdown)
  nodeDisconnected,      // the RPC connection broke without a shutdown notice
  protocolNotSupported,
  peerUnreachable,
  negotiationFailed,
  timeout,
  invalidArgument,
  protocolInUse,
  limitExceeded,
  frameTooLarge,
  endOfStream,
  internal,              // RpcError: the node failed, or a failure without a marker
  authenticationFailed,  // a tcp: endpoint refused this client's token (or proved none itself)
};

const char* kindName(ErrorKind kind);  // the marker's camelCase spelling

struct ErrorInfo {
  ErrorKind kind = ErrorKind::internal;
  Cause cause = Cause::protocolError;  // meaningful for streamReset / nodeShutdown / nodeDisconnected
  std::string message;
};

// The one reading of a failure. `shuttingDown`: the node announced its shutdown, so a
// broken connection (DISCONNECTED) is nodeShutdown rather than nodeDisconnected.
ErrorInfo classify(const kj::Exception& exception, bool shuttingDown = false);
ErrorInfo classifyText(const std::string& description);  // a description with a marker

// A kj::Exception carrying the marker of `kind` (how this library fails a promise).
kj::Exception makeException(ErrorKind kind, const std::string& message, Cause cause = Cause::protocolError);

// -- the exceptions ----------------------------------------------------------------------------

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

class StreamError : public Error {
  using Error::Error;
};
class StreamClosed : public StreamError {
 public:
  explicit StreamClosed(const std::string& m) : StreamError(ErrorKind::streamClosed, m) {}
};
class Busy : public StreamError {
 public:
  explicit Busy(const std::string& m) : StreamError(ErrorKind::busy, m) {}
};
class EndOfStream : public StreamError {
 public:
  explicit EndOfStream(const std::string& m) : StreamError(ErrorKind::endOfStream, m) {}
};
class FrameTooLarge : public StreamError {
 public:
  explicit FrameTooLarge(const std::string& m) : StreamError(ErrorKind::frameTooLarge, m) {}
};
class StreamReset : public StreamError {
 public:
  StreamReset(const std::string& m, Cause cause, ErrorKind kind = ErrorKind::streamReset)
      : StreamError(kind, m), cause_(cause) {}
  Cause cause() const noexcept { return cause_; }

 private:
  Cause cause_;
};
// The node is shutting down: a StreamReset (cause nodeShutdown), as in Python.
class NodeShutdown : public StreamReset {
 public:
  explicit NodeShutdown(const std::string& m) : StreamReset(m, Cause::nodeShutdown, ErrorKind::nodeShutdown) {}
};
// The RPC connection broke without a shutdown notice (cause moduleGone).
class NodeDisconnected : public StreamReset {
 public:
  explicit NodeDisconnected(const std::string& m)
      : StreamReset(m, Cause::moduleGone, ErrorKind::nodeDisconnected) {}
};

class OpenStreamError : public Error {
  using Error::Error;
};
class ProtocolNotSupported : public OpenStreamError {
 public:
  explicit ProtocolNotSupported(const std::string& m) : OpenStreamError(ErrorKind::protocolNotSupported, m) {}
};
class PeerUnreachable : public OpenStreamError {
 public:
  explicit PeerUnreachable(const std::string& m) : OpenStreamError(ErrorKind::peerUnreachable, m) {}
};
class NegotiationFailed : public OpenStreamError {
 public:
  explicit NegotiationFailed(const std::string& m) : OpenStreamError(ErrorKind::negotiationFailed, m) {}
};

class Timeout : public Error {
 public:
  explicit Timeout(const std::string& m) : Error(ErrorKind::timeout, m) {}
};
class InvalidArgument : public Error {
 public:
  explicit InvalidArgument(const std::string& m) : Error(ErrorKind::invalidArgument, m) {}
};
class ProtocolInUse : public Error {
 public:
  explicit ProtocolInUse(const std::string& m) : Error(ErrorKind::protocolInUse, m) {}
};
class LimitExceeded : public Error {
 public:
  explicit LimitExceeded(const std::string& m) : Error(ErrorKind::limitExceeded, m) {}
};
class AuthenticationFailed : public Error {
 public:
  explicit AuthenticationFailed(const std::string& m) : Error(ErrorKind::authenticationFailed, m) {}
};
class RpcError : public Error {
 public:
  explicit RpcError(const std::string& m) : Error(ErrorKind::internal, m) {}
};

// Throw the typed exception for `info`.
[[noreturn]] void raise(const ErrorInfo& info);
// classify + raise.
[[noreturn]] void raise(const kj::Exception& exception, bool shuttingDown = false);

}  // namespace logos::p2p
