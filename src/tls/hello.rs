//! A look at the first bytes a client sends to the TLS port, before the handshake: plain HTTP
//! gets a readable refusal instead of a TLS alert, and `min_version = "1.3"` is enforced from
//! the ClientHello's `supported_versions` (rustls's resolver only sees cipher suites, and a
//! modern client capped at 1.2 still lists the 1.3 suites).

/// A TLS record header is 5 bytes: type, version (2), length (2).
pub const RECORD_HEADER_LEN: usize = 5;
/// Largest record payload a client may send (2^14 plus the allowed expansion).
pub const MAX_RECORD_LEN: usize = 16384 + 2048;

/// A fatal `protocol_version` alert (TLS 1.2 record framing), sent to a client that cannot
/// speak the minimum version.
pub const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 70];

/// What the connection starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A TLS handshake record whose payload is this many bytes.
    Handshake(usize),
    /// An ASCII request line: someone spoke plain HTTP to the TLS port.
    PlainHttp,
    /// Anything else; left for the TLS stack to refuse.
    Other,
}

/// Classifies the first [`RECORD_HEADER_LEN`] bytes of a connection.
pub fn classify(head: &[u8; RECORD_HEADER_LEN]) -> Start {
    if head[0] == 0x16 && head[1] == 0x03 {
        let len = usize::from(u16::from_be_bytes([head[3], head[4]]));
        if len > 0 && len <= MAX_RECORD_LEN {
            return Start::Handshake(len);
        }
        return Start::Other;
    }
    let method_like = head
        .iter()
        .take_while(|b| **b != b' ')
        .all(u8::is_ascii_uppercase);
    if method_like && head[0].is_ascii_uppercase() {
        Start::PlainHttp
    } else {
        Start::Other
    }
}

/// Whether the ClientHello in the first handshake record offers TLS 1.3 (its
/// `supported_versions` extension lists 0x0304); `None` when it cannot be told from this
/// record (not a ClientHello, or one split over several records).
pub fn offers_tls13(record: &[u8]) -> Option<bool> {
    let mut r = Reader(record);
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let body_len = r.u24()?;
    let mut hello = Reader(r.take(body_len)?);
    hello.take(2 + 32)?; // legacy_version, random
    let session_id = usize::from(hello.u8()?);
    hello.take(session_id)?;
    let suites = hello.u16()?;
    hello.take(suites)?;
    let compression = usize::from(hello.u8()?);
    hello.take(compression)?;
    if hello.0.is_empty() {
        return Some(false); // no extensions at all: a TLS 1.2 (or older) client
    }
    let ext_len = hello.u16()?;
    let mut exts = Reader(hello.take(ext_len)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if kind == 0x002b {
            let mut versions = Reader(data);
            let n = usize::from(versions.u8()?);
            let list = versions.take(n)?;
            return Some(list.chunks_exact(2).any(|v| v == [0x03, 0x04]));
        }
    }
    Some(false) // no supported_versions: TLS 1.2 or older
}

/// A bounds-checked cursor; every read is `None` past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello handshake message with the given extensions (type, data).
    fn hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(0); // session id
        body.extend([0x00, 0x04, 0x13, 0x01, 0xc0, 0x2f]);
        body.extend([0x01, 0x00]); // compression: null
        if !extensions.is_empty() {
            let mut exts = Vec::new();
            for (kind, data) in extensions {
                exts.extend(kind.to_be_bytes());
                exts.extend((data.len() as u16).to_be_bytes());
                exts.extend(data);
            }
            body.extend((exts.len() as u16).to_be_bytes());
            body.extend(exts);
        }
        let mut msg = vec![0x01];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    fn versions(list: &[u16]) -> (u16, Vec<u8>) {
        let mut data = vec![(list.len() * 2) as u8];
        for v in list {
            data.extend(v.to_be_bytes());
        }
        (0x002b, data)
    }

    #[test]
    fn a_hello_listing_1_3_in_supported_versions_offers_tls13() {
        let msg = hello(&[(0x0000, vec![0, 0]), versions(&[0x0304, 0x0303])]);
        assert_eq!(offers_tls13(&msg), Some(true));
    }

    #[test]
    fn a_hello_capped_at_1_2_does_not_offer_tls13_even_with_1_3_suites() {
        let msg = hello(&[versions(&[0x0303])]);
        assert_eq!(offers_tls13(&msg), Some(false));
        assert_eq!(
            offers_tls13(&hello(&[(0x000a, vec![0, 2, 0, 29])])),
            Some(false)
        );
        assert_eq!(offers_tls13(&hello(&[])), Some(false));
    }

    #[test]
    fn a_truncated_or_foreign_message_is_unknown() {
        let msg = hello(&[versions(&[0x0304])]);
        for cut in [0, 1, 4, 20, msg.len() - 1] {
            assert_eq!(offers_tls13(&msg[..cut]), None, "cut at {cut}");
        }
        let mut not_hello = msg.clone();
        not_hello[0] = 0x02;
        assert_eq!(offers_tls13(&not_hello), None);
    }

    #[test]
    fn the_first_bytes_tell_tls_from_plain_http() {
        assert_eq!(
            classify(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Start::Handshake(512)
        );
        assert_eq!(classify(b"GET /"), Start::PlainHttp);
        assert_eq!(classify(b"POST "), Start::PlainHttp);
        assert_eq!(classify(b"PRI *"), Start::PlainHttp);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0xff, 0xff]), Start::Other);
        assert_eq!(classify(&[0x80, 0x2e, 0x01, 0x03, 0x01]), Start::Other);
        assert_eq!(classify(b"get /"), Start::Other);
    }
}
