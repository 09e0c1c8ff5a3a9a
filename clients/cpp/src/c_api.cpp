// The C ABI: the facade behind opaque handles, errors as codes + messages.
#include "logos_p2p.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "logos_p2p/facade.hpp"

using logos::p2p::Bytes;
using logos::p2p::ConnectOptions;
using logos::p2p::ErrorKind;
using logos::p2p::Facade;

struct logos_p2p_facade {
  Facade facade;
  logos_p2p_facade(const char* address, const ConnectOptions& options, const char* name)
      : facade(address, options, name ? name : "") {}
};

namespace {

int codeOf(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::ok: return LOGOS_P2P_OK;
    case ErrorKind::streamReset: return LOGOS_P2P_STREAM_RESET;
    case ErrorKind::streamClosed: return LOGOS_P2P_STREAM_CLOSED;
    case ErrorKind::busy: return LOGOS_P2P_BUSY;
    case ErrorKind::nodeShutdown: return LOGOS_P2P_NODE_SHUTDOWN;
    case ErrorKind::nodeDisconnected: return LOGOS_P2P_NODE_DISCONNECTED;
    case ErrorKind::protocolNotSupported: return LOGOS_P2P_PROTOCOL_NOT_SUPPORTED;
    case ErrorKind::peerUnreachable: return LOGOS_P2P_PEER_UNREACHABLE;
    case ErrorKind::negotiationFailed: return LOGOS_P2P_NEGOTIATION_FAILED;
    case ErrorKind::timeout: return LOGOS_P2P_TIMEOUT;
    case ErrorKind::invalidArgument: return LOGOS_P2P_INVALID_ARGUMENT;
    case ErrorKind::protocolInUse: return LOGOS_P2P_PROTOCOL_IN_USE;
    case ErrorKind::limitExceeded: return LOGOS_P2P_LIMIT_EXCEEDED;
    case ErrorKind::frameTooLarge: return LOGOS_P2P_FRAME_TOO_LARGE;
    case ErrorKind::endOfStream: return LOGOS_P2P_END_OF_STREAM;
    case ErrorKind::internal: return LOGOS_P2P_INTERNAL;
    case ErrorKind::authenticationFailed: return LOGOS_P2P_AUTHENTICATION_FAILED;
  }
  return LOGOS_P2P_INTERNAL;
}

int setError(logos_p2p_error* err, int code, int cause, const char* message) {
  if (err) {
    err->code = code;
    err->cause = cause;
    std::strncpy(err->message, message, sizeof(err->message) - 1);
    err->message[sizeof(err->message) - 1] = '\0';
  }
  return code;
}

template <typename Fn>
int guarded(logos_p2p_error* err, Fn&& fn) {
  try {
    fn();
    if (err) {
      err->code = LOGOS_P2P_OK;
      err->cause = 0;
      err->message[0] = '\0';
    }
    return LOGOS_P2P_OK;
  } catch (const logos::p2p::StreamReset& e) {
    return setError(err, codeOf(e.kind()), static_cast<int>(e.cause()), e.what());
  } catch (const logos::p2p::Error& e) {
    return setError(err, codeOf(e.kind()), LOGOS_P2P_CAUSE_PROTOCOL_ERROR, e.what());
  } catch (const std::exception& e) {
    return setError(err, LOGOS_P2P_INTERNAL, LOGOS_P2P_CAUSE_PROTOCOL_ERROR, e.what());
  } catch (...) {
    return setError(err, LOGOS_P2P_INTERNAL, LOGOS_P2P_CAUSE_PROTOCOL_ERROR, "unknown failure");
  }
}

int badArgument(logos_p2p_error* err, const char* what) {
  return setError(err, LOGOS_P2P_INVALID_ARGUMENT, LOGOS_P2P_CAUSE_PROTOCOL_ERROR, what);
}

char* dupString(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out) std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

void giveBytes(const Bytes& b, uint8_t** data, size_t* len) {
  *len = b.size();
  *data = static_cast<uint8_t*>(std::malloc(b.empty() ? 1 : b.size()));
  if (*data == nullptr) throw std::bad_alloc();
  if (!b.empty()) std::memcpy(*data, b.data(), b.size());
}

char* joinLines(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += item + "\n";
  char* text = dupString(out);
  if (text == nullptr) throw std::bad_alloc();
  return text;
}

// A C responder as a FacadeResponder: its malloc'ed reply is copied and freed here.
logos::p2p::FacadeResponder wrapResponder(logos_p2p_responder responder, void* user) {
  return [responder, user](const Bytes& request, const logos::p2p::FacadeStreamInfo& info) -> Bytes {
    uint8_t* reply = nullptr;
    size_t len = 0;
    int rc = responder(user, request.data(), request.size(), info.peerId.c_str(), &reply, &len);
    Bytes out;
    if (rc == 0 && reply != nullptr) out.assign(reply, reply + len);
    std::free(reply);
    if (rc != 0) throw std::runtime_error("the responder returned " + std::to_string(rc));
    if (reply == nullptr && len != 0) throw std::runtime_error("the responder set reply_len but no reply");
    return out;
  };
}

template <typename Read>
int readInto(logos_p2p_facade* f, uint8_t** data, size_t* len, logos_p2p_error* err, Read&& read) {
  if (!f || !data || !len) return badArgument(err, "facade, data and len must not be NULL");
  *data = nullptr;
  *len = 0;
  return guarded(err, [&]() { giveBytes(read(), data, len); });
}

}  // namespace

extern "C" {

const char* logos_p2p_code_name(int code) {
  static const char* const names[] = {"ok",
                                      "streamReset",
                                      "streamClosed",
                                      "busy",
                                      "nodeShutdown",
                                      "nodeDisconnected",
                                      "protocolNotSupported",
                                      "peerUnreachable",
                                      "negotiationFailed",
                                      "timeout",
                                      "invalidArgument",
                                      "protocolInUse",
                                      "limitExceeded",
                                      "frameTooLarge",
                                      "endOfStream",
                                      "internal",
                                      "authenticationFailed"};
  return code >= 0 && code <= LOGOS_P2P_AUTHENTICATION_FAILED ? names[code] : "internal";
}

const char* logos_p2p_cause_name(int cause) {
  return cause >= 0 && cause <= LOGOS_P2P_CAUSE_PROTOCOL_ERROR
             ? logos::p2p::causeName(static_cast<logos::p2p::Cause>(cause))
             : "protocolError";
}

const char* logos_p2p_disconnect_reason_name(int reason) {
  switch (reason) {
    case LOGOS_P2P_CLOSED_BY_US: return "closedByUs";
    case LOGOS_P2P_CLOSED_BY_PEER: return "closedByPeer";
    default: return "error";
  }
}

int logos_p2p_facade_new(const char* address, const char* module_name, logos_p2p_facade** out,
                         logos_p2p_error* err) {
  return logos_p2p_facade_connect(address, module_name, nullptr, out, err);
}

int logos_p2p_facade_connect(const char* address, const char* module_name, const logos_p2p_connect_options* options,
                             logos_p2p_facade** out, logos_p2p_error* err) {
  if (!address || !out) return badArgument(err, "address and out must not be NULL");
  *out = nullptr;
  ConnectOptions o;
  if (options) {
    auto text = [](const char* s) { return std::string(s ? s : ""); };
    o.token = text(options->token);
    o.fingerprint = text(options->fingerprint);
    o.caFile = text(options->ca_file);
    o.certFile = text(options->cert_file);
    o.keyFile = text(options->key_file);
    o.nodeUid = options->node_uid;
  }
  return guarded(err, [&]() { *out = new logos_p2p_facade(address, o, module_name); });
}

void logos_p2p_facade_free(logos_p2p_facade* facade) { delete facade; }

int logos_p2p_peer_id(logos_p2p_facade* f, char** peer_id, logos_p2p_error* err) {
  if (!f || !peer_id) return badArgument(err, "facade and peer_id must not be NULL");
  return guarded(err, [&]() { *peer_id = dupString(f->facade.peerId()); });
}

int logos_p2p_mount_protocol(logos_p2p_facade* f, const char* proto, logos_p2p_error* err) {
  if (!f || !proto) return badArgument(err, "facade and proto must not be NULL");
  return guarded(err, [&]() { f->facade.mountProtocol(proto); });
}

int logos_p2p_mount_protocol_shared(logos_p2p_facade* f, const char* proto, logos_p2p_error* err) {
  if (!f || !proto) return badArgument(err, "facade and proto must not be NULL");
  return guarded(err, [&]() { f->facade.mountProtocol(proto, 10000, true); });
}

int logos_p2p_unmount_protocol(logos_p2p_facade* f, const char* proto, logos_p2p_error* err) {
  if (!f || !proto) return badArgument(err, "facade and proto must not be NULL");
  return guarded(err, [&]() { f->facade.unmountProtocol(proto); });
}

int logos_p2p_serve(logos_p2p_facade* f, const char* proto, int share, uint32_t max_size, uint32_t timeout_ms,
                    logos_p2p_responder responder, void* user, logos_p2p_error* err) {
  if (!f || !proto || !responder) return badArgument(err, "facade, proto and responder must not be NULL");
  return guarded(err, [&]() {
    logos::p2p::FacadeServeOptions options;
    options.share = share != 0;
    options.maxSize = max_size;
    options.timeoutMs = timeout_ms;
    f->facade.serve(proto, wrapResponder(responder, user), options);
  });
}

int logos_p2p_unserve(logos_p2p_facade* f, const char* proto, logos_p2p_error* err) {
  if (!f || !proto) return badArgument(err, "facade and proto must not be NULL");
  return guarded(err, [&]() { f->facade.unserve(proto); });
}

int logos_p2p_connect_peer(logos_p2p_facade* f, const char* addr, uint32_t timeout_ms, char** peer_id,
                           logos_p2p_error* err) {
  if (!f || !addr) return badArgument(err, "facade and addr must not be NULL");
  if (peer_id) *peer_id = nullptr;
  return guarded(err, [&]() {
    auto peer = f->facade.connectPeer(addr, timeout_ms);
    if (peer_id) {
      *peer_id = dupString(peer.peerId);
      if (*peer_id == nullptr) throw std::bad_alloc();
    }
  });
}

int logos_p2p_disconnect_peer(logos_p2p_facade* f, const char* peer_id, logos_p2p_error* err) {
  if (!f || !peer_id) return badArgument(err, "facade and peer_id must not be NULL");
  return guarded(err, [&]() { f->facade.disconnectPeer(peer_id); });
}

int logos_p2p_peers(logos_p2p_facade* f, char** peers, logos_p2p_error* err) {
  if (!f || !peers) return badArgument(err, "facade and peers must not be NULL");
  *peers = nullptr;
  return guarded(err, [&]() {
    std::vector<std::string> lines;
    for (const auto& peer : f->facade.peers()) {
      std::string line = peer.peerId;
      for (const auto& a : peer.addrs) line += " " + a;
      lines.push_back(std::move(line));
    }
    *peers = joinLines(lines);
  });
}

int logos_p2p_status(logos_p2p_facade* f, logos_p2p_node_status* status, logos_p2p_error* err) {
  if (!f || !status) return badArgument(err, "facade and status must not be NULL");
  std::memset(status, 0, sizeof(*status));
  int rc = guarded(err, [&]() {
    auto s = f->facade.status();
    status->peer_id = dupString(s.peerId);
    status->streams = s.streams;
    status->registrations = s.registrations;
    for (size_t i = 0; i < LOGOS_P2P_CAUSE_COUNT; ++i) status->resets[i] = s.resets[i];
    status->streams_total = s.streamsTotal;
    status->tasks = s.tasks;
    status->auth_failures = s.authFailures;
    status->reservations = s.reservations;
    status->subscriptions = s.subscriptions;
    if (!s.modules.empty()) {
      status->modules =
          static_cast<logos_p2p_module_status*>(std::calloc(s.modules.size(), sizeof(logos_p2p_module_status)));
      if (status->modules == nullptr) throw std::bad_alloc();
      status->n_modules = s.modules.size();
      for (size_t i = 0; i < s.modules.size(); ++i) {
        const auto& m = s.modules[i];
        auto& row = status->modules[i];
        row.id = m.id;
        row.name = dupString(m.name);
        row.protocols = joinLines(m.protocols);
        row.registrations = m.registrations;
        row.inbound_streams = m.inboundStreams;
        row.outbound_streams = m.outboundStreams;
        row.bytes_in = m.bytesIn;
        row.bytes_out = m.bytesOut;
        row.buffered_bytes = m.bufferedBytes;
        row.bad_messages = m.badMessages;
      }
    }
    if (status->peer_id == nullptr) throw std::bad_alloc();
  });
  if (rc != LOGOS_P2P_OK) logos_p2p_node_status_clear(status);
  return rc;
}

void logos_p2p_node_status_clear(logos_p2p_node_status* status) {
  if (!status) return;
  std::free(status->peer_id);
  for (size_t i = 0; i < status->n_modules; ++i) {
    std::free(status->modules[i].name);
    std::free(status->modules[i].protocols);
  }
  std::free(status->modules);
  std::memset(status, 0, sizeof(*status));
}

int logos_p2p_dial(logos_p2p_facade* f, const char* peer_id, const char* proto, const char* const* addrs,
                   size_t n_addrs, uint32_t timeout_ms, uint64_t* stream_id, logos_p2p_error* err) {
  if (!f || !peer_id || !proto || !stream_id || (n_addrs && !addrs))
    return badArgument(err, "facade, peer_id, proto, stream_id (and addrs) must not be NULL");
  return guarded(err, [&]() {
    std::vector<std::string> list;
    for (size_t i = 0; i < n_addrs; ++i) list.emplace_back(addrs[i]);
    *stream_id = f->facade.dial(peer_id, proto, list, timeout_ms);
  });
}

int logos_p2p_request(logos_p2p_facade* f, const char* peer_id, const char* proto, const char* const* addrs,
                      size_t n_addrs, const uint8_t* data, size_t len, uint32_t timeout_ms, uint32_t max_size,
                      uint8_t** reply, size_t* reply_len, logos_p2p_error* err) {
  if (!peer_id || !proto || (n_addrs && !addrs) || (len && !data))
    return badArgument(err, "peer_id, proto (and addrs, data) must not be NULL");
  return readInto(f, reply, reply_len, err, [&]() {
    std::vector<std::string> list;
    for (size_t i = 0; i < n_addrs; ++i) list.emplace_back(addrs[i]);
    return f->facade.request(peer_id, proto, Bytes(data, data + len), list, timeout_ms, max_size);
  });
}

int logos_p2p_subscribe_peer_events(logos_p2p_facade* f, uint32_t queue_size, logos_p2p_error* err) {
  if (!f) return badArgument(err, "facade must not be NULL");
  return guarded(err, [&]() { f->facade.subscribePeerEvents(queue_size); });
}

int logos_p2p_unsubscribe_peer_events(logos_p2p_facade* f, logos_p2p_error* err) {
  if (!f) return badArgument(err, "facade must not be NULL");
  return guarded(err, [&]() { f->facade.unsubscribePeerEvents(); });
}

int logos_p2p_stream_read(logos_p2p_facade* f, uint64_t id, size_t max_bytes, uint32_t timeout_ms, uint8_t** data,
                          size_t* len, logos_p2p_error* err) {
  return readInto(f, data, len, err, [&]() { return f->facade.streamRead(id, max_bytes, timeout_ms); });
}

int logos_p2p_stream_read_exactly(logos_p2p_facade* f, uint64_t id, size_t n, uint32_t timeout_ms, uint8_t** data,
                                  size_t* len, logos_p2p_error* err) {
  return readInto(f, data, len, err, [&]() { return f->facade.streamReadExactly(id, n, timeout_ms); });
}

int logos_p2p_stream_read_lp(logos_p2p_facade* f, uint64_t id, uint32_t max_size, uint32_t timeout_ms, uint8_t** data,
                             size_t* len, logos_p2p_error* err) {
  return readInto(f, data, len, err, [&]() { return f->facade.streamReadLp(id, max_size, timeout_ms); });
}

int logos_p2p_stream_write(logos_p2p_facade* f, uint64_t id, const uint8_t* data, size_t len, uint32_t timeout_ms,
                           logos_p2p_error* err) {
  if (!f || (len && !data)) return badArgument(err, "facade (and data) must not be NULL");
  return guarded(err, [&]() { f->facade.streamWrite(id, Bytes(data, data + len), timeout_ms); });
}

int logos_p2p_stream_write_lp(logos_p2p_facade* f, uint64_t id, const uint8_t* data, size_t len, uint32_t timeout_ms,
                              logos_p2p_error* err) {
  if (!f || (len && !data)) return badArgument(err, "facade (and data) must not be NULL");
  return guarded(err, [&]() { f->facade.streamWriteLp(id, Bytes(data, data + len), timeout_ms); });
}

int logos_p2p_stream_close_with_eof(logos_p2p_facade* f, uint64_t id, uint32_t timeout_ms, logos_p2p_error* err) {
  if (!f) return badArgument(err, "facade must not be NULL");
  return guarded(err, [&]() { f->facade.streamCloseWithEOF(id, timeout_ms); });
}

int logos_p2p_stream_close(logos_p2p_facade* f, uint64_t id, uint32_t timeout_ms, logos_p2p_error* err) {
  if (!f) return badArgument(err, "facade must not be NULL");
  return guarded(err, [&]() { f->facade.streamClose(id, timeout_ms); });
}

int logos_p2p_stream_reset(logos_p2p_facade* f, uint64_t id, logos_p2p_error* err) {
  if (!f) return badArgument(err, "facade must not be NULL");
  return guarded(err, [&]() { f->facade.streamReset(id); });
}

int logos_p2p_stream_release(logos_p2p_facade* f, uint64_t id, logos_p2p_error* err) {
  if (!f) return badArgument(err, "facade must not be NULL");
  return guarded(err, [&]() { f->facade.streamRelease(id); });
}

int logos_p2p_next_event(logos_p2p_facade* f, uint32_t timeout_ms, logos_p2p_event* event, logos_p2p_error* err) {
  if (!f || !event) return badArgument(err, "facade and event must not be NULL");
  std::memset(event, 0, sizeof(*event));
  return guarded(err, [&]() {
    auto ev = f->facade.nextEvent(timeout_ms);
    if (!ev) return;
    using T = logos::p2p::FacadeEvent::Type;
    switch (ev->type) {
      case T::protocolStream: event->type = LOGOS_P2P_EVENT_PROTOCOL_STREAM; break;
      case T::streamReset: event->type = LOGOS_P2P_EVENT_STREAM_RESET; break;
      case T::nodeShutdown: event->type = LOGOS_P2P_EVENT_NODE_SHUTDOWN; break;
      case T::disconnected: event->type = LOGOS_P2P_EVENT_DISCONNECTED; break;
      case T::peerConnected: event->type = LOGOS_P2P_EVENT_PEER_CONNECTED; break;
      case T::peerDisconnected: event->type = LOGOS_P2P_EVENT_PEER_DISCONNECTED; break;
      case T::peerIdentified: event->type = LOGOS_P2P_EVENT_PEER_IDENTIFIED; break;
      case T::overflowed: event->type = LOGOS_P2P_EVENT_OVERFLOWED; break;
    }
    event->stream_id = ev->streamId;
    event->cause = static_cast<int>(ev->cause);
    switch (ev->type) {
      case T::protocolStream:
        event->proto = dupString(ev->proto);
        event->peer_id = dupString(ev->peerId);
        event->remote_addr = dupString(ev->remoteAddr);
        break;
      case T::peerConnected:
        event->peer_id = dupString(ev->peerId);
        event->remote_addr = dupString(ev->remoteAddr);
        event->direction = ev->outbound ? LOGOS_P2P_OUTBOUND : LOGOS_P2P_INBOUND;
        break;
      case T::peerDisconnected:
        event->peer_id = dupString(ev->peerId);
        event->reason = ev->reason == "closedByUs"     ? LOGOS_P2P_CLOSED_BY_US
                        : ev->reason == "closedByPeer" ? LOGOS_P2P_CLOSED_BY_PEER
                                                       : LOGOS_P2P_DISCONNECT_ERROR;
        break;
      case T::peerIdentified:
        event->peer_id = dupString(ev->peerId);
        event->message = dupString(ev->agentVersion);
        break;
      case T::overflowed: break;
      default: event->message = dupString(ev->message);
    }
  });
}

void logos_p2p_event_clear(logos_p2p_event* event) {
  if (!event) return;
  std::free(event->proto);
  std::free(event->peer_id);
  std::free(event->remote_addr);
  std::free(event->message);
  std::memset(event, 0, sizeof(*event));
}

void logos_p2p_free(void* p) { std::free(p); }

}  // extern "C"
