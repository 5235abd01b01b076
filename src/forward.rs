//! Forwarding requests to the local app.
