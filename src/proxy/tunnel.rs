//! How the proxy closes a WebSocket tunnel from outside the relay loop: it keeps its own
//! duplicate of the upstream socket and shuts the socket down when the session is revoked.

use std::os::fd::{BorrowedFd, RawFd};

use crate::access::Closer;

/// A closer for the upstream socket `fd`. The duplicate keeps the socket alive (and its
/// descriptor number ours) until the registration is dropped, so a revocation arriving as the
/// tunnel ends can never shut down an unrelated connection that reused the number.
pub fn closer(fd: RawFd) -> std::io::Result<Closer> {
    // SAFETY: Pingora hands us the descriptor of the live upstream connection for the duration
    // of `connected_to_upstream`; it is only borrowed to duplicate it.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    Ok(Box::new(move || {
        let _ = socket2::SockRef::from(&owned).shutdown(std::net::Shutdown::Both);
    }))
}
