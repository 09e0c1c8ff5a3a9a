/* logos-p2p: the C ABI of the C++ facade (logos_p2p/facade.hpp).
 *
 * Every function is thread-safe and blocking; timeout_ms 0 = no timeout of the facade's own.
 * Each returns a logos_p2p_code (LOGOS_P2P_OK = 0); on failure, if `err` is not NULL, it
 * is filled with the code, the reset cause (for LOGOS_P2P_STREAM_RESET, NODE_SHUTDOWN,
 * NODE_DISCONNECTED) and a NUL-terminated message (truncated to fit).
 * Bytes are pointer + length. Bytes returned by a read are malloc'ed: free them with
 * logos_p2p_free. Strings of an event are freed with logos_p2p_event_clear, those of a
 * status with logos_p2p_node_status_clear.
 */
#ifndef LOGOS_P2P_H
#define LOGOS_P2P_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum logos_p2p_code {
  LOGOS_P2P_OK = 0,
  LOGOS_P2P_STREAM_RESET = 1,
  LOGOS_P2P_STREAM_CLOSED = 2,
  LOGOS_P2P_BUSY = 3,
  LOGOS_P2P_NODE_SHUTDOWN = 4,
  LOGOS_P2P_NODE_DISCONNECTED = 5,
  LOGOS_P2P_PROTOCOL_NOT_SUPPORTED = 6,
  LOGOS_P2P_PEER_UNREACHABLE = 7,
  LOGOS_P2P_NEGOTIATION_FAILED = 8,
  LOGOS_P2P_TIMEOUT = 9,
  LOGOS_P2P_INVALID_ARGUMENT = 10,
  LOGOS_P2P_PROTOCOL_IN_USE = 11,
  LOGOS_P2P_LIMIT_EXCEEDED = 12,
  LOGOS_P2P_FRAME_TOO_LARGE = 13,
  LOGOS_P2P_END_OF_STREAM = 14,
  LOGOS_P2P_INTERNAL = 15,
  LOGOS_P2P_AUTHENTICATION_FAILED = 16
} logos_p2p_code;

/* The schema's Cause, same order. */
typedef enum logos_p2p_cause {
  LOGOS_P2P_CAUSE_LOCAL_RESET = 0,
  LOGOS_P2P_CAUSE_REMOTE_RESET = 1,
  LOGOS_P2P_CAUSE_CONNECTION_LOST = 2,
  LOGOS_P2P_CAUSE_NODE_SHUTDOWN = 3,
  LOGOS_P2P_CAUSE_MODULE_GONE = 4,
  LOGOS_P2P_CAUSE_CAPABILITY_DROPPED = 5,
  LOGOS_P2P_CAUSE_HANDLER_FAILED = 6,
  LOGOS_P2P_CAUSE_TIMEOUT = 7,
  LOGOS_P2P_CAUSE_LIMIT_EXCEEDED = 8,
  LOGOS_P2P_CAUSE_PROTOCOL_ERROR = 9
} logos_p2p_cause;

typedef struct logos_p2p_error {
  int code;  /* a logos_p2p_code */
  int cause; /* a logos_p2p_cause */
  char message[512];
} logos_p2p_error;

typedef enum logos_p2p_event_type {
  LOGOS_P2P_EVENT_NONE = 0, /* the timeout passed */
  LOGOS_P2P_EVENT_PROTOCOL_STREAM = 1,
  LOGOS_P2P_EVENT_STREAM_RESET = 2,
  LOGOS_P2P_EVENT_NODE_SHUTDOWN = 3,
  LOGOS_P2P_EVENT_DISCONNECTED = 4,
  /* peer events, after logos_p2p_subscribe_peer_events */
  LOGOS_P2P_EVENT_PEER_CONNECTED = 5,    /* peer_id, remote_addr, direction */
  LOGOS_P2P_EVENT_PEER_DISCONNECTED = 6, /* peer_id, reason */
  LOGOS_P2P_EVENT_PEER_IDENTIFIED = 7,   /* peer_id, message = the peer's agent version */
  LOGOS_P2P_EVENT_OVERFLOWED = 8         /* peer events were dropped: resynchronise */
} logos_p2p_event_type;

/* The schema's Direction and DisconnectReason, same order. */
typedef enum logos_p2p_direction { LOGOS_P2P_INBOUND = 0, LOGOS_P2P_OUTBOUND = 1 } logos_p2p_direction;
typedef enum logos_p2p_disconnect_reason {
  LOGOS_P2P_CLOSED_BY_US = 0,
  LOGOS_P2P_CLOSED_BY_PEER = 1,
  LOGOS_P2P_DISCONNECT_ERROR = 2
} logos_p2p_disconnect_reason;

typedef struct logos_p2p_event {
  int type; /* a logos_p2p_event_type */
  uint64_t stream_id;
  int cause; /* STREAM_RESET */
  char* proto;       /* PROTOCOL_STREAM; NULL otherwise */
  char* peer_id;     /* PROTOCOL_STREAM */
  char* remote_addr; /* PROTOCOL_STREAM */
  char* message;     /* STREAM_RESET, NODE_SHUTDOWN, DISCONNECTED, PEER_IDENTIFIED */
  int direction;     /* PEER_CONNECTED: a logos_p2p_direction */
  int reason;        /* PEER_DISCONNECTED: a logos_p2p_disconnect_reason */
} logos_p2p_event;

typedef struct logos_p2p_facade logos_p2p_facade;

const char* logos_p2p_code_name(int code);   /* e.g. "streamReset" */
const char* logos_p2p_cause_name(int cause); /* e.g. "remoteReset" */
const char* logos_p2p_disconnect_reason_name(int reason); /* e.g. "closedByPeer" */

/* address: "unix:PATH", "tcp:HOST:PORT" or "tls:HOST:PORT"; trust from the environment
 * ($LOGOS_P2P_TOKEN, $LOGOS_P2P_TOKEN_FILE, $LOGOS_P2P_FINGERPRINT, $LOGOS_P2P_TLS_CA). */
int logos_p2p_facade_new(const char* address, const char* module_name, logos_p2p_facade** out,
                         logos_p2p_error* err);

/* Explicit trust for tcp:/tls: (logos_p2p/options.hpp); NULL or "" fields fall back to the
 * environment as above. node_uid: unix:, a uid the node may run as besides this user and
 * root (-1: none). A refused endpoint is LOGOS_P2P_AUTHENTICATION_FAILED. */
typedef struct logos_p2p_connect_options {
  const char* token;       /* tcp:/tls: the node's token */
  const char* fingerprint; /* tls: "sha256:<hex>" of the node's certificate */
  const char* ca_file;     /* tls: without a fingerprint, check chain and host name */
  const char* cert_file;   /* tls: this client's certificate chain (PEM) */
  const char* key_file;    /* its key (NULL: in cert_file) */
  int64_t node_uid;
} logos_p2p_connect_options;
int logos_p2p_facade_connect(const char* address, const char* module_name, const logos_p2p_connect_options* options,
                             logos_p2p_facade** out, logos_p2p_error* err);
/* Safe while other threads are inside calls on `facade`: every call blocked in it (a read,
 * a dial, logos_p2p_next_event, ...) returns at once with LOGOS_P2P_NODE_DISCONNECTED (cause
 * LOGOS_P2P_CAUSE_MODULE_GONE), and so does every call that begins while it runs; it waits
 * until no thread is inside a call, then resets every stream the facade holds, unmounts its
 * protocols (served ones too), closes the connection, waits for the responders that are
 * running to return, and frees the handle. A responder may call it (or the facade) too.
 * Once it has returned the handle is gone: using the pointer afterwards is the caller's bug
 * (the guarantee is for the calls already inside when it began). */
void logos_p2p_facade_free(logos_p2p_facade* facade);

/* The node's peer id (malloc'ed, logos_p2p_free). */
int logos_p2p_peer_id(logos_p2p_facade* facade, char** peer_id, logos_p2p_error* err);

/* LOGOS_P2P_PROTOCOL_IN_USE if this facade mounted or served it already, or another module
 * did (without share on both). */
int logos_p2p_mount_protocol(logos_p2p_facade* facade, const char* proto, logos_p2p_error* err);
/* Mounted with share: other modules that share it too may mount it as well; the node hands
 * inbound streams to them in turn (round-robin). */
int logos_p2p_mount_protocol_shared(logos_p2p_facade* facade, const char* proto, logos_p2p_error* err);
/* Unmounts a mounted or served protocol (as logos_p2p_unserve for a served one). */
int logos_p2p_unmount_protocol(logos_p2p_facade* facade, const char* proto, logos_p2p_error* err);

/* Node.serve: the responder answers one length-prefixed request per inbound stream of
 * `proto`; the node writes its reply as one length-prefixed frame and closes the stream.
 * It runs on a thread of the facade's (at most 8 run at once), never on the event loop's:
 * it may block and may call the facade. `request` (`len` bytes) and `peer_id` are valid
 * during the call only. To reply, set *reply to `reply_len` bytes from malloc (or leave it
 * NULL for an empty reply) and return 0; the library frees it. A nonzero return resets the
 * stream (the peer reads a reset); *reply is freed then too if set. */
typedef int (*logos_p2p_responder)(void* user, const uint8_t* request, size_t len, const char* peer_id,
                                   uint8_t** reply, size_t* reply_len);
/* share: as logos_p2p_mount_protocol_shared; max_size: the largest request (0 = 1 MiB);
 * timeout_ms: the whole exchange, from the stream's arrival (0 = 30 s). `user` is passed to
 * every call of `responder` and must stay valid until logos_p2p_unserve (or
 * logos_p2p_facade_free) has returned. */
int logos_p2p_serve(logos_p2p_facade* facade, const char* proto, int share, uint32_t max_size, uint32_t timeout_ms,
                    logos_p2p_responder responder, void* user, logos_p2p_error* err);
/* Unmounts it; returns once no responder of it runs any more (but the calling one, from
 * inside a responder). Requests still waiting for a responder are reset. */
int logos_p2p_unserve(logos_p2p_facade* facade, const char* proto, logos_p2p_error* err);

/* The node's peers. connect: addr is a multiaddr ending in /p2p/<peer id>, timeout_ms 0 =
 * the node's dial timeout; *peer_id (may be NULL) gets the peer's id (malloc'ed). */
int logos_p2p_connect_peer(logos_p2p_facade* facade, const char* addr, uint32_t timeout_ms, char** peer_id,
                           logos_p2p_error* err);
int logos_p2p_disconnect_peer(logos_p2p_facade* facade, const char* peer_id, logos_p2p_error* err);
/* The connected peers as one malloc'ed string (logos_p2p_free): one line per peer, each
 * "<peer id> <remote addr> <remote addr>..." (space-separated: multiaddrs hold no space),
 * lines ended by '\n'; "" when no peer is connected. */
int logos_p2p_peers(logos_p2p_facade* facade, char** peers, logos_p2p_error* err);

#define LOGOS_P2P_CAUSE_COUNT 10

typedef struct logos_p2p_module_status { /* one module (RPC connection) of the node */
  uint64_t id;
  char* name;      /* as the module named itself: the node does not say which row is yours */
  char* protocols; /* its registered protocol ids, each ended by '\n' */
  uint32_t registrations;
  uint32_t inbound_streams;
  uint32_t outbound_streams;
  uint64_t bytes_in;
  uint64_t bytes_out;
  uint64_t buffered_bytes;
  uint64_t bad_messages;
} logos_p2p_module_status;

typedef struct logos_p2p_node_status { /* Node.status (without limits and refusals) */
  char* peer_id;
  uint32_t streams; /* open bridged streams, all modules */
  uint32_t registrations;
  uint64_t resets[LOGOS_P2P_CAUSE_COUNT]; /* resets since start, indexed by logos_p2p_cause */
  uint64_t streams_total;                 /* streams bridged since start */
  uint32_t tasks;                         /* node tasks in progress (0 when idle) */
  uint64_t auth_failures;
  uint32_t reservations;
  uint32_t subscriptions; /* peer event subscriptions, all modules */
  logos_p2p_module_status* modules; /* every module of the node, this one included */
  size_t n_modules;
} logos_p2p_node_status;

/* Fills *status (free its strings and rows with logos_p2p_node_status_clear). */
int logos_p2p_status(logos_p2p_facade* facade, logos_p2p_node_status* status, logos_p2p_error* err);
void logos_p2p_node_status_clear(logos_p2p_node_status* status);

int logos_p2p_dial(logos_p2p_facade* facade, const char* peer_id, const char* proto, const char* const* addrs,
                   size_t n_addrs, uint32_t timeout_ms, uint64_t* stream_id, logos_p2p_error* err);

/* Node.request: `data` as one length-prefixed frame, one frame of at most max_size bytes back
 * (0 = 1 MiB) into *reply (malloc'ed); timeout_ms bounds the exchange (0 = the node's). */
int logos_p2p_request(logos_p2p_facade* facade, const char* peer_id, const char* proto, const char* const* addrs,
                      size_t n_addrs, const uint8_t* data, size_t len, uint32_t timeout_ms, uint32_t max_size,
                      uint8_t** reply, size_t* reply_len, logos_p2p_error* err);

/* Peer events from now on, delivered by logos_p2p_next_event. queue_size (1..4096, 0 = 256)
 * bounds the peer events held both by the node and by the facade for a caller that does not
 * take them: when queue_size are waiting and another comes, they are all dropped for one
 * LOGOS_P2P_EVENT_OVERFLOWED (resynchronise with logos_p2p_peers); the events after it came
 * after it. Stream events are never dropped. Once per facade: a second subscription is
 * LOGOS_P2P_INVALID_ARGUMENT. */
int logos_p2p_subscribe_peer_events(logos_p2p_facade* facade, uint32_t queue_size, logos_p2p_error* err);
int logos_p2p_unsubscribe_peer_events(logos_p2p_facade* facade, logos_p2p_error* err);

/* *len == 0 after a successful read: end of stream. */
int logos_p2p_stream_read(logos_p2p_facade* facade, uint64_t stream_id, size_t max_bytes, uint32_t timeout_ms,
                          uint8_t** data, size_t* len, logos_p2p_error* err);
int logos_p2p_stream_read_exactly(logos_p2p_facade* facade, uint64_t stream_id, size_t n, uint32_t timeout_ms,
                                  uint8_t** data, size_t* len, logos_p2p_error* err);
int logos_p2p_stream_read_lp(logos_p2p_facade* facade, uint64_t stream_id, uint32_t max_size, uint32_t timeout_ms,
                             uint8_t** data, size_t* len, logos_p2p_error* err);
int logos_p2p_stream_write(logos_p2p_facade* facade, uint64_t stream_id, const uint8_t* data, size_t len,
                           uint32_t timeout_ms, logos_p2p_error* err);
int logos_p2p_stream_write_lp(logos_p2p_facade* facade, uint64_t stream_id, const uint8_t* data, size_t len,
                              uint32_t timeout_ms, logos_p2p_error* err);
int logos_p2p_stream_close_with_eof(logos_p2p_facade* facade, uint64_t stream_id, uint32_t timeout_ms,
                                    logos_p2p_error* err);
int logos_p2p_stream_close(logos_p2p_facade* facade, uint64_t stream_id, uint32_t timeout_ms, logos_p2p_error* err);
int logos_p2p_stream_reset(logos_p2p_facade* facade, uint64_t stream_id, logos_p2p_error* err);
int logos_p2p_stream_release(logos_p2p_facade* facade, uint64_t stream_id, logos_p2p_error* err);

/* The next event; LOGOS_P2P_OK with event->type == LOGOS_P2P_EVENT_NONE when timeout_ms passed
 * (0 = wait as long as it takes). */
int logos_p2p_next_event(logos_p2p_facade* facade, uint32_t timeout_ms, logos_p2p_event* event,
                         logos_p2p_error* err);
void logos_p2p_event_clear(logos_p2p_event* event);

void logos_p2p_free(void* p);

#ifdef __cplusplus
}
#endif

#endif /* LOGOS_P2P_H */
