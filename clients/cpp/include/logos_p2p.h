/* logos-p2p: the C ABI of the C++ facade (logos_p2p/facade.hpp).
 *
 * Every function is thread-safe and blocking; timeout_ms 0 = no timeout of the facade's own.
 * Each returns a logos_p2p_code (LOGOS_P2P_OK = 0); on failure, if `err` is not NULL, it
 * is filled with the code, the reset cause (for LOGOS_P2P_STREAM_RESET, NODE_SHUTDOWN,
 * NODE_DISCONNECTED) and a NUL-terminated message (truncated to fit).
 * Bytes are pointer + length. Bytes returned by a read are malloc'ed: free them with
 * logos_p2p_free. Strings of an event are freed with logos_p2p_event_clear.
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

int logos_p2p_facade_new(const char* address, const char* module_name, logos_p2p_facade** out,
                         logos_p2p_error* err);
/* Resets every stream it holds, unmounts its protocols, closes the connection. */
void logos_p2p_facade_free(logos_p2p_facade* facade);

/* The node's peer id (malloc'ed, logos_p2p_free). */
int logos_p2p_peer_id(logos_p2p_facade* facade, char** peer_id, logos_p2p_error* err);

int logos_p2p_mount_protocol(logos_p2p_facade* facade, const char* proto, logos_p2p_error* err);
int logos_p2p_unmount_protocol(logos_p2p_facade* facade, const char* proto, logos_p2p_error* err);

int logos_p2p_dial(logos_p2p_facade* facade, const char* peer_id, const char* proto, const char* const* addrs,
                   size_t n_addrs, uint32_t timeout_ms, uint64_t* stream_id, logos_p2p_error* err);

/* Node.request: `data` as one length-prefixed frame, one frame of at most max_size bytes back
 * (0 = 1 MiB) into *reply (malloc'ed); timeout_ms bounds the exchange (0 = the node's). */
int logos_p2p_request(logos_p2p_facade* facade, const char* peer_id, const char* proto, const char* const* addrs,
                      size_t n_addrs, const uint8_t* data, size_t len, uint32_t timeout_ms, uint32_t max_size,
                      uint8_t** reply, size_t* reply_len, logos_p2p_error* err);

/* Peer events from now on, delivered by logos_p2p_next_event (queue_size 0 = the node's 256).
 * Once per facade: a second subscription is LOGOS_P2P_INVALID_ARGUMENT. */
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
