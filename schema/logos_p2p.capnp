# logos-p2p: custom libp2p protocols handled by modules in other processes.
#
# A module connects to the node's RPC endpoint, then speaks Cap'n Proto's two-party
# protocol on it (standard framing, unpacked):
#   unix:PATH      a unix stream socket; a client should check (SO_PEERCRED) that the
#                  process behind it runs as its own user or root, as ours do;
#   tcp:HOST:PORT  first a token exchange (src/logos_p2p/_auth.py: a 41-byte hello
#                  "LP2PAUTH" 0x01 nonce, HMAC-SHA256 proofs both ways), then RPC;
#   tls:HOST:PORT  TLS 1.3 first. The client checks the node's certificate, pinned by
#                  its fingerprint ("sha256:" + hex SHA-256 of the certificate's DER,
#                  as `logos-p2p info` prints it) or against a CA with the host name;
#                  then the same token exchange inside TLS, except that a node which
#                  admitted the client by its certificate sends hello version 0x02 and
#                  asks for no token; then RPC on the same TLS connection.
# (clients/cpp/src/auth.cpp and tls.cpp implement both in C++, on OpenSSL.) The module
# takes the bootstrap `Node` capability, registers protocol ids with a `Handler`
# capability of its own, and then handles each libp2p stream as a `Stream`
# capability implemented by the node.
#
# Lifecycle is carried by capabilities:
#   * dropping a `Stream` that is not closed resets the libp2p stream;
#   * dropping a `Registration` unmounts its protocol ids;
#   * closing the RPC connection does both for everything the module holds.
#
# Errors. Every method may fail. A failure raised by logos-p2p itself carries, in
# its exception description, one marker line
#
#     [logos-p2p:<kind>] <human readable message>
#
# and nothing else of the node (no traceback: that stays in the node's log). The
# description carries a prefix before the marker (a C++ client reads e.g.
# "remote exception: message = logos_p2p.RemoteError: "); find the last
# "[logos-p2p:" in it. <kind> is one of
# (camelCase, as the `Cause` names are; nodes before 0.2 wrote them in kebab-case,
# e.g. stream-reset, invalid-argument, and clients should read both):
#     streamReset:<cause>      the stream was reset; <cause> is a `Cause` name
#                              (e.g. streamReset:remoteReset, streamReset:connectionLost)
#     streamClosed             the module already closed this stream (or its write side)
#     busy                     another read (or write) is already pending on this stream
#     nodeShutdown             the node is shutting down
#     protocolNotSupported     the remote peer speaks none of the requested protocols
#     peerUnreachable          no connection to the peer could be made
#     negotiationFailed        protocol negotiation broke off (the peer reset or closed the stream)
#     timeout                  the operation's own timeout expired
#     invalidArgument          a parameter is malformed (bad protocol id, peer id, size...)
#     protocolInUse            another module registered that protocol id
#     limitExceeded            a node limit (streams, registrations, sizes) was reached
#     frameTooLarge            a length-prefixed frame is longer than maxSize
#     endOfStream              the stream ended in the middle of a length-prefixed frame
#     internal                 the node itself failed (a bug: its log has the details)
# An unknown <kind> or <cause> is to be read as `internal` / `protocolError`.
# Failures of the RPC connection itself are Cap'n Proto DISCONNECTED exceptions.
#
# C++ authors. `register` is a C++ keyword: the generated names are
# `registerProtocolsRequest()` (client) and `registerProtocols` (server), by the
# $Cxx.name below; `EndReason.eof` is `endOfStream` in C++ (stdio's EOF macro). The
# wire format is unchanged by either. Debian's CapnProtoConfig.cmake probes for
# libatomic with a C compiler: declare `project(name C CXX)`, not CXX alone.
#
# Flow control. No method here is a `-> stream` method on purpose: a pending
# streaming call blocks every later call on the same capability, which would
# let a write stuck behind a slow peer block `reset`. Instead the caller keeps
# a bounded window of in-flight `write`s (the node answers a write once the
# data fits its bounded per-stream queue), and the node keeps a bounded window
# of in-flight `ByteSink.push`es (the module answers once the data fits its own
# bounded buffer). Calls on one capability are delivered in order, so writes
# and pushes stay ordered without waiting for each reply.

@0xadfba88a60b1ecdc;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("logos::p2p::rpc");

struct NodeInfo {
  peerId @0 :Text;            # base58 peer id of the node
  addrs @1 :List(Text);       # dialable multiaddrs, each ending in /p2p/<peerId>
  version @2 :Text;           # logos-p2p version of the node
}

struct PeerInfo {
  peerId @0 :Text;
  addrs @1 :List(Text);       # remote multiaddrs of the open connections
}

enum Direction {
  # Of a stream: inbound = opened by the remote peer, delivered to a Handler;
  # outbound = opened by a module through Node.openStream. Of a connection: who dialed.
  inbound @0;
  outbound @1;
}

struct StreamInfo {
  id @0 :UInt64;              # unique within this node process
  protocol @1 :Text;          # the negotiated protocol id
  remotePeerId @2 :Text;
  remoteAddr @3 :Text;        # multiaddr of the connection's remote end ("" if unknown)
  direction @4 :Direction;
}

enum Cause {
  localReset @0;              # the module called reset()
  remoteReset @1;             # the remote peer reset the stream
  connectionLost @2;          # the libp2p connection to the peer closed or broke
  nodeShutdown @3;            # the node is shutting down
  moduleGone @4;              # the module's RPC connection closed
  capabilityDropped @5;       # the module dropped the Stream without closing it
  handlerFailed @6;           # the Handler raised, refused or never answered
  timeout @7;                 # an accept or idle timeout expired
  limitExceeded @8;           # a node limit was exceeded
  protocolError @9;           # malformed data or an internal failure
}

struct EndReason {
  # Why the inbound byte flow (remote peer -> module) ended.
  message @0 :Text;
  union {
    eof @1 :Void $Cxx.name("endOfStream");  # the remote peer half-closed: no more data,
                              # writing still allowed
    reset @2 :Cause;          # the stream is reset: every later operation fails
  }
}

struct RegisterOptions {
  share @0 :Bool = false;     # let other registrations that also share serve the same ids
                              # (inbound streams are spread round-robin)
  acceptTimeoutMs @1 :UInt32 = 0;   # how long Handler.handle may take; 0 = node default
  channel @2 :Bool = false;   # deliver inbound streams over this connection's data channel
                              # (see "The local data channel" below) instead of Handler.handle
}

struct ModuleStatus {
  id @0 :UInt64;
  name @1 :Text;
  protocols @2 :List(Text);   # protocol ids registered by this module
  registrations @3 :UInt32;
  inboundStreams @4 :UInt32;
  outboundStreams @5 :UInt32;
  bytesIn @6 :UInt64;         # bytes received from remote peers for this module
  bytesOut @7 :UInt64;        # bytes written to remote peers by this module
  bufferedBytes @8 :UInt64;   # bytes held by the node for this module's streams
  badMessages @9 :UInt64;     # data channel messages the node dropped or refused
}

struct ScopeUse {
  # One resource of one scope of the node's resource manager, against its limit.
  scope @0 :Text;     # "system", "transient", "module:<id>", "protocol:<id>", "peer:<id>", "source:<ip>"
  resource @1 :Text;  # "streamsIn", "streamsOut", "streams", "memory" (bytes), "fds", "connsIn", ...
  used @2 :UInt64;
  limit @3 :UInt64;
}

struct Refusals {
  # Admissions refused since start, by the kind of scope that had no room and the resource.
  scope @0 :Text;     # "system", "transient", "module", "protocol", "peer", "source"
  resource @1 :Text;
  count @2 :UInt64;
}

struct CauseCount {
  cause @0 :Cause;
  count @1 :UInt64;
}

struct Status {
  peerId @0 :Text;
  modules @1 :List(ModuleStatus);
  streams @2 :UInt32;         # open bridged streams, all modules
  registrations @3 :UInt32;
  resets @4 :List(CauseCount);  # resets since start, by cause
  streamsTotal @5 :UInt64;    # streams bridged since start
  tasks @6 :UInt32;           # node tasks serving streams and calls in progress (0 when idle)
  authFailures @7 :UInt64;    # TCP RPC clients refused since start (wrong, no or late token proof)
  limits @8 :List(ScopeUse);  # the node-wide, transient, module and protocol scopes, and the busiest peers
  refusals @9 :List(Refusals);
  reservations @10 :UInt32;   # grants and memory accounts held (0 when the node is idle)
  subscriptions @11 :UInt32;  # peer event subscriptions, all modules
}

interface Node {
  # Bootstrap capability: one per RPC connection ("module").

  info @0 () -> (info :NodeInfo);
  connectPeer @1 (addr :Text, timeoutMs :UInt32) -> (peer :PeerInfo);
  # addr: a multiaddr ending in /p2p/<peerId>. timeoutMs 0 = node default.
  disconnectPeer @2 (peerId :Text) -> ();
  peers @3 () -> (peers :List(PeerInfo));

  register @4 (protocols :List(Text), handler :Handler, options :RegisterOptions)
      -> (registration :Registration, id :UInt64) $Cxx.name("registerProtocols");
  # Mounts the protocol ids on the node's libp2p host. Every inbound stream that
  # negotiates one of them is given to `handler`. The ids stay mounted until the
  # Registration is unregistered or dropped, or this RPC connection closes.

  openStream @5 (peerId :Text, protocols :List(Text), addrs :List(Text), timeoutMs :UInt32,
                 sink :ByteSink) -> (stream :Stream, info :StreamInfo);
  # Opens an outbound stream, dialing `addrs` (multiaddrs, optional) if not
  # connected. `protocols` are tried in order. With a `sink`, inbound bytes are
  # pushed to it; without one, use Stream.read. `peerId` may be "" when `addrs` name
  # the peer (each ending in /p2p/<peerId>, all the same); an address naming another
  # peer than `peerId` is invalidArgument. Limits: 64 protocol ids of at most 512 bytes,
  # 64 addresses of at most 1024 bytes; timeoutMs 0 = the node's 30 s.

  status @6 () -> (status :Status);
  # What the node holds, for operators and tests.

  waitShutdown @7 () -> ();
  # Returns when the node begins to shut down (a long poll).

  setModuleName @8 (moduleName :Text) -> ();
  # A name for this connection in status reports.

  dataChannel @9 () -> (path :Text, token :Data);
  # Offers this connection a local data channel (see below): connect a
  # SOCK_SEQPACKET unix socket to `path` and send `token` in a `hello` within
  # 10 s. Only nodes whose RPC endpoint is a unix socket offer one.

  subscribePeerEvents @10 (subscriber :PeerEvents, queueSize :UInt32) -> (subscription :Subscription);
  # Pushes peer events to `subscriber`, in order, from now on (call `peers` after
  # subscribing for the peers already connected). `queueSize` (1..4096, 0 = 256)
  # bounds the events the node holds for a subscriber that has not answered: when
  # it is full the node drops them all and sends one `overflowed` event, then goes on.
  # Dropping the Subscription (or cancelling it) unsubscribes; so does a failing
  # `PeerEvents.event` call.

  request @11 (peerId :Text, protocols :List(Text), addrs :List(Text), data :Data,
               timeoutMs :UInt32, maxSize :UInt32, closeWrite :Bool = true)
      -> (reply :Data, protocol :Text);
  # One request, one reply, in one call: opens a stream (as openStream), writes `data`
  # as one length-prefixed frame (as writeLp), half-closes unless `closeWrite` is
  # false, reads one length-prefixed frame of at most `maxSize` bytes (0 = 1 MiB;
  # at most 16 MiB) as the reply, and closes the stream. `timeoutMs` (0 = the node's
  # open timeout) bounds the whole exchange; on any failure the stream is reset.
  # Errors: the markers of openStream, then timeout, streamReset:<cause>,
  # frameTooLarge, endOfStream (the peer ended the stream before a whole reply).

  serve @12 (protocols :List(Text), responder :Responder, options :ServeOptions)
      -> (registration :Registration, id :UInt64);
  # Mounts the protocol ids (as register) for one request per stream: the node reads
  # one length-prefixed frame from the peer, calls `responder.respond`, writes the
  # reply as one length-prefixed frame and closes the stream. It does not wait for
  # the peer's half-close before it calls. The stream is reset instead (and the
  # responder's other streams go on) when the responder fails, the request is larger
  # than `maxSize`, the peer ends the stream before a whole frame, or `timeoutMs`
  # passes.
}

struct ServeOptions {
  share @0 :Bool = false;     # as RegisterOptions.share
  maxSize @1 :UInt32 = 0;     # largest request accepted; 0 = 1 MiB; at most 16 MiB
  timeoutMs @2 :UInt32 = 0;   # the whole exchange, from the stream's arrival; 0 = 30 s
}

interface Responder {
  # Implemented by the module, for Node.serve.
  respond @0 (request :Data, info :StreamInfo) -> (reply :Data);
  # The reply to one request (at most 16 MiB). Raising resets that stream.
}

enum DisconnectReason {
  closedByUs @0;              # this node closed it (disconnectPeer, a limit, shutdown)
  closedByPeer @1;            # the peer closed it (a TCP FIN, or a RST: go-libp2p hangs up with one)
  error @2;                   # the connection failed (undecryptable or truncated data, a timeout,
                              # a write that stalled)
}

struct PeerConnected {
  remoteAddr @0 :Text;        # multiaddr of the connection's remote end
  direction @1 :Direction;    # inbound: the peer dialed us; outbound: we dialed it
}

struct PeerIdentity {
  protocols @0 :List(Text);   # what the peer says it speaks
  agentVersion @1 :Text;
  protocolVersion @2 :Text;
  listenAddrs @3 :List(Text);
}

struct PeerEvent {
  # Events are per peer, not per connection: `connected` when the node has its first
  # connection to the peer, `disconnected` when its last one closes.
  peerId @0 :Text;            # "" for overflowed
  union {
    connected @1 :PeerConnected;
    disconnected @2 :DisconnectReason;
    identified @3 :PeerIdentity;   # identify with the peer completed
    overflowed @4 :Void;      # events were dropped: resynchronise with Node.peers()
  }
}

interface PeerEvents {
  # Implemented by the module.
  event @0 (event :PeerEvent) -> ();
  # Answer once the event is taken; the node sends the next ones meanwhile, up to a
  # small window, and queues the rest (see subscribePeerEvents).
}

interface Subscription {
  cancel @0 () -> ();
}

interface Registration {
  protocols @0 () -> (protocols :List(Text));
  unregister @1 () -> ();
  # Unmounts the protocol ids now. Streams already open keep working.
}

interface Handler {
  # Implemented by the module.
  handle @0 (stream :Stream, info :StreamInfo) -> (sink :ByteSink);
  # Called once per inbound stream. Answer promptly (the node resets the stream
  # when the registration's accept timeout expires); return a sink to have
  # inbound bytes pushed to it, or none to read with Stream.read.
}

interface Stream {
  # Implemented by the node, for inbound and outbound streams alike.
  #
  # Closed, for "dropping a Stream that is not closed resets it": a Stream is closed
  # once the node has received its `close` call (or `closeWrite` and the peer's end of
  # stream were both seen). Calls on a capability arrive before its release, so a
  # module may call `close` and drop the Stream at once: the close goes on (flush,
  # half-close, the peer's linger) and nothing is reset. A Stream released before any
  # `close` arrived is reset (cause capabilityDropped).

  info @0 () -> (info :StreamInfo);

  read @1 (maxBytes :UInt32, position :UInt64) -> (data :Data, next :UInt64, eof :Bool);
  # Pull-mode read (streams without a sink). maxBytes: 1..1048576 (the node's largest
  # answer). `position` is the number of bytes of this stream the caller has received
  # and kept; the node returns bytes from there on and keeps them until a later read
  # passes them. A read that was cancelled, or whose answer was lost, therefore loses
  # nothing: read again from the same position. `next` = position + len(data). It must
  # lie between the oldest byte the node still keeps and the furthest it handed out,
  # else invalidArgument. At end of stream: empty data, eof = true.

  readLp @2 (maxSize :UInt32, position :UInt64) -> (data :Data, next :UInt64, eof :Bool);
  # Reads one unsigned-varint length-prefixed frame (as nim-libp2p's readLp). maxSize:
  # 0..16777216 (the node's largest frame); 0 accepts only empty frames (there is no
  # default here, unlike request and serve). `read` and
  # `readLp` share one cursor: `position` counts stream bytes, prefixes included, so
  # `next` = position + the varint's length + len(data) -- not position + len(data).
  # `position` must be a frame boundary: one the node handed out (the `next` of the
  # last read or readLp, or the position of a read being retried), else
  # invalidArgument. eof = true only when the stream ended cleanly before the first
  # byte of a frame; ending inside one is endOfStream. A frame over maxSize is
  # frameTooLarge and stays unread.

  write @3 (data :Data) -> ();
  # Answered once the data is queued within the node's per-stream bound: at most
  # --max-write bytes per call (1 MiB by default), answered while less than 256 KiB is
  # queued, and limitExceeded once more than --max-stream-buffer (8 MiB) would be: keep
  # a window of writes in flight (the Python client keeps 512 KiB, in calls of 256 KiB).
  writeLp @4 (data :Data) -> ();
  # write(uvarint(len(data)) ++ data), as nim-libp2p's writeLp; len(data) + the prefix
  # must fit one write.

  closeWrite @5 () -> ();
  # Half-close: flushes queued writes, then the peer reads end of stream.
  # Reading stays possible. Answered when the half-close is on the wire.

  close @6 () -> ();
  # Graceful close of both directions: flushes, half-closes, and discards what
  # the peer still sends until it half-closes too.

  reset @7 () -> ();
  # Abortive close: queued writes are dropped and the peer sees a reset.
}

interface ByteSink {
  # Implemented by the module for push-mode streams.
  push @0 (data :Data) -> ();
  # Inbound bytes in order. Answer once they fit the module's bounded buffer.
  end @1 (reason :EndReason) -> ();
  # No more pushes follow.
}

# -- The local data channel -------------------------------------------------------------
#
# For a module on the node's machine, bytes can bypass RPC: each stream becomes
# a unix SOCK_SEQPACKET socket of its own, passed to the module with SCM_RIGHTS
# over the connection's data channel. The RPC connection keeps the authority:
# the channel belongs to the RPC connection that asked for it, and closing
# either one ends the module's session.
#
#   1. Node.dataChannel() -> (path, token); connect a SOCK_SEQPACKET socket to
#      path; send ChannelMessage(hello = token).
#   2. Register with RegisterOptions.channel = true: each inbound stream comes
#      as ChannelMessage(inbound) with the stream's socket attached.
#   3. Open outbound streams with ChannelMessage(open); the answer is
#      ChannelMessage(opened) with the socket attached, or (openFailed).
#
# Each channel datagram is one ChannelMessage, as a single-segment Cap'n
# Proto message (standard framing, unpacked).
#
# On a stream's socket every datagram is one frame; its first byte says what:
#   'D' + bytes   data (at most 65536 bytes after the 'D')       both ways
#   'E'           half-close of the sender's direction            both ways
#   'C'           close (module -> node): like Stream.close; the module
#                 then closes its socket and reads nothing more
# A module that closes its socket without 'C' (and without both directions
# having ended) resets the stream (cause capabilityDropped). The node closes
# its end once the stream is finished. Resets and flush
# acknowledgements travel on the channel, so a full stream socket never
# delays them:
#   ChannelMessage(reset)    either way: the stream is reset (the module
#                            sends cause localReset)
#   ChannelMessage(flushed)  node -> module: the half-close asked by 'E' or
#                            'C' is on the wire (Stream.closeWrite's answer)

struct ChannelStream {
  request @0 :UInt64;         # the open request answered (0 for inbound)
  registration @1 :UInt64;    # the registration it was routed to (0 for outbound)
  info @2 :StreamInfo;
}

struct OpenRequest {
  request @0 :UInt64;         # chosen by the module, echoed in the answer
  peerId @1 :Text;
  protocols @2 :List(Text);
  addrs @3 :List(Text);
  timeoutMs @4 :UInt32;
}

struct OpenFailed {
  request @0 :UInt64;
  error @1 :Text;             # an error description with a [logos-p2p:<kind>] marker
}

struct ChannelReset {
  stream @0 :UInt64;          # StreamInfo.id
  cause @1 :Cause;
  message @2 :Text;
}

struct ChannelMessage {
  union {
    hello @0 :Data;           # module -> node, the first datagram
    inbound @1 :ChannelStream;    # node -> module, socket attached
    open @2 :OpenRequest;         # module -> node
    opened @3 :ChannelStream;     # node -> module, socket attached
    openFailed @4 :OpenFailed;    # node -> module
    reset @5 :ChannelReset;       # either way
    flushed @6 :UInt64;           # node -> module: StreamInfo.id
  }
}
