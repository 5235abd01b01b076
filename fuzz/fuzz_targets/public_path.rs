//! `split_public_path` on arbitrary paths: never panics, and when it
//! routes, the name is valid and is exactly the raw segment after `/t/`, so
//! no encoding trick can name another tunnel.
#![no_main]

use libfuzzer_sys::fuzz_target;
use whtunnel::tunnel::protocol::{is_valid_name, split_public_path};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((name, app_path)) = split_public_path(path) {
        assert!(is_valid_name(name), "{name:?}");
        let rest = &path[3 + name.len()..];
        assert!(path.starts_with("/t/") && path[3..].starts_with(name));
        assert!(
            rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
            "{path:?}"
        );
        assert!(app_path.starts_with('/'));
        // The app path is the rest of the raw path, unchanged.
        assert!(
            app_path == rest || app_path == format!("/{rest}"),
            "{path:?} -> {app_path:?}"
        );
    }
});
