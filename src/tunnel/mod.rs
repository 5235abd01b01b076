//! The tunnel transport: HTTP/2 over a websocket byte stream.
