//! Event type recognition (STUB until the capture branch lands).

/// The webhook event type named in a body, if any.
pub fn detect(_body: &[u8], _content_type: Option<&str>) -> Option<String> {
    None
}
