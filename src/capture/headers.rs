//! A recorded header list: the names and raw value bytes of a request or
//! response head, in order, duplicates kept.
//!
//! Headers the forwarder captures stay the `http` types they arrived as,
//! sharing the bytes of the decoded head: capturing one costs two reference
//! counts, not two allocations and copies, and nothing is freed per header
//! when the store is done with it (the recording path's largest share of
//! allocations, docs/benchmarks.md, "Session 16"). Headers read back from a
//! store or a file, or edited by a person, are owned text and bytes and
//! may be anything.

use http::{HeaderName, HeaderValue};

use super::model::Header;

/// Headers as recorded, in order, duplicates kept.
#[derive(Clone, Default)]
pub struct Headers(Repr);

#[derive(Clone)]
enum Repr {
    /// As received: shares the head's bytes.
    Http(Vec<(HeaderName, HeaderValue)>),
    /// Read back or edited: any name, any bytes.
    Owned(Vec<Header>),
}

impl Default for Repr {
    fn default() -> Self {
        Repr::Owned(Vec::new())
    }
}

impl Headers {
    /// Headers as received, in this order.
    pub fn received(list: Vec<(HeaderName, HeaderValue)>) -> Self {
        Headers(Repr::Http(list))
    }

    /// Every header of `map`, in its order, sharing its bytes.
    pub fn from_map(map: &http::HeaderMap) -> Self {
        let mut list = Vec::with_capacity(map.len());
        list.extend(map.iter().map(|(n, v)| (n.clone(), v.clone())));
        Headers(Repr::Http(list))
    }

    /// A borrowed view, as [`crate::verify::RequestView`] takes it.
    pub fn view(&self) -> HeadersRef<'_> {
        match &self.0 {
            Repr::Http(l) => HeadersRef::Http(l),
            Repr::Owned(l) => HeadersRef::Owned(l),
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

    /// The list as owned pairs, to edit: headers as received are copied
    /// once, the first time.
    pub fn to_mut(&mut self) -> &mut Vec<Header> {
        if let Repr::Http(l) = &self.0 {
            self.0 = Repr::Owned(l.iter().map(owned).collect());
        }
        match &mut self.0 {
            Repr::Owned(l) => l,
            Repr::Http(_) => unreachable!("made owned above"),
        }
    }

    /// The list as owned pairs.
    pub fn into_owned(self) -> Vec<Header> {
        match self.0 {
            Repr::Http(l) => l.iter().map(owned).collect(),
            Repr::Owned(l) => l,
        }
    }
}

fn owned((n, v): &(HeaderName, HeaderValue)) -> Header {
    (n.as_str().to_owned(), v.as_bytes().to_vec())
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
        self.len() == other.len() && self.iter().eq(HeadersRef::Owned(other).iter())
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
#[derive(Debug, Clone, Copy)]
pub enum HeadersRef<'a> {
    /// As received.
    Http(&'a [(HeaderName, HeaderValue)]),
    /// Owned pairs.
    Owned(&'a [Header]),
}

impl<'a> HeadersRef<'a> {
    /// Name and value bytes of each header, in order.
    pub fn iter(self) -> Iter<'a> {
        match self {
            HeadersRef::Http(l) => Iter::Http(l.iter()),
            HeadersRef::Owned(l) => Iter::Owned(l.iter()),
        }
    }

    /// How many headers (duplicates counted).
    pub fn len(self) -> usize {
        match self {
            HeadersRef::Http(l) => l.len(),
            HeadersRef::Owned(l) => l.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// The first value of `name`, in any case.
    pub fn get(self, name: &str) -> Option<&'a [u8]> {
        // A loop per kind: verifying a webhook looks up a dozen names.
        match self {
            HeadersRef::Http(l) => l
                .iter()
                .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_bytes()),
            HeadersRef::Owned(l) => l
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice()),
        }
    }
}

impl<'a> From<&'a Headers> for HeadersRef<'a> {
    fn from(h: &'a Headers) -> Self {
        h.view()
    }
}

impl<'a> From<&'a [Header]> for HeadersRef<'a> {
    fn from(h: &'a [Header]) -> Self {
        HeadersRef::Owned(h)
    }
}

impl<'a> From<&'a Vec<Header>> for HeadersRef<'a> {
    fn from(h: &'a Vec<Header>) -> Self {
        HeadersRef::Owned(h)
    }
}

impl<'a, const N: usize> From<&'a [Header; N]> for HeadersRef<'a> {
    fn from(h: &'a [Header; N]) -> Self {
        HeadersRef::Owned(h)
    }
}

impl<'a> IntoIterator for HeadersRef<'a> {
    type Item = (&'a str, &'a [u8]);
    type IntoIter = Iter<'a>;
    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

/// The iterator of [`Headers::iter`] and [`HeadersRef::iter`].
#[derive(Clone)]
pub enum Iter<'a> {
    /// Over headers as received.
    Http(std::slice::Iter<'a, (HeaderName, HeaderValue)>),
    /// Over owned pairs.
    Owned(std::slice::Iter<'a, Header>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Iter::Http(i) => i.next().map(|(n, v)| (n.as_str(), v.as_bytes())),
            Iter::Owned(i) => i.next().map(|(n, v)| (n.as_str(), v.as_slice())),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            Iter::Http(i) => i.size_hint(),
            Iter::Owned(i) => i.size_hint(),
        }
    }
}

impl ExactSizeIterator for Iter<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_and_owned_lists_read_and_compare_alike() {
        let mut map = http::HeaderMap::new();
        map.insert("content-type", HeaderValue::from_static("application/json"));
        map.append("x-dup", HeaderValue::from_static("1"));
        map.append("x-dup", HeaderValue::from_bytes(b"2\xff").unwrap());
        let received = Headers::from_map(&map);
        let owned: Headers = vec![
            ("content-type".to_string(), b"application/json".to_vec()),
            ("x-dup".to_string(), b"1".to_vec()),
            ("x-dup".to_string(), b"2\xff".to_vec()),
        ]
        .into();
        assert_eq!(received, owned);
        assert_eq!(received.len(), 3);
        assert_eq!(received.get("X-DUP"), Some(&b"1"[..]));
        assert_eq!(received.get("host"), None);
        assert_eq!(received.clone().into_owned(), owned.clone().into_owned());
        let mut edited = received.clone();
        edited.to_mut().retain(|(n, _)| n != "x-dup");
        assert_ne!(edited, received);
        assert_eq!(
            edited.iter().collect::<Vec<_>>(),
            [("content-type", &b"application/json"[..])]
        );
        assert!(Headers::default().is_empty());
        assert_eq!(format!("{received:?}").matches("x-dup").count(), 2);
    }

    #[test]
    fn received_headers_share_the_heads_bytes() {
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_static(b"shared")).unwrap();
        let mut map = http::HeaderMap::new();
        map.insert("x-a", value);
        let h = Headers::from_map(&map);
        let (_, bytes) = h.iter().next().unwrap();
        assert_eq!(bytes.as_ptr(), map["x-a"].as_bytes().as_ptr(), "not copied");
    }
}
