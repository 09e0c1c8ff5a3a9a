"""The stream state machine, without sockets (like h11's test_state.py)."""

import itertools

import pytest

from logos_p2p._state import TRANSITIONS, Event, State, StreamState
from logos_p2p.errors import Cause, ConnectionLost, NodeShutdown, StreamClosed, StreamReset

S, E = State, Event


def machine_in(state: State, cause: Cause = Cause.REMOTE_RESET) -> StreamState:
    """A machine driven into ``state`` through legal events only."""
    m = StreamState()
    path = {
        S.OPEN: [],
        S.SEND_CLOSED: [E.SEND_EOF],
        S.RECV_CLOSED: [E.RECV_EOF],
        S.DONE: [E.SEND_EOF, E.RECV_EOF],
        S.CLOSED: [E.CLOSE],
        S.RESET: [E.RESET],
    }[state]
    for event in path:
        m.handle(event, cause if event is E.RESET else None)
    assert m.state is state
    return m


def test_every_state_has_a_row_and_the_table_only_names_states():
    assert set(TRANSITIONS) == set(State)
    for row in TRANSITIONS.values():
        assert set(row) <= set(Event)
        assert set(row.values()) <= set(State)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(State, Event)))
def test_each_cell_of_the_table(state, event):
    m = machine_in(state)
    target = TRANSITIONS[state].get(event)
    if target is None:
        with pytest.raises((StreamClosed, StreamReset)) as info:
            m.handle(event, Cause.LOCAL_RESET)
        assert m.state is state  # an illegal event changes nothing
        if state is S.RESET:
            assert isinstance(info.value, StreamReset)
        else:
            assert type(info.value) is StreamClosed
    else:
        assert m.handle(event, Cause.LOCAL_RESET) is target


def test_the_happy_paths():
    m = StreamState()
    assert m.handle(E.SEND_EOF) is S.SEND_CLOSED
    assert m.handle(E.RECV_EOF) is S.DONE
    m = StreamState()
    assert m.handle(E.RECV_EOF) is S.RECV_CLOSED
    assert m.handle(E.SEND_EOF) is S.DONE
    assert m.handle(E.CLOSE) is S.CLOSED
    assert m.handle(E.CLOSE) is S.CLOSED  # idempotent


def test_a_reset_needs_a_cause_and_the_first_cause_wins():
    m = StreamState()
    with pytest.raises(ValueError):
        m.handle(E.RESET)
    assert m.reset(Cause.CONNECTION_LOST, "gone") is True
    assert m.reset(Cause.LOCAL_RESET) is False
    assert m.cause is Cause.CONNECTION_LOST
    with pytest.raises(ConnectionLost, match="gone"):
        m.check_read()


def test_late_resets_are_absorbed_once_the_stream_finished():
    for state in (S.DONE, S.CLOSED):
        m = machine_in(state)
        assert m.reset(Cause.REMOTE_RESET) is False
        assert m.state is state and m.cause is None


@pytest.mark.parametrize(
    ("state", "readable", "writable"),
    [
        (S.OPEN, True, True),
        (S.SEND_CLOSED, True, False),
        (S.RECV_CLOSED, False, True),
        (S.DONE, False, False),
    ],
)
def test_what_operations_may_do(state, readable, writable):
    m = machine_in(state)
    assert m.check_read() is readable  # False means end of stream, not an error
    if writable:
        m.check_write()
    else:
        with pytest.raises(StreamClosed):
            m.check_write()


def test_closed_and_reset_streams_raise_their_own_errors():
    closed = machine_in(S.CLOSED)
    with pytest.raises(StreamClosed):
        closed.check_read()
    with pytest.raises(StreamClosed):
        closed.check_write()
    for cause, error in [
        (Cause.REMOTE_RESET, StreamReset),
        (Cause.CONNECTION_LOST, ConnectionLost),
        (Cause.NODE_SHUTDOWN, NodeShutdown),
    ]:
        m = machine_in(S.RESET, cause)
        with pytest.raises(error) as info:
            m.check_write()
        assert info.value.cause is cause
        assert not isinstance(info.value, StreamClosed)


def test_finished():
    assert [s for s in State if machine_in(s).finished] == [S.DONE, S.CLOSED, S.RESET]
