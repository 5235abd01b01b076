//! A recorded header list: the names and raw value bytes of a request or
//! response head, in order, duplicates kept.
//!
//! Headers the forwarder captures are kept as received: the `http` names
//! (a standard one is a constant, a custom one shares its own small
//! buffer) and every value copied into one buffer. Capturing a head is two
//! allocations, not two per header, and the writer thread that drops the
//! exchange frees two (the recording path's largest share of allocations,
//! docs/benchmarks.md, "Session 16"). The values are copied rather than
//! shared with the decoded head because a shared value would keep the
//! whole read buffer it was decoded from (up to hundreds of KiB for an
//! HTTP/1 answer) alive until the exchange is stored. Headers read back
//! from a store or a file, or edited by a person, are owned text and
//! bytes, and may be anything.

use http::HeaderName;

use super::model::Header;

/// Headers as recorded, in order, duplicates kept.
#[derive(Clone, Default)]
pub struct Headers(Repr);

#[derive(Clone)]
enum Repr {
    /// As received: each name with the end of its value in `values`.
    Received { names: Vec<Named>, values: Vec<u8> },
    /// Read back or edited: any name, any bytes.
    Owned(Vec<Header>),
}

/// A received header's name, with its length (a lookup compares lengths
/// before it reads the name: a standard name's text is a table lookup) and
/// the end of its value in the list's value buffer.
#[derive(Clone)]
struct Named {
    name: HeaderName,
    len: usize,
    end: usize,
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

impl Headers {
    /// An empty list of received headers, with room for `headers` of them
    /// whose values add up to `value_bytes`.
    pub fn received(headers: usize, value_bytes: usize) -> Self {
        Headers(Repr::Received {
            names: Vec::with_capacity(headers),
            values: Vec::with_capacity(value_bytes),
        })
    }

    /// Every header of `map`, in its order.
    pub fn from_map(map: &http::HeaderMap) -> Self {
        let mut h = Self::received(map.len(), map.values().map(|v| v.len()).sum());
        for (name, value) in map {
            h.push(name, value.as_bytes());
        }
        h
    }

    /// Appends a header.
    pub fn push(&mut self, name: &HeaderName, value: &[u8]) {
        match &mut self.0 {
            Repr::Received { names, values } => {
                values.extend_from_slice(value);
                names.push(Named {
                    name: name.clone(),
                    len: name.as_str().len(),
                    end: values.len(),
                });
            }
            Repr::Owned(l) => l.push((name.as_str().to_owned(), value.to_vec())),
        }
    }

    /// A borrowed view, as [`crate::verify::RequestView`] takes it.
    pub fn view(&self) -> HeadersRef<'_> {
        match &self.0 {
            Repr::Received { names, values } => HeadersRef(RefRepr::Received { names, values }),
            Repr::Owned(l) => HeadersRef(RefRepr::Owned(l)),
        }
    }

    /// Name and value bytes of each header, in order.
    pub fn iter(&self) -> Iter<'_> {
        self.view().iter()
    }

    /// How many headers (duplicates counted).
    pub fn len(&self) -> usize {
        self.view().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first value of `name`, in any case.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.view().get(name)
    }

    /// The list as owned pairs, to edit: received headers are copied
    /// once, the first time.
    pub fn to_mut(&mut self) -> &mut Vec<Header> {
        if let Repr::Received { .. } = &self.0 {
            self.0 = Repr::Owned(self.iter().map(owned).collect());
        }
        match &mut self.0 {
            Repr::Owned(l) => l,
            Repr::Received { .. } => unreachable!("made owned above"),
        }
    }

    /// Whether the list is kept as received (not as owned pairs).
    #[cfg(test)]
    pub(crate) fn is_received(&self) -> bool {
        matches!(self.0, Repr::Received { .. })
    }

    /// The list as owned pairs.
    pub fn into_owned(self) -> Vec<Header> {
        match self.0 {
            Repr::Owned(l) => l,
            Repr::Received { .. } => self.iter().map(owned).collect(),
        }
    }
}

fn owned((n, v): (&str, &[u8])) -> Header {
    (n.to_owned(), v.to_vec())
}

impl From<Vec<Header>> for Headers {
    fn from(list: Vec<Header>) -> Self {
        Headers(Repr::Owned(list))
    }
}

impl FromIterator<Header> for Headers {
    fn from_iter<I: IntoIterator<Item = Header>>(iter: I) -> Self {
        Headers(Repr::Owned(iter.into_iter().collect()))
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// Equal when they hold the same names and bytes in the same order,
/// however each is kept.
impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

/// Equal to owned pairs holding the same names and bytes in order.
impl PartialEq<Vec<Header>> for Headers {
    fn eq(&self, other: &Vec<Header>) -> bool {
        self.len() == other.len() && self.iter().eq(HeadersRef::from(other).iter())
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

/// A borrowed header list: [`Headers`], or owned pairs anywhere.
#[derive(Clone, Copy)]
pub struct HeadersRef<'a>(RefRepr<'a>);

#[derive(Clone, Copy)]
enum RefRepr<'a> {
    Received {
        names: &'a [Named],
        values: &'a [u8],
    },
    Owned(&'a [Header]),
}

impl<'a> HeadersRef<'a> {
    /// Name and value bytes of each header, in order.
    pub fn iter(self) -> Iter<'a> {
        Iter(match self.0 {
            RefRepr::Received { names, values } => IterRepr::Received {
                names: names.iter(),
                values,
                start: 0,
            },
            RefRepr::Owned(l) => IterRepr::Owned(l.iter()),
        })
    }

    /// How many headers (duplicates counted).
    pub fn len(self) -> usize {
        match self.0 {
            RefRepr::Received { names, .. } => names.len(),
            RefRepr::Owned(l) => l.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The first value of `name`, in any case.
    pub fn get(self, name: &str) -> Option<&'a [u8]> {
        match self.0 {
            // Verifying a webhook looks up a dozen names in each request.
            RefRepr::Received { names, values } => {
                let mut start = 0;
                for n in names {
                    if n.len == name.len() && n.name.as_str().eq_ignore_ascii_case(name) {
                        return values.get(start..n.end);
                    }
                    start = n.end;
                }
                None
            }
            RefRepr::Owned(l) => l
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice()),
        }
    }
}

impl std::fmt::Debug for HeadersRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| (n, String::from_utf8_lossy(v))))
            .finish()
    }
}

impl<'a> From<&'a Headers> for HeadersRef<'a> {
    fn from(h: &'a Headers) -> Self {
        h.view()
    }
}

impl<'a> From<&'a [Header]> for HeadersRef<'a> {
    fn from(h: &'a [Header]) -> Self {
        HeadersRef(RefRepr::Owned(h))
    }
}

impl<'a> From<&'a Vec<Header>> for HeadersRef<'a> {
    fn from(h: &'a Vec<Header>) -> Self {
        HeadersRef(RefRepr::Owned(h))
    }
}

impl<'a, const N: usize> From<&'a [Header; N]> for HeadersRef<'a> {
    fn from(h: &'a [Header; N]) -> Self {
        HeadersRef(RefRepr::Owned(h))
    }
}

impl<'a> IntoIterator for HeadersRef<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The iterator of [`Headers::iter`] and [`HeadersRef::iter`]: name and
/// value bytes of each header, in order.
#[derive(Clone)]
pub struct Iter<'a>(IterRepr<'a>);

#[derive(Clone)]
enum IterRepr<'a> {
    Received {
        names: std::slice::Iter<'a, Named>,
        values: &'a [u8],
        /// Where the next value starts in `values`.
        start: usize,
    },
    Owned(std::slice::Iter<'a, Header>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            IterRepr::Received {
                names,
                values,
                start,
            } => {
                let named = names.next()?;
                // Ends only grow, within `values`, by construction.
                let value = values.get(*start..named.end).unwrap_or_default();
                *start = named.end;
                Some((named.name.as_str(), value))
            }
            IterRepr::Owned(i) => i.next().map(|(n, v)| (n.as_str(), v.as_slice())),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            IterRepr::Received { names, .. } => names.size_hint(),
            IterRepr::Owned(i) => i.size_hint(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl std::iter::FusedIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn received_and_owned_lists_read_and_compare_alike() {
        let mut map = http::HeaderMap::new();
        map.insert("content-type", HeaderValue::from_static("application/json"));
        map.append("x-dup", HeaderValue::from_static("1"));
        map.append("x-empty", HeaderValue::from_static(""));
        map.append("x-dup", HeaderValue::from_bytes(b"2\xff").unwrap());
        let received = Headers::from_map(&map);
        // The map groups a name's values: x-dup's second value comes
        // before x-empty, as the capture always listed them.
        let owned: Headers = vec![
            ("content-type".to_string(), b"application/json".to_vec()),
            ("x-dup".to_string(), b"1".to_vec()),
            ("x-dup".to_string(), b"2\xff".to_vec()),
            ("x-empty".to_string(), Vec::new()),
        ]
        .into();
        assert_eq!(received, owned);
        assert_eq!(received.len(), 4);
        assert_eq!(received.iter().len(), 4);
        assert_eq!(received.get("X-DUP"), Some(&b"1"[..]));
        assert_eq!(received.get("x-empty"), Some(&b""[..]));
        assert_eq!(received.get("host"), None);
        assert_eq!(received.clone().into_owned(), owned.clone().into_owned());
        let mut edited = received.clone();
        edited.to_mut().retain(|(n, _)| n != "x-dup");
        assert_ne!(edited, received);
        assert_eq!(
            edited.iter().collect::<Vec<_>>(),
            [
                ("content-type", &b"application/json"[..]),
                ("x-empty", &b""[..])
            ]
        );
        edited.push(&http::header::HOST, b"h");
        assert_eq!(edited.get("host"), Some(&b"h"[..]));
        assert!(Headers::default().is_empty());
        assert_eq!(format!("{received:?}").matches("x-dup").count(), 2);
        assert_eq!(format!("{:?}", received.view()), format!("{received:?}"));
    }

    /// A captured value is a copy: the buffer the head was decoded into is
    /// not kept alive until the exchange is stored.
    #[test]
    fn received_headers_keep_nothing_of_the_head() {
        let head = bytes::Bytes::from(b"a value".to_vec());
        let mut map = http::HeaderMap::new();
        map.insert("x-a", HeaderValue::from_maybe_shared(head.clone()).unwrap());
        let h = Headers::from_map(&map);
        drop(map);
        assert!(head.is_unique(), "the capture holds the head's buffer");
        assert_eq!(h.get("x-a"), Some(&b"a value"[..]));
    }
}
