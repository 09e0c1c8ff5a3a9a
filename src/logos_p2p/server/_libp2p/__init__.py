"""The node's one boundary to py-libp2p 0.8.1: host, identity, stream I/O, admission, errors.

Everything else in the node talks to libp2p through this package, and every libp2p,
muxer or socket error is translated here into the logos-p2p family. Its parts:
:mod:`._fixes` (the patches below), :mod:`._io` (stream I/O), :mod:`._gate` (the
resource manager inside py-libp2p, with :mod:`._books`: what a gated connection's muxer
holds) and :mod:`._host` (identity, host, dialing).

py-libp2p 0.8.1 gaps closed here (each one small and documented):

1. **A remote reset reads as end of stream.** yamux removes a reset stream
   from its table before the waiting reader wakes, so the pending ``read``
   raises ``StreamEOF``; but it records ``reset_received`` first, so
   :func:`end_cause` reads the truth after every ``StreamEOF`` (and the
   connection's ``event_shutting_down`` for a lost connection). mplex's
   ``_handle_reset`` closes the stream's message channel -- waking the
   reader -- *before* it sets ``event_reset``, so the reader cannot know;
   :func:`install_fixes` wraps it to set ``event_reset`` first (seen with
   js-libp2p's ``abort()`` over mplex: half the resets read as a clean end).
   When in doubt :func:`end_cause` reports a lost connection rather than a
   clean end: mistaking a truncated stream for a complete one would lose
   bytes silently.
2. **mplex is not full duplex.** ``MplexStream.read`` holds the stream's
   ``ReadWriteLock`` read side while it waits for data, so a ``write`` on the
   same stream waits for the next inbound message; a peer that reads and
   writes at once can hang. Reads and writes of an mplex stream touch no
   common state (the read side owns ``_buf`` and the inbound channel, the
   write side only sends frames), so :func:`install_fixes` gives each stream
   two independent locks: reads exclude reads, writes exclude writes.
3. **yamux writes give up after 5 s of zero send window.** ``YamuxStream.write``
   polls for a window update and raises ``MuxedStreamError`` after 5 s, which
   reads as a reset: a peer that pauses reading would break the stream.
   :func:`write` never hands yamux more than the current send window, so its
   timeout path is never taken; a slow reader only slows the writer.
4. **A stream dropped from yamux's table leaves its reader waiting forever.**
   ``Yamux._finalize_stream_locked`` (after a local reset, a reset or FIN
   from the peer, or a read that drained a closed stream) and the stale-stream
   sweeper drop the stream's wake-up event without setting it, so a reader
   already waiting on it never returns. Setting the event we saw before a
   reset was not enough: a reader woken by data between the two renews the
   event, waits on the new one, and the reset drops that (seen under a byte
   flood: streams refused for memory kept their pump tasks after the
   connection died). :func:`install_fixes` makes both set the events they
   drop; the reader then sees the stream gone. (Cancelling the reader instead
   is not safe: py-libp2p reads and writes are not cancel-safe, see
   ``_bridge``.)

5. **A cancelled write breaks the whole connection.** Noise numbers each
   message: ``write_msg`` encrypts (using up a nonce) and then awaits the
   socket write. Cancel a task there -- an open that times out, a nursery
   that ends because a read failed, a stream task stopped -- and the message
   is never sent or only partly sent, so the next one cannot be decrypted:
   the remote side fails "authentication of message" and drops the
   connection with every stream on it. Seen in the 10,000-stream soak as the
   peer's connection dying right after a module kill (its sender had been
   cancelled mid-write). :func:`install_fixes` shields each secure-channel
   write from cancellation, bounded by :data:`WRITE_STALL`: a write stuck
   that long closes the connection, which is broken for the remote anyway.

6. **Window updates for a stream the peer has finished.** A yamux read gives
   the peer its window back (``send_window_update``) even when the peer's
   FIN or RST has already arrived: the bytes it reads were sent before the
   FIN, and no more can come. Such a frame names a stream the peer may have
   forgotten: nim-libp2p before v1.13 answers "Unknown stream ID" with
   GoAway(ProtocolError) and drops the connection with every stream on it
   (seen in request/response use: the module half-closes, nim replies and
   sends FIN, the node reads the reply). :func:`install_fixes` makes
   ``send_window_update`` send nothing once the stream's receive side is
   closed or reset; :func:`credit` goes through it too.

7. **An mplex write goes on after a reset.** ``MplexStream.write`` cuts a
   write into 4076-byte frames and sends them all, checking for a reset only
   before the first: a 256 KiB write the peer reset half-way still sends
   dozens of frames for a stream the peer has dropped. :func:`write` hands
   mplex one frame at a time and stops at the reset.

8. **Two waiters on one yamux stream lose each other's wake-ups.** yamux keeps one
   ``trio.Event`` per stream; its ``read`` waits on it and then *replaces* it
   with a fresh one. Anything else that waits on the stream (the node's
   :func:`wait_ended`, watching for a reset while a request/response stream
   waits for its module) must renew it the same way, so one of the two can end
   up waiting on an event nobody will set again: a reset that came right
   behind the peer's FIN went unseen until the exchange's timeout.
   :func:`install_fixes` gives each yamux connection a table that sets the
   event it replaces; a waiter woken that way re-checks and waits on the new one.

9. **A window update after every read.** py-libp2p's yamux gives the peer back the
   bytes of each read at once, so every small message costs the reader a window update
   (a Noise message and a TCP send) and the peer as much to take it: five per stream
   opened and echoed once. go-yamux sends one when half the window was read.
   :func:`install_fixes` makes yamux do the same; the first read of a stream doubles its
   window twice at once (to 1 MiB, as py-libp2p's per-read updates did within the
   first few reads), so a peer may still write most of a MiB before the module reads.
   The gate caps that growth as it caps every other.

10. **Every TCP read and write goes through trio's socket stream and a lock.** Each one
    takes scheduler checkpoints even when the call succeeds at once, and a Noise message is
    two reads and a write. :mod:`._tcp` makes the calls directly and waits only when it must.
11. **An inbound stream's ACK is a frame of its own.** :mod:`._frames` holds it for the
    stream's first frame (multistream-select's header), as go-yamux does.
12. **Two nurseries and six tasks per stream for listeners that do nothing.** The swarm
    tells each listener of every stream opened and closed in a task of its own; the
    node's three (py-libp2p's tag store and identify, the peer watch) ignore streams.
    :func:`install_fixes` calls them in turn in the notifying task, as go-libp2p does.

Upstream: 1, 2, 4, 5, 6, 7 and 8 are py-libp2p bugs worth reporting with these
descriptions; 3 is by design there ("yamux has no deadlines"); 9 to 12 are costs
worth reporting.
"""

from libp2p.stream_muxer.yamux.yamux import YamuxStream as YamuxStream

from ._fixes import _whole_write as _whole_write
from ._fixes import install_fixes as install_fixes
from ._gate import Gate as Gate
from ._gate import install_gate as install_gate
from ._gate import stream_slot as stream_slot
from ._host import advertised_addrs as advertised_addrs
from ._host import build_host as build_host
from ._host import connect as connect
from ._host import connected_peers as connected_peers
from ._host import disconnect as disconnect
from ._host import load_or_create_identity as load_or_create_identity
from ._host import open_stream as open_stream
from ._host import peer_id_of_identity as peer_id_of_identity
from ._host import push_identify as push_identify
from ._host import quiet_libp2p_logs as quiet_libp2p_logs
from ._host import run_host as run_host
from ._io import YAMUX_FULL_FRAME as YAMUX_FULL_FRAME
from ._io import close_write as close_write
from ._io import credit as credit
from ._io import describe as describe
from ._io import end_cause as end_cause
from ._io import mid_write as mid_write
from ._io import muxer_buffered as muxer_buffered
from ._io import parse_addr as parse_addr
from ._io import peer_id_of as peer_id_of
from ._io import read as read
from ._io import release as release
from ._io import remote_addr as remote_addr
from ._io import remote_peer_id as remote_peer_id
from ._io import reset as reset
from ._io import take as take
from ._io import wait_ended as wait_ended
from ._io import wait_more as wait_more
from ._io import write as write
from ._peers import Connected as Connected
from ._peers import Disconnected as Disconnected
from ._peers import Identified as Identified
from ._peers import PeerEvent as PeerEvent
from ._peers import PeerWatch as PeerWatch
