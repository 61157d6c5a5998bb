from __future__ import annotations

import pytest
from websockets.datastructures import Headers

from wstrace.carriers import (
    MAX_VALUE_BYTES,
    headers_carrier,
    hide_trace_tokens,
    query_carrier,
    query_session,
    split_subprotocols,
    subprotocol_session,
)
from wstrace.semconv import SESSION_SUBPROTOCOL_PREFIX, SUBPROTOCOL_PREFIX


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
FIELDS = {"traceparent", "tracestate", "baggage"}
SESSION = "0123456789abcdef0123456789abcdef"


# headers_carrier -------------------------------------------------------------


def test_headers_from_asgi_byte_pairs() -> None:
    """ASGI-style (bytes, bytes) pairs become a str carrier with lowercase keys."""
    headers = [
        (b"host", b"example.com"),
        (b"traceparent", TRACEPARENT.encode()),
        (b"baggage", b"user=alice"),
    ]
    assert headers_carrier(headers, FIELDS) == {"traceparent": TRACEPARENT, "baggage": "user=alice"}


def test_headers_from_str_pairs() -> None:
    """A list of (str, str) pairs works the same way."""
    headers = [("Host", "example.com"), ("Traceparent", TRACEPARENT), ("TraceState", "k=v")]
    assert headers_carrier(headers, FIELDS) == {"traceparent": TRACEPARENT, "tracestate": "k=v"}


def test_headers_from_dict() -> None:
    """A plain dict is read through its items, whatever the case of its keys."""
    headers = {"TRACEPARENT": TRACEPARENT, "Content-Type": "text/plain"}
    assert headers_carrier(headers, FIELDS) == {"traceparent": TRACEPARENT}


def test_headers_from_websockets_headers_with_repeated_field() -> None:
    """A websockets Headers object with a repeated header gives the values joined with a comma."""
    headers = Headers()
    headers["Traceparent"] = TRACEPARENT
    headers["Baggage"] = "a=1"
    headers["baggage"] = "b=2"
    headers["Upgrade"] = "websocket"
    assert headers_carrier(headers, FIELDS) == {"traceparent": TRACEPARENT, "baggage": "a=1,b=2"}


def test_repeated_pairs_join_in_order() -> None:
    """Repeated pairs join with a comma in the order they arrived."""
    headers = [(b"baggage", b"a=1"), (b"x", b"y"), (b"Baggage", b"b=2"), (b"BAGGAGE", b"c=3")]
    assert headers_carrier(headers, FIELDS) == {"baggage": "a=1,b=2,c=3"}


def test_header_names_and_fields_are_case_insensitive() -> None:
    """Header names match the requested fields regardless of the case of either."""
    headers = [(b"X-B3-TraceId", b"463ac35c9f6413ad48485a3953bb6124")]
    assert headers_carrier(headers, {"x-b3-traceid"}) == {"x-b3-traceid": "463ac35c9f6413ad48485a3953bb6124"}
    assert headers_carrier(headers, {"X-B3-TRACEID"}) == {"x-b3-traceid": "463ac35c9f6413ad48485a3953bb6124"}


def test_header_values_keep_their_case() -> None:
    """Only names are lowercased; values are copied as they are."""
    assert headers_carrier([("baggage", "User=Alice")], FIELDS) == {"baggage": "User=Alice"}


def test_only_requested_fields_are_collected() -> None:
    """Headers the propagator does not read (cookies, authorization, ...) never reach the carrier."""
    headers = [
        ("Cookie", "session=secret"),
        ("Authorization", "Bearer token"),
        ("traceparent", TRACEPARENT),
        ("wstrace-session", "0" * 32),
    ]
    assert headers_carrier(headers, {"traceparent"}) == {"traceparent": TRACEPARENT}
    assert headers_carrier(headers, set()) == {}


def test_no_headers_gives_empty_carrier() -> None:
    """Empty header sources give an empty carrier."""
    assert headers_carrier([], FIELDS) == {}
    assert headers_carrier({}, FIELDS) == {}
    assert headers_carrier(Headers(), FIELDS) == {}


def test_oversized_value_dropped() -> None:
    """A value over the cap is dropped while the other fields are kept."""
    big = "k=" + "v" * MAX_VALUE_BYTES
    headers = [("baggage", big), ("traceparent", TRACEPARENT)]
    assert headers_carrier(headers, FIELDS) == {"traceparent": TRACEPARENT}


def test_value_at_the_cap_kept() -> None:
    """A value of exactly the cap is kept; one more character drops it."""
    assert headers_carrier([("baggage", "v" * 10)], FIELDS, max_value=10) == {"baggage": "v" * 10}
    assert headers_carrier([("baggage", "v" * 11)], FIELDS, max_value=10) == {}


def test_repeated_values_over_the_cap_dropped() -> None:
    """Repeats whose joined value passes the cap drop the whole field."""
    headers = [("baggage", "a=" + "1" * 6), ("baggage", "b=" + "2" * 6)]
    assert headers_carrier(headers, FIELDS, max_value=12) == {}


def test_oversized_field_not_revived_by_a_later_repeat() -> None:
    """Once a field is dropped as oversized, a later small repeat does not bring back a fragment of it."""
    headers = [("baggage", "a=" + "1" * 70), ("baggage", "b=2"), ("traceparent", TRACEPARENT)]
    assert headers_carrier(headers, FIELDS, max_value=64) == {"traceparent": TRACEPARENT}
    joined_over = [("baggage", "a=" + "1" * 40), ("baggage", "b=" + "2" * 40), ("baggage", "c=3")]
    assert headers_carrier(joined_over, FIELDS, max_value=64) == {}


# query_carrier ---------------------------------------------------------------


def test_query_from_str() -> None:
    """Requested keys are read from a query string."""
    query = f"room=lobby&traceparent={TRACEPARENT}&baggage=user%3Dalice"
    assert query_carrier(query, FIELDS) == {"traceparent": TRACEPARENT, "baggage": "user=alice"}


def test_query_from_bytes() -> None:
    """A bytes query (as in an ASGI scope) works the same way."""
    query = f"traceparent={TRACEPARENT}".encode()
    assert query_carrier(query, FIELDS) == {"traceparent": TRACEPARENT}


def test_query_values_are_percent_decoded() -> None:
    """Percent-encoded values are decoded, UTF-8 included."""
    query = "baggage=user%3Dal%C3%AFce%2Cteam%3Dops&tracestate=vendor%3Dabc"
    assert query_carrier(query, FIELDS) == {"baggage": "user=alïce,team=ops", "tracestate": "vendor=abc"}


def test_query_first_value_wins() -> None:
    """A repeated key keeps its first value."""
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    assert query_carrier(f"traceparent={TRACEPARENT}&traceparent={other}", FIELDS) == {"traceparent": TRACEPARENT}


def test_query_keys_are_case_insensitive() -> None:
    """Query keys are matched lowercased."""
    assert query_carrier(f"TraceParent={TRACEPARENT}", FIELDS) == {"traceparent": TRACEPARENT}


def test_query_unknown_keys_ignored() -> None:
    """Keys the propagator does not read are ignored."""
    assert query_carrier("token=secret&room=1", FIELDS) == {}
    assert query_carrier(f"token=secret&traceparent={TRACEPARENT}", {"baggage"}) == {}


@pytest.mark.parametrize("query", ["", b"", "traceparent=", "&&=", "traceparent"])
def test_query_empty_or_blank(query: str | bytes) -> None:
    """Empty queries and blank values give an empty carrier."""
    assert query_carrier(query, FIELDS) == {}


def test_query_oversized_value_ignored() -> None:
    """A single value over the cap is skipped while the rest are kept."""
    query = f"baggage={'v' * 11}&traceparent=short"
    assert query_carrier(query, FIELDS, max_value=10) == {"traceparent": "short"}


def test_oversized_query_ignored() -> None:
    """A query longer than four times the cap is not parsed at all."""
    query = f"traceparent={TRACEPARENT}&pad=" + "x" * (4 * MAX_VALUE_BYTES)
    assert len(query) > 4 * MAX_VALUE_BYTES
    assert query_carrier(query, FIELDS) == {}
    small = f"traceparent={TRACEPARENT}&pad=" + "x" * 10
    assert query_carrier(small, FIELDS) == {"traceparent": TRACEPARENT}


# split_subprotocols ----------------------------------------------------------


def test_subprotocol_token_removed_and_order_preserved() -> None:
    """Our token becomes the carrier and the application's subprotocols keep their order."""
    offered = ["graphql-ws", SUBPROTOCOL_PREFIX + TRACEPARENT, "chat.v2", "chat.v1"]
    carrier, rest = split_subprotocols(offered)
    assert carrier == {"traceparent": TRACEPARENT}
    assert rest == ["graphql-ws", "chat.v2", "chat.v1"]


def test_subprotocols_without_token() -> None:
    """With no token of ours the list comes back unchanged and the carrier is empty."""
    offered = ["chat.v2", "chat.v1"]
    carrier, rest = split_subprotocols(offered)
    assert carrier == {}
    assert rest == offered
    assert rest is not offered


def test_subprotocol_only_first_token_used() -> None:
    """Only the first token supplies the traceparent; later ones are removed but unused."""
    other = "00-11111111111111111111111111111111-2222222222222222-01"
    offered = [SUBPROTOCOL_PREFIX + TRACEPARENT, "chat", SUBPROTOCOL_PREFIX + other]
    carrier, rest = split_subprotocols(offered)
    assert carrier == {"traceparent": TRACEPARENT}
    assert rest == ["chat"]


def test_subprotocol_empty_token_ignored() -> None:
    """A bare prefix carries nothing, is still removed, and does not block a later token."""
    carrier, rest = split_subprotocols([SUBPROTOCOL_PREFIX, "chat", SUBPROTOCOL_PREFIX + TRACEPARENT])
    assert carrier == {"traceparent": TRACEPARENT}
    assert rest == ["chat"]


def test_subprotocol_oversized_token_ignored() -> None:
    """A token value over 128 characters is removed and ignored."""
    carrier, rest = split_subprotocols([SUBPROTOCOL_PREFIX + "a" * 129, "chat"])
    assert carrier == {}
    assert rest == ["chat"]
    carrier, _ = split_subprotocols([SUBPROTOCOL_PREFIX + "a" * 128])
    assert carrier == {"traceparent": "a" * 128}


def test_subprotocol_prefix_must_match_exactly() -> None:
    """Tokens that merely resemble the prefix belong to the application."""
    offered = ["wstrace.tpx", "WSTRACE.TP." + TRACEPARENT, "xwstrace.tp." + TRACEPARENT]
    carrier, rest = split_subprotocols(offered)
    assert carrier == {}
    assert rest == offered


def test_subprotocols_empty() -> None:
    """No offered subprotocols give nothing."""
    assert split_subprotocols([]) == ({}, [])


# hide_trace_tokens -------------------------------------------------------------


def test_trace_tokens_hidden_and_echoed_only_when_alone() -> None:
    """The application sees its own subprotocols; a browser that offered only ours gets the first echoed."""
    ours = SUBPROTOCOL_PREFIX + TRACEPARENT
    assert hide_trace_tokens(["chat", ours, "graphql-ws"]) == (["chat", "graphql-ws"], None)
    assert hide_trace_tokens([ours, SUBPROTOCOL_PREFIX + "x"]) == ([], ours)
    assert hide_trace_tokens(["chat"]) == (["chat"], None)
    assert hide_trace_tokens([]) == ([], None)


def test_session_tokens_hidden_like_trace_tokens() -> None:
    """A browser's ``wstrace.sid.`` token never reaches the application; offered alone, it is echoed."""
    sid = SESSION_SUBPROTOCOL_PREFIX + SESSION
    tp = SUBPROTOCOL_PREFIX + TRACEPARENT
    assert split_subprotocols(["chat", sid, tp]) == ({"traceparent": TRACEPARENT}, ["chat"])
    assert hide_trace_tokens(["chat", tp, sid]) == (["chat"], None)
    assert hide_trace_tokens([tp, sid]) == ([], tp)
    assert hide_trace_tokens([sid]) == ([], sid)


def test_session_from_query_and_subprotocols() -> None:
    """The first ``wstrace-session`` parameter or ``wstrace.sid.`` token, unchecked (the handshake checks it)."""
    assert query_session(f"a=1&wstrace-session={SESSION}&wstrace-session=x") == SESSION
    assert query_session(f"WSTRACE-SESSION={SESSION}".encode()) == SESSION
    assert query_session("a=1") is None
    assert query_session("") is None
    assert query_session("wstrace-session=" + "0" * (4 * MAX_VALUE_BYTES)) is None  # an oversized query is ignored
    assert subprotocol_session(["chat", SESSION_SUBPROTOCOL_PREFIX + SESSION, SESSION_SUBPROTOCOL_PREFIX + "x"]) == (
        SESSION
    )
    assert subprotocol_session(["chat"]) is None


def test_malformed_trace_token_left_for_the_library() -> None:
    """A token of ours that is no RFC 9110 token leaves the list as it is: the library rejects the request."""
    offered = ["chat", SUBPROTOCOL_PREFIX + "a b"]
    assert hide_trace_tokens(offered) == (offered, None)
