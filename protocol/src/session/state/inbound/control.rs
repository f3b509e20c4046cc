//! Frames about the session as a whole: keepalive (`Ping`/`Pong`), the peer's `GoAway`, and
//! handshake frames, which have no place once the handshake is over.

use super::violation;
use crate::frame::Frame;
use crate::session::state::State;
use crate::session::CloseReason;

impl State {
    /// `Ping`: answered at once with a `Pong` carrying the same nonce.
    pub(super) fn on_ping(&mut self, nonce: u64) {
        self.queue(&Frame::Pong { nonce });
    }
}

/// `GoAway`: the peer closes the session, and says why.
pub(super) fn go_away(message: String) -> CloseReason {
    CloseReason::PeerShutdown { message }
}

/// `Hello`, `Welcome` or `Refused` after the handshake.
pub(super) fn late_handshake() -> CloseReason {
    violation("handshake frame after the handshake".to_string())
}
