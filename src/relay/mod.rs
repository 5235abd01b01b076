//! The public relay server.
