// The asynchronous client: connection, Node, Registration, Stream (pull mode).
#include "logos_p2p/client.hpp"

#include <capnp/rpc-twoparty.h>
#include <kj/debug.h>

#include <deque>

#include "transport.hpp"
#include "logos_p2p.capnp.h"

namespace logos::p2p {

namespace {

constexpr size_t kWriteChunk = 256 * 1024;   // bytes per Stream.write call
constexpr size_t kWriteWindow = 512 * 1024;  // bytes in unanswered write calls

kj::Exception fail(ErrorKind kind, const std::string& message) { return makeException(kind, message); }

kj::ArrayPtr<const capnp::byte> view(const Bytes& b) { return kj::ArrayPtr<const capnp::byte>(b.data(), b.size()); }

Bytes toBytes(capnp::Data::Reader d) { return Bytes(d.begin(), d.end()); }

void setTexts(capnp::List<capnp::Text>::Builder list, const std::vector<std::string>& values) {
  for (size_t i = 0; i < values.size(); ++i) list.set(static_cast<capnp::uint>(i), values[i].c_str());
}

StreamInfo toInfo(rpc::StreamInfo::Reader r) {
  StreamInfo info;
  info.id = r.getId();
  info.protocol = r.getProtocol().cStr();
  info.remotePeerId = r.getRemotePeerId().cStr();
  info.remoteAddr = r.getRemoteAddr().cStr();
  info.direction = r.getDirection() == rpc::Direction::OUTBOUND ? Direction::outbound : Direction::inbound;
  return info;
}

void appendUvarint(Bytes& out, uint64_t n) {
  while (n >= 0x80) {
    out.push_back(static_cast<uint8_t>(n | 0x80));
    n >>= 7;
  }
  out.push_back(static_cast<uint8_t>(n));
}

// A uvarint at the start of buf: length 0 = incomplete; malformed = over 10 bytes.
struct Varint {
  uint64_t value = 0;
  size_t length = 0;
  bool malformed = false;
};
Varint parseUvarint(const Bytes& buf) {
  Varint v;
  for (size_t i = 0; i < buf.size() && i < 10; ++i) {
    v.value |= static_cast<uint64_t>(buf[i] & 0x7f) << (7 * i);
    if (!(buf[i] & 0x80)) {
      v.length = i + 1;
      return v;
    }
  }
  if (buf.size() >= 10) v.malformed = true;
  return v;
}

}  // namespace

Bytes lpFrame(const Bytes& data) {
  Bytes out;
  out.reserve(data.size() + 10);
  appendUvarint(out, data.size());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

// -- the connection ---------------------------------------------------------------------------

struct Connection {
  kj::Own<kj::AsyncIoStream> stream;
  kj::Own<capnp::TwoPartyClient> client;
  rpc::Node::Client node;
  bool shuttingDown = false;
  bool disconnected = false;
  kj::Own<kj::PromiseFulfiller<void>> endedFulfiller;
  kj::ForkedPromise<void> ended;
  kj::Promise<void> watchShutdown = nullptr;
  kj::Promise<void> watchDisconnect = nullptr;

  Connection(kj::Own<kj::AsyncIoStream> s, kj::PromiseFulfillerPair<void> paf)
      : stream(kj::mv(s)),
        client(kj::heap<capnp::TwoPartyClient>(*stream)),
        node(client->bootstrap().castAs<rpc::Node>()),
        endedFulfiller(kj::mv(paf.fulfiller)),
        ended(paf.promise.fork()) {}

  ~Connection() {
    // the watchers refer to the client: drop them, then the client, then the stream
    watchShutdown = nullptr;
    watchDisconnect = nullptr;
    node = nullptr;
    client = nullptr;
  }

  void end() {
    if (endedFulfiller->isWaiting()) endedFulfiller->fulfill();
  }
};

namespace {

std::shared_ptr<Connection> startConnection(kj::Own<kj::AsyncIoStream> stream) {
  auto conn = std::make_shared<Connection>(kj::mv(stream), kj::newPromiseAndFulfiller<void>());
  Connection* c = conn.get();  // the watchers are owned by the connection: a raw pointer is safe
  c->watchShutdown = c->node.waitShutdownRequest()
                         .send()
                         .then([c](auto&&) {
                           c->shuttingDown = true;
                           c->end();
                         },
                               [](kj::Exception&&) {})
                         .eagerlyEvaluate(nullptr);
  c->watchDisconnect = c->client->onDisconnect()
                           .then([c]() {
                             c->disconnected = true;
                             c->end();
                           },
                                 [c](kj::Exception&&) {
                                   c->disconnected = true;
                                   c->end();
                                 })
                           .eagerlyEvaluate(nullptr);
  return conn;
}

}  // namespace

kj::Promise<Node> connect(kj::AsyncIoContext& io, const std::string& address, const ConnectOptions& options) {
  return transport::open(io, address, options).then([](kj::Own<kj::AsyncIoStream> stream) {
    return Node(startConnection(kj::mv(stream)));
  });
}

kj::Promise<Node> connect(kj::AsyncIoContext& io, const std::string& address, const std::string& token) {
  ConnectOptions options;
  options.token = token;
  return connect(io, address, options);
}

// -- Node ---------------------------------------------------------------------------------------

Node::Node(std::shared_ptr<Connection> connection) : conn_(kj::mv(connection)) {}

bool Node::shuttingDown() const { return conn_->shuttingDown; }
bool Node::disconnected() const { return conn_->disconnected; }
kj::Promise<void> Node::onEnded() { return conn_->ended.addBranch(); }

kj::Promise<NodeInfo> Node::info() {
  return conn_->node.infoRequest().send().then([](auto&& answer) {
    auto r = answer.getInfo();
    NodeInfo info;
    info.peerId = r.getPeerId().cStr();
    for (auto a : r.getAddrs()) info.addrs.emplace_back(a.cStr());
    info.version = r.getVersion().cStr();
    return info;
  });
}

namespace {
PeerInfo toPeerInfo(rpc::PeerInfo::Reader r) {
  PeerInfo peer;
  peer.peerId = r.getPeerId().cStr();
  for (auto a : r.getAddrs()) peer.addrs.emplace_back(a.cStr());
  return peer;
}
}  // namespace

kj::Promise<PeerInfo> Node::connectPeer(const std::string& addr, uint32_t timeoutMs) {
  auto req = conn_->node.connectPeerRequest();
  req.setAddr(addr.c_str());
  req.setTimeoutMs(timeoutMs);
  return req.send().then([](auto&& answer) { return toPeerInfo(answer.getPeer()); });
}

kj::Promise<void> Node::disconnectPeer(const std::string& peerId) {
  auto req = conn_->node.disconnectPeerRequest();
  req.setPeerId(peerId.c_str());
  return req.send().ignoreResult();
}

kj::Promise<std::vector<PeerInfo>> Node::peers() {
  return conn_->node.peersRequest().send().then([](auto&& answer) {
    std::vector<PeerInfo> out;
    for (auto p : answer.getPeers()) out.push_back(toPeerInfo(p));
    return out;
  });
}

kj::Promise<NodeStatus> Node::status() {
  return conn_->node.statusRequest().send().then([](auto&& answer) {
    auto r = answer.getStatus();
    NodeStatus status;
    status.peerId = r.getPeerId().cStr();
    for (auto m : r.getModules()) {
      ModuleStatus row;
      row.id = m.getId();
      row.name = m.getName().cStr();
      for (auto p : m.getProtocols()) row.protocols.emplace_back(p.cStr());
      row.registrations = m.getRegistrations();
      row.inboundStreams = m.getInboundStreams();
      row.outboundStreams = m.getOutboundStreams();
      row.bytesIn = m.getBytesIn();
      row.bytesOut = m.getBytesOut();
      row.bufferedBytes = m.getBufferedBytes();
      row.badMessages = m.getBadMessages();
      status.modules.push_back(kj::mv(row));
    }
    status.streams = r.getStreams();
    status.registrations = r.getRegistrations();
    for (auto c : r.getResets()) {
      auto i = static_cast<size_t>(c.getCause());
      if (i < sizeof(status.resets) / sizeof(status.resets[0])) status.resets[i] += c.getCount();
    }
    status.streamsTotal = r.getStreamsTotal();
    status.tasks = r.getTasks();
    status.authFailures = r.getAuthFailures();
    status.reservations = r.getReservations();
    status.subscriptions = r.getSubscriptions();
    return status;
  });
}

kj::Promise<void> Node::setModuleName(const std::string& name) {
  auto req = conn_->node.setModuleNameRequest();
  req.setModuleName(name.c_str());
  return req.send().ignoreResult();
}

// -- streams ------------------------------------------------------------------------------------

struct StreamState {
  std::shared_ptr<Connection> conn;
  kj::Maybe<rpc::Stream::Client> cap;  // null once released
  StreamInfo info;
  uint64_t position = 0;  // stream bytes received from the node (the pull cursor)
  Bytes rx;               // received, not yet consumed (only after a cancelled readExactly/readLp)
  bool eof = false;
  bool reading = false;
  bool writing = false;
  bool writeClosed = false;
  bool closed = false;       // close() or reset() was called
  bool writeBroken = false;  // a write was cancelled half-way
  kj::Maybe<kj::Exception> failure;  // sticky: the stream was reset
  std::deque<std::pair<kj::Promise<void>, size_t>> inflight;
  size_t inflightBytes = 0;
  kj::Maybe<kj::Exception> writeError;

  StreamState(std::shared_ptr<Connection> c, rpc::Stream::Client s, StreamInfo i)
      : conn(kj::mv(c)), cap(kj::mv(s)), info(kj::mv(i)) {}

  rpc::Stream::Client& client() {
    KJ_IF_MAYBE(c, cap) { return *c; }
    kj::throwFatalException(fail(ErrorKind::streamClosed, "the stream was released"));
  }

  void checkUsable() {
    KJ_IF_MAYBE(f, failure) { kj::throwFatalException(kj::cp(*f)); }
    if (closed || cap == nullptr) kj::throwFatalException(fail(ErrorKind::streamClosed, "the stream is closed"));
  }

  void checkWritable() {
    checkUsable();
    KJ_IF_MAYBE(e, writeError) { kj::throwFatalException(kj::cp(*e)); }
    if (writeClosed) kj::throwFatalException(fail(ErrorKind::streamClosed, "the write side is closed"));
    if (writeBroken)
      kj::throwFatalException(fail(ErrorKind::streamClosed, "a write was cancelled half-way: reset the stream"));
  }

  // A failure of a call on this stream: remember resets, so later calls fail the same way.
  kj::Exception failed(kj::Exception&& e) {
    auto info = classify(e, conn->shuttingDown);
    if (info.kind == ErrorKind::streamReset || info.kind == ErrorKind::nodeShutdown ||
        info.kind == ErrorKind::nodeDisconnected) {
      if (failure == nullptr) failure = makeException(info.kind, info.message, info.cause);
      return makeException(info.kind, info.message, info.cause);
    }
    return kj::mv(e);
  }

  void dropCap() {
    inflight.clear();
    inflightBytes = 0;
    cap = nullptr;
  }

  Bytes take(size_t n) {
    n = std::min(n, rx.size());
    Bytes out(rx.begin(), rx.begin() + static_cast<std::ptrdiff_t>(n));
    rx.erase(rx.begin(), rx.begin() + static_cast<std::ptrdiff_t>(n));
    return out;
  }
};

namespace {

using State = std::shared_ptr<StreamState>;

kj::Promise<void> guardRead(const State& s) {
  s->checkUsable();
  if (s->reading) return fail(ErrorKind::busy, "another read is pending on this stream");
  s->reading = true;
  return kj::READY_NOW;
}

// One Stream.read; appends to rx. At most `want` bytes.
kj::Promise<void> pull(State s, size_t want) {
  auto req = s->client().readRequest();
  req.setMaxBytes(static_cast<uint32_t>(std::max<size_t>(1, std::min<size_t>(want, kMaxReadAnswer))));
  req.setPosition(s->position);
  return req.send().then(
      [s](auto&& answer) {
        auto data = answer.getData();
        if (answer.getNext() != s->position + data.size()) {
          s->failure = makeException(ErrorKind::streamReset, "the node answered a read out of position",
                                     Cause::protocolError);
          kj::throwFatalException(kj::cp(KJ_ASSERT_NONNULL(s->failure)));
        }
        s->position = answer.getNext();
        s->rx.insert(s->rx.end(), data.begin(), data.end());
        if (answer.getEof()) s->eof = true;
      },
      [s](kj::Exception&& e) { kj::throwFatalException(s->failed(kj::mv(e))); });
}

kj::Promise<Bytes> readExactlyLoop(State s, size_t n) {
  s->checkUsable();
  if (s->rx.size() >= n) return s->take(n);
  if (s->eof) {
    size_t got = s->rx.size();
    s->rx.clear();
    return fail(ErrorKind::endOfStream,
                "end of stream after " + std::to_string(got) + " of " + std::to_string(n) + " bytes");
  }
  return pull(s, n - s->rx.size()).then([s, n]() { return readExactlyLoop(s, n); });
}

// readLp on bytes already buffered here (after a cancelled read): parse locally.
kj::Promise<Bytes> localFrame(State s, uint32_t maxSize) {
  s->checkUsable();
  Varint v = parseUvarint(s->rx);
  if (v.malformed) return fail(ErrorKind::invalidArgument, "malformed length prefix");
  if (v.length == 0) {
    if (s->eof) {
      s->rx.clear();
      return fail(ErrorKind::endOfStream, "end of stream inside a length-prefixed frame");
    }
    return pull(s, 16).then([s, maxSize]() { return localFrame(s, maxSize); });
  }
  if (v.value > maxSize)
    return fail(ErrorKind::frameTooLarge,
                "a frame of " + std::to_string(v.value) + " bytes is over maxSize " + std::to_string(maxSize));
  size_t total = v.length + static_cast<size_t>(v.value);
  return readExactlyLoop(s, total).then([v](Bytes frame) {
    return Bytes(frame.begin() + static_cast<std::ptrdiff_t>(v.length), frame.end());
  });
}

// The answer to the oldest write in flight; its failure becomes the stream's write error.
kj::Promise<void> oldestAnswered(State s) {
  auto front = kj::mv(s->inflight.front());
  s->inflight.pop_front();
  size_t size = front.second;
  return front.first.then([s, size]() { s->inflightBytes -= size; },
                          [s, size](kj::Exception&& e) {
                            s->inflightBytes -= size;
                            auto error = s->failed(kj::mv(e));
                            if (s->writeError == nullptr) s->writeError = kj::cp(error);
                            kj::throwFatalException(kj::mv(error));
                          });
}

kj::Promise<void> flush(State s) {
  if (s->inflight.empty()) {
    KJ_IF_MAYBE(e, s->writeError) { return kj::cp(*e); }
    return kj::READY_NOW;
  }
  return oldestAnswered(s).then([s]() { return flush(s); });
}

// Send data[off..] in chunks, keeping at most kWriteWindow bytes unanswered.
kj::Promise<void> writeLoop(State s, std::shared_ptr<Bytes> data, size_t off) {
  if (off >= data->size()) return kj::READY_NOW;
  s->checkWritable();
  size_t n = std::min(kWriteChunk, data->size() - off);
  if (!s->inflight.empty() && s->inflightBytes + n > kWriteWindow) {
    return oldestAnswered(s).then([s, data, off]() { return writeLoop(s, data, off); });
  }
  auto req = s->client().writeRequest();
  req.setData(kj::ArrayPtr<const capnp::byte>(data->data() + off, n));
  s->inflight.emplace_back(req.send().ignoreResult(), n);
  s->inflightBytes += n;
  return writeLoop(s, data, off + n);
}

kj::Promise<void> guardWrite(const State& s) {
  s->checkWritable();
  if (s->writing) return fail(ErrorKind::busy, "another write is pending on this stream");
  s->writing = true;
  return kj::READY_NOW;
}

}  // namespace

Stream::Stream(std::shared_ptr<StreamState> state) : state_(kj::mv(state)) {}
Stream::Stream(Stream&&) noexcept = default;
Stream& Stream::operator=(Stream&& other) noexcept {
  if (this != &other) {
    release();
    state_ = kj::mv(other.state_);
  }
  return *this;
}
Stream::~Stream() { release(); }

void Stream::release() {
  if (state_) state_->dropCap();
}
bool Stream::released() const { return !state_ || state_->cap == nullptr; }
const StreamInfo& Stream::info() const { return state_->info; }

kj::Promise<StreamInfo> Stream::fetchInfo() {
  auto s = state_;
  return kj::evalNow([s]() {
    s->checkUsable();
    return s->client().infoRequest().send().then([](auto&& a) { return toInfo(a.getInfo()); },
                                                 [s](kj::Exception&& e) -> StreamInfo {
                                                   kj::throwFatalException(s->failed(kj::mv(e)));
                                                 });
  });
}

kj::Promise<Bytes> Stream::read(size_t maxBytes) {
  auto s = state_;
  if (maxBytes == 0) return fail(ErrorKind::invalidArgument, "maxBytes must be positive");
  return kj::evalNow([s]() { return guardRead(s); })
      .then([s, maxBytes]() -> kj::Promise<Bytes> {
        auto done = kj::defer([s]() { s->reading = false; });
        if (!s->rx.empty()) return s->take(maxBytes);
        if (s->eof) return Bytes();
        return pull(s, maxBytes).then([s, maxBytes]() { return s->take(maxBytes); }).attach(kj::mv(done));
      });
}

kj::Promise<Bytes> Stream::readExactly(size_t n) {
  auto s = state_;
  return kj::evalNow([s]() { return guardRead(s); }).then([s, n]() {
    return readExactlyLoop(s, n).attach(kj::defer([s]() { s->reading = false; }));
  });
}

kj::Promise<Bytes> Stream::readLp(uint32_t maxSize) {
  auto s = state_;
  return kj::evalNow([s]() { return guardRead(s); }).then([s, maxSize]() -> kj::Promise<Bytes> {
    auto done = kj::defer([s]() { s->reading = false; });
    if (!s->rx.empty()) return localFrame(s, maxSize).attach(kj::mv(done));
    if (s->eof) return fail(ErrorKind::endOfStream, "end of stream before a length-prefixed frame");
    auto req = s->client().readLpRequest();
    req.setMaxSize(maxSize);
    req.setPosition(s->position);
    return req.send()
        .then(
            [s](auto&& answer) -> Bytes {
              auto data = answer.getData();
              if (answer.getEof()) {
                s->eof = true;
                kj::throwFatalException(fail(ErrorKind::endOfStream, "end of stream before a length-prefixed frame"));
              }
              // next counts the prefix: position + uvarint length + len(data)
              Bytes prefix;
              appendUvarint(prefix, data.size());
              if (answer.getNext() != s->position + prefix.size() + data.size()) {
                s->failure = makeException(ErrorKind::streamReset, "the node answered a readLp out of position",
                                           Cause::protocolError);
                kj::throwFatalException(kj::cp(KJ_ASSERT_NONNULL(s->failure)));
              }
              s->position = answer.getNext();
              return toBytes(data);
            },
            [s](kj::Exception&& e) -> Bytes { kj::throwFatalException(s->failed(kj::mv(e))); })
        .attach(kj::mv(done));
  });
}

kj::Promise<void> Stream::write(Bytes data) {
  auto s = state_;
  auto shared = std::make_shared<Bytes>(kj::mv(data));
  return kj::evalNow([s]() { return guardWrite(s); }).then([s, shared]() {
    auto completed = std::make_shared<bool>(false);
    return writeLoop(s, shared, 0)
        .then([completed]() { *completed = true; })
        .attach(kj::defer([s, completed]() {
          s->writing = false;
          if (!*completed && s->writeError == nullptr && s->failure == nullptr) s->writeBroken = true;
        }));
  });
}

kj::Promise<void> Stream::writeLp(const Bytes& data) { return write(lpFrame(data)); }

kj::Promise<void> Stream::closeWrite() {
  auto s = state_;
  return kj::evalNow([s]() -> kj::Promise<void> {
    s->checkUsable();
    if (s->writeClosed) return kj::READY_NOW;
    if (s->writing) return fail(ErrorKind::busy, "another write is pending on this stream");
    s->writing = true;
    return flush(s)
        .then([s]() {
          s->writeClosed = true;
          return s->client().closeWriteRequest().send().ignoreResult();
        })
        .catch_([s](kj::Exception&& e) { kj::throwFatalException(s->failed(kj::mv(e))); })
        .attach(kj::defer([s]() { s->writing = false; }));
  });
}

kj::Promise<void> Stream::close() {
  auto s = state_;
  return kj::evalNow([s]() -> kj::Promise<void> {
    if (s->closed && s->cap == nullptr && s->failure == nullptr) return kj::READY_NOW;
    s->checkUsable();
    return flush(s)
        .then([s]() {
          s->closed = true;
          return s->client().closeRequest().send().ignoreResult();
        })
        .then([s]() { s->dropCap(); },
              [s](kj::Exception&& e) {
                auto error = s->failed(kj::mv(e));
                s->closed = true;
                KJ_IF_MAYBE(c, s->cap) { c->resetRequest().send().detach([](kj::Exception&&) {}); }
                s->dropCap();
                kj::throwFatalException(kj::mv(error));
              });
  });
}

kj::Promise<void> Stream::reset() {
  auto s = state_;
  s->closed = true;
  if (s->failure == nullptr) s->failure = makeException(ErrorKind::streamReset, "reset by this module", Cause::localReset);
  KJ_IF_MAYBE(c, s->cap) {
    auto promise = c->resetRequest().send().ignoreResult().catch_([](kj::Exception&&) {});
    s->dropCap();
    return promise;
  }
  return kj::READY_NOW;
}

// -- registrations --------------------------------------------------------------------------------

namespace {

class HandlerImpl final : public rpc::Handler::Server {
 public:
  HandlerImpl(std::shared_ptr<Connection> conn, Handler fn) : conn_(kj::mv(conn)), fn_(kj::mv(fn)) {}

  kj::Promise<void> handle(HandleContext context) override {
    auto params = context.getParams();
    auto state = std::make_shared<StreamState>(conn_, params.getStream(), toInfo(params.getInfo()));
    fn_(Stream(kj::mv(state)));  // no sink: the module pulls with Stream.read
    return kj::READY_NOW;
  }

 private:
  std::shared_ptr<Connection> conn_;
  Handler fn_;
};

class ResponderImpl final : public rpc::Responder::Server {
 public:
  explicit ResponderImpl(Responder fn) : fn_(kj::mv(fn)) {}

  kj::Promise<void> respond(RespondContext context) override {
    auto params = context.getParams();
    return fn_(toBytes(params.getRequest()), toInfo(params.getInfo())).then([context](Bytes reply) mutable {
      context.getResults().setReply(view(reply));
    });
  }

 private:
  Responder fn_;
};

class PeerEventsImpl final : public rpc::PeerEvents::Server {
 public:
  explicit PeerEventsImpl(PeerEventHandler fn) : fn_(kj::mv(fn)) {}

  kj::Promise<void> event(EventContext context) override {
    auto r = context.getParams().getEvent();
    PeerEvent ev;
    ev.peerId = r.getPeerId().cStr();
    switch (r.which()) {
      case rpc::PeerEvent::CONNECTED: {
        auto c = r.getConnected();
        ev.type = PeerEvent::Type::connected;
        ev.remoteAddr = c.getRemoteAddr().cStr();
        ev.direction = c.getDirection() == rpc::Direction::OUTBOUND ? Direction::outbound : Direction::inbound;
        break;
      }
      case rpc::PeerEvent::DISCONNECTED:
        ev.type = PeerEvent::Type::disconnected;
        switch (r.getDisconnected()) {
          case rpc::DisconnectReason::CLOSED_BY_US: ev.reason = DisconnectReason::closedByUs; break;
          case rpc::DisconnectReason::CLOSED_BY_PEER: ev.reason = DisconnectReason::closedByPeer; break;
          default: ev.reason = DisconnectReason::error; break;
        }
        break;
      case rpc::PeerEvent::IDENTIFIED: {
        auto i = r.getIdentified();
        ev.type = PeerEvent::Type::identified;
        for (auto p : i.getProtocols()) ev.protocols.emplace_back(p.cStr());
        ev.agentVersion = i.getAgentVersion().cStr();
        break;
      }
      case rpc::PeerEvent::OVERFLOWED: ev.type = PeerEvent::Type::overflowed; break;
      default: return kj::READY_NOW;  // a newer node's event: ignored
    }
    fn_(ev);
    return kj::READY_NOW;
  }

 private:
  PeerEventHandler fn_;
};

std::shared_ptr<void> holdRegistration(rpc::Registration::Client cap) {
  return std::make_shared<rpc::Registration::Client>(kj::mv(cap));
}

}  // namespace

Registration::Registration(std::shared_ptr<void> cap, std::vector<std::string> protocols, uint64_t id)
    : cap_(kj::mv(cap)), protocols_(kj::mv(protocols)), id_(id) {}
Registration::Registration(Registration&&) noexcept = default;
Registration& Registration::operator=(Registration&&) noexcept = default;
Registration::~Registration() = default;

kj::Promise<void> Registration::unregister() {
  auto cap = kj::mv(cap_);
  if (!cap) return kj::READY_NOW;
  auto& client = *static_cast<rpc::Registration::Client*>(cap.get());
  return client.unregisterRequest().send().ignoreResult().attach(kj::mv(cap));
}

const char* disconnectReasonName(DisconnectReason reason) {
  switch (reason) {
    case DisconnectReason::closedByUs: return "closedByUs";
    case DisconnectReason::closedByPeer: return "closedByPeer";
    case DisconnectReason::error: return "error";
  }
  return "error";
}

Subscription::Subscription(std::shared_ptr<void> cap) : cap_(kj::mv(cap)) {}
Subscription::Subscription(Subscription&&) noexcept = default;
Subscription& Subscription::operator=(Subscription&&) noexcept = default;
Subscription::~Subscription() = default;

kj::Promise<void> Subscription::cancel() {
  auto cap = kj::mv(cap_);
  if (!cap) return kj::READY_NOW;
  auto& client = *static_cast<rpc::Subscription::Client*>(cap.get());
  return client.cancelRequest().send().ignoreResult().attach(kj::mv(cap));
}

kj::Promise<Subscription> Node::subscribePeerEvents(PeerEventHandler handler, uint32_t queueSize) {
  auto req = conn_->node.subscribePeerEventsRequest();
  req.setSubscriber(kj::heap<PeerEventsImpl>(kj::mv(handler)));
  req.setQueueSize(queueSize);
  return req.send().then([](auto&& answer) {
    return Subscription(std::make_shared<rpc::Subscription::Client>(answer.getSubscription()));
  });
}

kj::Promise<Registration> Node::registerProtocols(const std::vector<std::string>& protocols, Handler handler,
                                                  RegisterOptions options) {
  auto req = conn_->node.registerProtocolsRequest();
  setTexts(req.initProtocols(static_cast<capnp::uint>(protocols.size())), protocols);
  req.setHandler(kj::heap<HandlerImpl>(conn_, kj::mv(handler)));
  auto opts = req.initOptions();
  opts.setShare(options.share);
  opts.setAcceptTimeoutMs(options.acceptTimeoutMs);
  opts.setChannel(false);
  return req.send().then([protocols](auto&& answer) {
    return Registration(holdRegistration(answer.getRegistration()), protocols, answer.getId());
  });
}

kj::Promise<Registration> Node::serve(const std::vector<std::string>& protocols, Responder responder,
                                      ServeOptions options) {
  auto req = conn_->node.serveRequest();
  setTexts(req.initProtocols(static_cast<capnp::uint>(protocols.size())), protocols);
  req.setResponder(kj::heap<ResponderImpl>(kj::mv(responder)));
  auto opts = req.initOptions();
  opts.setShare(options.share);
  opts.setMaxSize(options.maxSize);
  opts.setTimeoutMs(options.timeoutMs);
  return req.send().then([protocols](auto&& answer) {
    return Registration(holdRegistration(answer.getRegistration()), protocols, answer.getId());
  });
}

kj::Promise<Stream> Node::openStream(const std::string& peerId, const std::vector<std::string>& protocols,
                                     const std::vector<std::string>& addrs, uint32_t timeoutMs) {
  auto req = conn_->node.openStreamRequest();
  req.setPeerId(peerId.c_str());
  setTexts(req.initProtocols(static_cast<capnp::uint>(protocols.size())), protocols);
  setTexts(req.initAddrs(static_cast<capnp::uint>(addrs.size())), addrs);
  req.setTimeoutMs(timeoutMs);
  auto conn = conn_;
  return req.send().then([conn](auto&& answer) {
    return Stream(std::make_shared<StreamState>(conn, answer.getStream(), toInfo(answer.getInfo())));
  });
}

kj::Promise<Bytes> Node::request(const std::string& peerId, const std::vector<std::string>& protocols,
                                 const Bytes& data, const std::vector<std::string>& addrs, uint32_t timeoutMs,
                                 uint32_t maxSize, bool closeWrite) {
  auto req = conn_->node.requestRequest();
  req.setPeerId(peerId.c_str());
  setTexts(req.initProtocols(static_cast<capnp::uint>(protocols.size())), protocols);
  setTexts(req.initAddrs(static_cast<capnp::uint>(addrs.size())), addrs);
  req.setData(view(data));
  req.setTimeoutMs(timeoutMs);
  req.setMaxSize(maxSize);
  req.setCloseWrite(closeWrite);
  return req.send().then([](auto&& answer) { return toBytes(answer.getReply()); });
}

}  // namespace logos::p2p
