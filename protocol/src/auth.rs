//! Proving that a peer holds the session token without sending it: each side contributes a
//! fresh random [`Nonce`], and each proves itself with an HMAC-SHA256 keyed by the token over
//! a transcript of the exchange. A proof is worthless anywhere else: another exchange has
//! other nonces, and each purpose ([`Proof`]) has its own label, so a proof made by the agent
//! is never accepted from a client, nor a session proof on the handoff channel.
//!
//! The session handshake uses [`session_transcript`]; sctrace's handoff channel to a local
//! agent uses [`handoff_transcript`]. Both are public so that tests (and other
//! implementations) can play either side by hand.

use std::fmt;
use std::io::{self, Read, Write};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::token::Token;

/// Length of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Length of a proof: an HMAC-SHA256 tag.
pub const PROOF_LEN: usize = 32;

/// Random bytes that make one authentication unlike every other one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Nonce(pub [u8; NONCE_LEN]);

impl Nonce {
    /// Fresh bytes from the kernel's random number generator.
    pub fn random() -> Result<Nonce, RandomError> {
        let mut bytes = [0u8; NONCE_LEN];
        getrandom::getrandom(&mut bytes).map_err(RandomError)?;
        Ok(Nonce(bytes))
    }

    /// The nonce in `bytes`, when it has the right length.
    pub fn from_slice(bytes: &[u8]) -> Option<Nonce> {
        bytes.try_into().ok().map(Nonce)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce(")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…)")
    }
}

/// The kernel gave no random bytes (getrandom(2) failed).
#[derive(Debug, thiserror::Error)]
#[error("cannot get random bytes from the kernel")]
pub struct RandomError(#[source] getrandom::Error);

/// What a proof is for: who makes it, in which exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// The agent, in the session handshake (sent first: the client checks it before it
    /// sends anything but its `Hello`).
    Agent,
    /// The client (sctrace), in the session handshake.
    Client,
    /// The agent, on the handoff channel.
    HandoffAgent,
    /// sctrace, on the handoff channel.
    HandoffClient,
    /// Not a proof sent anywhere: the key of a session's data connections (version 3,
    /// [`crate::data`]).
    DataKey,
}

impl Proof {
    fn label(self) -> &'static [u8] {
        match self {
            Proof::Agent => b"sctrace/2 agent proof\0",
            Proof::Client => b"sctrace/2 client proof\0",
            Proof::HandoffAgent => b"sctrace/2 handoff agent proof\0",
            Proof::HandoffClient => b"sctrace/2 handoff client proof\0",
            Proof::DataKey => b"sctrace/3 data connection key\0",
        }
    }
}

impl Token {
    fn mac(&self, purpose: Proof, transcript: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length (longer ones are hashed first).
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
        mac.update(purpose.label());
        mac.update(transcript);
        mac
    }

    /// The proof of holding this token for `purpose` over `transcript`:
    /// HMAC-SHA256(token, label of purpose ‖ transcript).
    pub fn prove(&self, purpose: Proof, transcript: &[u8]) -> [u8; PROOF_LEN] {
        self.mac(purpose, transcript).finalize().into_bytes().into()
    }

    /// Whether `presented` is the proof for `purpose` over `transcript`. The comparison takes
    /// the same time wherever the bytes differ.
    pub fn verify(&self, purpose: Proof, transcript: &[u8], presented: &[u8]) -> bool {
        self.mac(purpose, transcript)
            .verify_slice(presented)
            .is_ok()
    }
}

/// The transcript both sides of a session handshake prove over: what the client's `Hello`
/// offered (versions, window, nonce) and the server's nonce. The client's proof covers the
/// agent's proof too (append it to this transcript).
pub fn session_transcript(
    min_version: u16,
    max_version: u16,
    stream_window: u32,
    client: &Nonce,
    server: &Nonce,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(16 + 8 + 2 * NONCE_LEN);
    t.extend_from_slice(b"sctrace/2 session\0");
    t.extend_from_slice(&min_version.to_be_bytes());
    t.extend_from_slice(&max_version.to_be_bytes());
    t.extend_from_slice(&stream_window.to_be_bytes());
    t.extend_from_slice(&client.0);
    t.extend_from_slice(&server.0);
    t
}

/// The transcript of the handoff channel's exchange: sctrace's nonce, then the agent's.
pub fn handoff_transcript(client: &Nonce, server: &Nonce) -> Vec<u8> {
    let mut t = Vec::with_capacity(24 + 2 * NONCE_LEN);
    t.extend_from_slice(b"sctrace/2 handoff\0");
    t.extend_from_slice(&client.0);
    t.extend_from_slice(&server.0);
    t
}

/// Why the handoff channel's exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoffAuthError {
    /// The channel failed (or closed) during the exchange.
    #[error("the handoff channel failed during authentication")]
    Io(#[source] io::Error),
    /// No random bytes for our nonce.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The agent's proof did not verify (sctrace's side).
    #[error("the agent at the other end of the handoff channel did not prove that it holds the session token")]
    AgentNotAuthenticated,
    /// sctrace's proof did not verify (the agent's side).
    #[error("the handoff client did not prove that it holds the session token")]
    ClientNotAuthenticated,
}

/// sctrace's side of the handoff channel's exchange, over a blocking stream:
///
/// ```text
///  sctrace → agent   client nonce (32 bytes)
///  agent → sctrace   agent nonce (32) ‖ agent proof (32)   [Proof::HandoffAgent]
///  sctrace → agent   client proof (32)                     [Proof::HandoffClient, over the
///                                                           transcript and the agent proof]
///  agent → sctrace   1 (accepted)
/// ```
///
/// sctrace sends its proof only once the agent proved itself.
pub fn handoff_client<S: Read + Write>(
    conn: &mut S,
    token: &Token,
) -> Result<(), HandoffAuthError> {
    let client = Nonce::random()?;
    conn.write_all(&client.0).map_err(HandoffAuthError::Io)?;
    let mut answer = [0u8; NONCE_LEN + PROOF_LEN];
    conn.read_exact(&mut answer).map_err(HandoffAuthError::Io)?;
    let (server, agent_proof) = answer.split_at(NONCE_LEN);
    let server = Nonce::from_slice(server).ok_or(HandoffAuthError::AgentNotAuthenticated)?;
    let mut transcript = handoff_transcript(&client, &server);
    if !token.verify(Proof::HandoffAgent, &transcript, agent_proof) {
        return Err(HandoffAuthError::AgentNotAuthenticated);
    }
    transcript.extend_from_slice(agent_proof);
    conn.write_all(&token.prove(Proof::HandoffClient, &transcript))
        .map_err(HandoffAuthError::Io)?;
    let mut accepted = [0u8; 1];
    conn.read_exact(&mut accepted)
        .map_err(HandoffAuthError::Io)?;
    Ok(())
}

/// The agent's side of [`handoff_client`]'s exchange.
pub fn handoff_agent<S: Read + Write>(conn: &mut S, token: &Token) -> Result<(), HandoffAuthError> {
    let mut client = [0u8; NONCE_LEN];
    conn.read_exact(&mut client).map_err(HandoffAuthError::Io)?;
    let client = Nonce(client);
    let server = Nonce::random()?;
    let mut transcript = handoff_transcript(&client, &server);
    let proof = token.prove(Proof::HandoffAgent, &transcript);
    let mut answer = [0u8; NONCE_LEN + PROOF_LEN];
    answer[..NONCE_LEN].copy_from_slice(&server.0);
    answer[NONCE_LEN..].copy_from_slice(&proof);
    conn.write_all(&answer).map_err(HandoffAuthError::Io)?;
    let mut presented = [0u8; PROOF_LEN];
    conn.read_exact(&mut presented)
        .map_err(HandoffAuthError::Io)?;
    transcript.extend_from_slice(&proof);
    if !token.verify(Proof::HandoffClient, &transcript, &presented) {
        return Err(HandoffAuthError::ClientNotAuthenticated);
    }
    conn.write_all(&[1]).map_err(HandoffAuthError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> Token {
        Token::new(text.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn proofs_are_bound_to_token_purpose_and_transcript() {
        let t = token("secret");
        let a = Nonce([1; NONCE_LEN]);
        let b = Nonce([2; NONCE_LEN]);
        let transcript = session_transcript(2, 2, 65536, &a, &b);
        let proof = t.prove(Proof::Agent, &transcript);
        assert!(t.verify(Proof::Agent, &transcript, &proof));
        // Another purpose, another exchange, another token, a cut proof: all refused.
        assert!(!t.verify(Proof::Client, &transcript, &proof));
        assert!(!t.verify(Proof::HandoffAgent, &transcript, &proof));
        let other = session_transcript(2, 2, 65536, &b, &a);
        assert!(!t.verify(Proof::Agent, &other, &proof));
        assert!(!token("secreT").verify(Proof::Agent, &transcript, &proof));
        assert!(!t.verify(Proof::Agent, &transcript, &proof[..31]));
        // A proof does not contain the token.
        assert!(!proof.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn handoff_exchange_both_ways() {
        use std::os::unix::net::UnixStream;
        let run = |client_token: Token, agent_token: Token| {
            let (mut a, mut b) = UnixStream::pair().unwrap();
            // A mistake here must fail the test, not hang it.
            a.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let agent = std::thread::spawn(move || {
                let r = handoff_agent(&mut b, &agent_token);
                drop(b);
                r
            });
            let client = handoff_client(&mut a, &client_token);
            drop(a);
            (client, agent.join().unwrap())
        };
        let (client, agent) = run(token("secret"), token("secret"));
        assert!(client.is_ok() && agent.is_ok(), "{client:?} {agent:?}");
        // sctrace stops at the agent's proof: the agent sees the channel close.
        let (client, agent) = run(token("secret"), token("other"));
        assert!(matches!(
            client,
            Err(HandoffAuthError::AgentNotAuthenticated)
        ));
        assert!(matches!(agent, Err(HandoffAuthError::Io(_))));
    }

    #[test]
    fn a_handoff_client_without_the_token_is_refused() {
        use std::os::unix::net::UnixStream;
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let agent = std::thread::spawn(move || handoff_agent(&mut b, &token("secret")));
        a.write_all(&[3; NONCE_LEN]).unwrap();
        let mut answer = [0u8; NONCE_LEN + PROOF_LEN];
        a.read_exact(&mut answer).unwrap();
        // A proof made with another token (or replayed from another exchange).
        a.write_all(&[9; PROOF_LEN]).unwrap();
        assert!(matches!(
            agent.join().unwrap(),
            Err(HandoffAuthError::ClientNotAuthenticated)
        ));
    }

    #[test]
    fn nonces_are_fresh() {
        let a = Nonce::random().unwrap();
        let b = Nonce::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(Nonce::from_slice(&a.0), Some(a));
        assert_eq!(Nonce::from_slice(&a.0[1..]), None);
        assert_eq!(
            format!("{:?}", Nonce([0xab; NONCE_LEN])),
            "Nonce(abababab…)"
        );
    }
}
