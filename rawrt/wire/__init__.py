"""The bytes rawrt puts on the wire and takes off it, with no I/O.

Each module builds or checks one kind of bytes: `ids` (message ids and cursors), `wsframe`
(server WebSocket frames), `envelope` (the JSON messages), `sse` (event-stream events),
`http` (response heads and request targets) and `handshake` (the WebSocket upgrade).
"""
