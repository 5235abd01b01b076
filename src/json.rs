//! Reading a JSON webhook body for a few of its values, as strictly as
//! serde_json's full parse, without building the rest: [`Skip`]. Shared by
//! event-type detection ([`crate::capture::event`]) and sender recognition
//! ([`crate::verify::recognise`]), which must agree on what is JSON.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A value read and thrown away. Not serde's `IgnoredAny`: serde_json skips
/// that without the checks its parse makes (its nesting limit, `\u`
/// escapes that are lone surrogates, numbers out of range), and a body read
/// for its values must be one the full parse accepts. Strings are borrowed
/// from the body, so nothing is allocated.
///
/// serde_json does not check that the strings it skips are UTF-8 when it
/// reads bytes: parse a body with [`from_utf8`] rather than `from_slice`.
pub struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_entry::<Skip, Skip>()?.is_some() {}
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// `T` from `body`, which must be UTF-8 text and a JSON document (with
/// [`Skip`] for what `T` does not keep: the same bodies serde_json's full
/// parse accepts).
pub fn from_utf8<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    serde_json::from_str(std::str::from_utf8(body).ok()?).ok()
}
