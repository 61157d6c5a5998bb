"""Attribute keys and header names, as plain strings.

OpenTelemetry semantic-convention names are reused where they exist; the
``websocket.*`` names are our own until the conventions define them
(semantic-conventions issue #2841). ``docs/semantic-conventions.md`` lists
every one of them with its meaning.
"""

from __future__ import annotations


__all__: list[str] = []  # constants only, imported by name inside the package

# OpenTelemetry semantic conventions (HTTP, URL, network, messaging).
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
HTTP_ROUTE = "http.route"
URL_FULL = "url.full"
URL_PATH = "url.path"
URL_SCHEME = "url.scheme"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
CLIENT_ADDRESS = "client.address"
CLIENT_PORT = "client.port"
NETWORK_PROTOCOL_NAME = "network.protocol.name"
MESSAGING_MESSAGE_BODY_SIZE = "messaging.message.body.size"
MESSAGING_SYSTEM = "messaging.system"
MESSAGING_OPERATION_NAME = "messaging.operation.name"
MESSAGING_OPERATION_TYPE = "messaging.operation.type"
MESSAGING_DESTINATION_NAME = "messaging.destination.name"
MESSAGING_MESSAGE_ID = "messaging.message.id"
MESSAGING_CONSUMER_GROUP_NAME = "messaging.consumer.group.name"
MESSAGING_BATCH_MESSAGE_COUNT = "messaging.batch.message_count"
MESSAGING_DESTINATION_TEMPORARY = "messaging.destination.temporary"
# Django Channels' event type (the handler's name, dots for underscores), as OpenTelemetry JS names
# socket.io's event: messaging.<system>.<name>.
DJANGO_CHANNELS_EVENT_TYPE = "messaging.django_channels.event_type"
ERROR_TYPE = "error.type"
# OpenTelemetry JS's socket.io instrumentation (opentelemetry-js-contrib), so Python and Node services read alike.
SOCKETIO_EVENT_NAME = "messaging.socket.io.event_name"
SOCKETIO_NAMESPACE = "messaging.socket.io.namespace"
SOCKETIO_ROOMS = "messaging.socket.io.rooms"

# wstrace's own names.
SESSION_ID = "websocket.session.id"
MESSAGE_TYPE = "websocket.message.type"
MESSAGE_ORDINAL = "websocket.message.ordinal"
MESSAGE_BODY = "websocket.message.body"
MESSAGE_BODY_TRUNCATED = "websocket.message.body_truncated"
CLOSE_CODE = "websocket.close.code"
CLOSE_REASON = "websocket.close.reason"
CLOSE_INITIATOR = "websocket.close.initiator"
SUBPROTOCOL = "websocket.subprotocol"
ENVELOPE = "websocket.envelope"
MESSAGE_DIRECTION = "websocket.message.direction"
SIDE = "websocket.side"
STREAM_DIRECTION = "wstrace.stream.direction"
CONTEXT_SOURCE = "wstrace.context.source"
LINK_KIND = "wstrace.link.kind"
SOCKETIO_RECIPIENTS = "wstrace.socketio.recipients"

# Handshake headers of the envelope negotiation and the shared session id.
ENVELOPE_HEADER = "wstrace-envelope"
SESSION_HEADER = "wstrace-session"
ENVELOPE_VERSION = "1"

# Prefix of a Sec-WebSocket-Protocol token that carries a traceparent (browsers).
SUBPROTOCOL_PREFIX = "wstrace.tp."
# Prefix of a Sec-WebSocket-Protocol token that carries a session id (browsers); the query string carries it
# as a ``wstrace-session`` parameter.
SESSION_SUBPROTOCOL_PREFIX = "wstrace.sid."
# Every token wstrace hides from the application.
TOKEN_PREFIXES = (SUBPROTOCOL_PREFIX, SESSION_SUBPROTOCOL_PREFIX)
