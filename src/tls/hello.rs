//! A look at the first bytes a client sends to the TLS port, before the handshake: plain HTTP
//! gets a readable refusal instead of a TLS alert. (`min_version` is not decided here but by
//! the listener's rustls config, which sees the whole ClientHello however it is fragmented.)

/// A TLS record header is 5 bytes: type, version (2), length (2).
pub const RECORD_HEADER_LEN: usize = 5;
/// Largest record payload a client may send (2^14 plus the allowed expansion).
pub const MAX_RECORD_LEN: usize = 16384 + 2048;

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

#[cfg(test)]
mod tests {
    use super::*;

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
