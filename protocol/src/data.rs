//! Data connections (protocol version 3): the bytes of one TCP stream on a TCP connection of
//! their own to the agent, which splices it to the target's socket, so that the session (and
//! the process at its other end) stays out of the byte path. For agents reached over plain
//! TCP only: through TLS or a port-forward, streams keep their bytes on the session.
//!
//! The opener asks for it with `ConnectTcp` flagged `attach`; once the stream is `Opened` it
//! connects to the address the session reached and sends, before any byte of the stream,
//!
//! ```text
//!   "SCTD"  session id (16)  stream id (u32 BE)  client proof (32)      client → agent
//!                                                agent proof (32)       agent → client
//! ```
//!
//! after which the connection carries the stream's bytes both ways. The keys come from the
//! session's handshake and are never sent: `K = HMAC-SHA256(token, label ‖ transcript ‖
//! agent proof ‖ client proof)` (fresh nonces from both sides in the transcript), the
//! session id is `HMAC-SHA256(K, "id")` cut to 16 bytes, the client's proof for stream `S` is
//! `HMAC-SHA256(K, "attach client" ‖ S)` and the agent's `HMAC-SHA256(K, "attach agent" ‖ S)`.
//! So a data connection belongs to one session, each side proves itself on it, and the agent
//! takes at most one per stream it was asked to attach: a preamble seen once is worth nothing
//! afterwards. A session frame never starts with "SCTD" (as a length, that is over the
//! largest frame), so one listener tells the two apart by their first four bytes.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::auth::PROOF_LEN;
use crate::frame::StreamId;

/// The first four bytes of a data connection.
pub const DATA_MAGIC: [u8; 4] = *b"SCTD";
/// Length of a session's id.
pub const SESSION_ID_LEN: usize = 16;
/// Length of the client's preamble.
pub const PREAMBLE_LEN: usize = DATA_MAGIC.len() + SESSION_ID_LEN + 4 + PROOF_LEN;
/// Length of the agent's answer.
pub const ANSWER_LEN: usize = PROOF_LEN;

/// A session's keys for its data connections (both sides derive the same).
#[derive(Clone, Copy)]
pub struct DataKeys {
    key: [u8; PROOF_LEN],
}

impl std::fmt::Debug for DataKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKeys(..)")
    }
}

/// A preamble as read off a data connection, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preamble {
    /// The session it names.
    pub session: [u8; SESSION_ID_LEN],
    /// The stream it carries.
    pub stream: StreamId,
    /// The client's proof.
    pub proof: [u8; PROOF_LEN],
}

impl Preamble {
    /// Parses the client's [`PREAMBLE_LEN`] bytes; `None` if they do not start with
    /// [`DATA_MAGIC`].
    pub fn parse(bytes: &[u8; PREAMBLE_LEN]) -> Option<Preamble> {
        let rest = bytes.strip_prefix(&DATA_MAGIC)?;
        let (session, rest) = rest.split_at(SESSION_ID_LEN);
        let (stream, proof) = rest.split_at(4);
        Some(Preamble {
            session: session.try_into().ok()?,
            stream: StreamId::from_be_bytes(stream.try_into().ok()?),
            proof: proof.try_into().ok()?,
        })
    }
}

impl DataKeys {
    /// The keys of a session whose handshake proved over `transcript` (with the agent's proof
    /// appended) and ended with the client's proof `client_proof`.
    pub(crate) fn derive(
        token: &crate::Token,
        transcript: &[u8],
        client_proof: &[u8; PROOF_LEN],
    ) -> DataKeys {
        let mut all = Vec::with_capacity(transcript.len() + PROOF_LEN);
        all.extend_from_slice(transcript);
        all.extend_from_slice(client_proof);
        DataKeys {
            key: token.prove(crate::auth::Proof::DataKey, &all),
        }
    }

    fn mac(&self, label: &[u8], stream: Option<StreamId>) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        mac.update(label);
        if let Some(stream) = stream {
            mac.update(&stream.to_be_bytes());
        }
        mac
    }

    /// The session's id, which names it on its data connections.
    pub fn session_id(&self) -> [u8; SESSION_ID_LEN] {
        let full: [u8; PROOF_LEN] = self.mac(b"id\0", None).finalize().into_bytes().into();
        let mut id = [0u8; SESSION_ID_LEN];
        id.copy_from_slice(&full[..SESSION_ID_LEN]);
        id
    }

    /// The client's preamble on the data connection of `stream`.
    pub fn preamble(&self, stream: StreamId) -> [u8; PREAMBLE_LEN] {
        let proof: [u8; PROOF_LEN] = self
            .mac(b"attach client\0", Some(stream))
            .finalize()
            .into_bytes()
            .into();
        let mut out = [0u8; PREAMBLE_LEN];
        let mut at = 0;
        for part in [
            &DATA_MAGIC[..],
            &self.session_id()[..],
            &stream.to_be_bytes()[..],
            &proof[..],
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// Whether `preamble` names this session and proves itself for its stream (constant
    /// time in the proof).
    pub fn verify_preamble(&self, preamble: &Preamble) -> bool {
        preamble.session == self.session_id()
            && self
                .mac(b"attach client\0", Some(preamble.stream))
                .verify_slice(&preamble.proof)
                .is_ok()
    }

    /// The agent's answer on the data connection of `stream`.
    pub fn answer(&self, stream: StreamId) -> [u8; ANSWER_LEN] {
        self.mac(b"attach agent\0", Some(stream))
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `answer` is the agent's for `stream` (constant time).
    pub fn verify_answer(&self, stream: StreamId, answer: &[u8]) -> bool {
        self.mac(b"attach agent\0", Some(stream))
            .verify_slice(answer)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Token;

    fn keys(token: &str, transcript: &[u8]) -> DataKeys {
        let token = Token::new(token.to_owned()).unwrap();
        DataKeys::derive(&token, transcript, &[7; PROOF_LEN])
    }

    #[test]
    fn a_preamble_proves_one_stream_of_one_session() {
        let k = keys("secret-token-0123456789", b"transcript one");
        let p = Preamble::parse(&k.preamble(5)).unwrap();
        assert_eq!(p.stream, 5);
        assert!(k.verify_preamble(&p));
        // Another stream, another session, another token: refused.
        let mut other_stream = p.clone();
        other_stream.stream = 7;
        assert!(!k.verify_preamble(&other_stream));
        let other_session = keys("secret-token-0123456789", b"transcript two");
        assert!(!other_session.verify_preamble(&p));
        assert!(!keys("another-token-0123456789", b"transcript one").verify_preamble(&p));
        // A flipped bit of the proof: refused.
        let mut bent = p;
        bent.proof[31] ^= 1;
        assert!(!k.verify_preamble(&bent));
    }

    #[test]
    fn the_agents_answer_is_checked_and_differs_from_the_clients_proof() {
        let k = keys("secret-token-0123456789", b"transcript");
        let answer = k.answer(3);
        assert!(k.verify_answer(3, &answer));
        assert!(!k.verify_answer(4, &answer));
        let p = Preamble::parse(&k.preamble(3)).unwrap();
        assert_ne!(p.proof, answer, "a reflected preamble is no answer");
        assert!(!k.verify_answer(3, &answer[..31]));
    }

    #[test]
    fn anything_not_starting_with_the_magic_is_no_preamble() {
        let k = keys("secret-token-0123456789", b"t");
        let mut bytes = k.preamble(1);
        bytes[0] = 0;
        assert_eq!(Preamble::parse(&bytes), None);
        // A session's first frame starts with its length: never the magic.
        let magic_as_len = u32::from_be_bytes(DATA_MAGIC) as usize;
        assert!(magic_as_len > crate::frame::MAX_PAYLOAD_LEN);
    }
}
