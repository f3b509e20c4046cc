//! The handshake. Its first frame (`Hello`) and last (`Welcome` or `Refused`) have layouts
//! frozen across protocol versions; version 2 authenticates both sides in between, without
//! the token ever going on the wire (see [`crate::auth`]):
//!
//! ```text
//!  client                                          server
//!  Hello { versions, window, client nonce }  ──▶
//!                                            ◀──  AuthChallenge { server nonce, agent proof }
//!                                                 (or Refused: versions, window, malformed)
//!  checks the agent proof; if it is wrong,
//!  closes having sent nothing but its Hello
//!  AuthProof { client proof }                ──▶
//!                                            ◀──  Welcome { version, window }
//!                                                 (or Refused: BadToken)
//! ```
//!
//! Until the handshake is over each side accepts only the frame types that may come next,
//! each no larger than that frame can be: a peer that has not authenticated can make us
//! buffer a few kilobytes at most.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::{session_transcript, Nonce, Proof, RandomError, NONCE_LEN, PROOF_LEN};
use crate::data::DataKeys;
use crate::decode::{decode, decode_eof, frame_name, DecodeError};
use crate::frame::{kind, Frame, RefuseReason, HEADER_LEN, MAX_MESSAGE_LEN, MAX_TOKEN_LEN};
use crate::session::{
    Config, Io, DATA_CONNECTIONS_VERSION, MAX_STREAM_WINDOW, MIN_PROTOCOL_VERSION,
    MIN_STREAM_WINDOW, PROTOCOL_VERSION,
};
use crate::text::PeerText;
use crate::token::Token;

/// Why a session could not be established.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer (the agent) refused this session.
    #[error("the agent refused the session ({reason}): {}", PeerText(message))]
    RefusedByPeer {
        /// The refusal code.
        reason: RefuseReason,
        /// The peer's explanation.
        message: String,
    },
    /// We refused the peer (and told it why).
    #[error("refused the session ({reason}): {detail}")]
    RefusedPeer {
        /// The refusal code sent.
        reason: RefuseReason,
        /// The explanation sent.
        detail: String,
    },
    /// The agent answered the client's `Hello` with a proof that does not verify: it does not
    /// hold the token (another agent, or something else answering at that address), or it
    /// replayed an old exchange. The client sent it nothing after its `Hello`.
    #[error("the agent did not prove that it holds the session token (a different agent, or something other than an agent, answers there); nothing was sent to it")]
    AgentNotAuthenticated,
    /// The agent refused the token before authenticating: it speaks a version older than 2,
    /// which expected the token itself in `Hello`.
    #[error("the agent refused the session without authenticating it ({}): it speaks a protocol version older than 2; use matching sctrace and sctrace-agent builds", PeerText(message))]
    PeerPredatesAuth {
        /// The peer's explanation.
        message: String,
    },
    /// The client closed the connection on the agent's proof: it holds another token (or
    /// is not sctrace, or the proof was altered on the way).
    #[error("the client left on seeing this agent's proof: its session token differs")]
    ClientRejectedProof,
    /// The peer did not complete the handshake in time.
    #[error("no handshake from the peer within {0:?}")]
    Timeout(Duration),
    /// The connection closed before the handshake completed.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The peer's bytes are not a valid handshake frame (or announce one larger than the
    /// handshake allows).
    #[error("the peer's handshake is malformed")]
    Decode(#[source] DecodeError),
    /// The peer sent a frame that does not belong at this point of the handshake.
    #[error("the peer sent {frame} where a handshake frame was expected")]
    Unexpected {
        /// The frame received.
        frame: &'static str,
    },
    /// The server picked a version or window we cannot accept.
    #[error("the agent answered with {what}")]
    BadWelcome {
        /// What was wrong.
        what: String,
    },
    /// No random bytes for our nonce.
    #[error("cannot make the handshake's nonce")]
    Random(#[source] RandomError),
    /// Reading or writing the connection failed.
    #[error("connection error during the handshake")]
    Io(#[source] io::Error),
}

/// What the handshake settled.
pub(crate) struct Agreed {
    pub version: u16,
    pub peer_window: u32,
    /// The keys of the session's data connections (version 3 on).
    pub data_keys: Option<DataKeys>,
    /// Bytes read past the handshake frame (frames the peer sent right after it).
    pub leftover: BytesMut,
}

pub(crate) async fn client<T: Io>(
    io: &mut T,
    token: &Token,
    config: &Config,
) -> Result<Agreed, HandshakeError> {
    let nonce = Nonce::random().map_err(HandshakeError::Random)?;
    let window = config.window();
    let hello = Frame::Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        stream_window: window,
        // Version 2: the field that carried the token carries the client's nonce.
        token: Bytes::copy_from_slice(&nonce.0),
    };
    let limit = config.handshake_timeout;
    let exchange = async {
        send(io, &hello).await?;
        let mut buf = BytesMut::new();
        let challenge = read_frame(io, &mut buf, &[kind::AUTH_CHALLENGE, kind::REFUSED]).await?;
        let (server_nonce, agent_proof) = match challenge {
            Frame::AuthChallenge { nonce, proof } => (Nonce(nonce), proof),
            // A version 2 server refuses a token only after the client's proof: this one
            // looked for the token in the Hello.
            Frame::Refused {
                reason: RefuseReason::BadToken,
                message,
            } => return Err(HandshakeError::PeerPredatesAuth { message }),
            Frame::Refused { reason, message } => {
                return Err(HandshakeError::RefusedByPeer { reason, message })
            }
            other => {
                return Err(HandshakeError::Unexpected {
                    frame: other.name(),
                })
            }
        };
        let mut transcript = session_transcript(
            MIN_PROTOCOL_VERSION,
            PROTOCOL_VERSION,
            window,
            &nonce,
            &server_nonce,
        );
        if !token.verify(Proof::Agent, &transcript, &agent_proof) {
            // Nothing more for a peer that could not prove itself.
            let _ = io.shutdown().await;
            return Err(HandshakeError::AgentNotAuthenticated);
        }
        transcript.extend_from_slice(&agent_proof);
        let client_proof = token.prove(Proof::Client, &transcript);
        let keys = DataKeys::derive(token, &transcript, &client_proof);
        send(
            io,
            &Frame::AuthProof {
                proof: client_proof,
            },
        )
        .await?;
        let frame = read_frame(io, &mut buf, &[kind::WELCOME, kind::REFUSED]).await?;
        Ok::<_, HandshakeError>((frame, buf, keys))
    };
    let (frame, leftover, keys) = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| HandshakeError::Timeout(limit))??;
    match frame {
        Frame::Welcome {
            version,
            stream_window,
        } => {
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                return Err(HandshakeError::BadWelcome {
                    what: format!(
                        "protocol version {version}, but we offered \
                         {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
                    ),
                });
            }
            if !(MIN_STREAM_WINDOW..=MAX_STREAM_WINDOW).contains(&stream_window) {
                return Err(HandshakeError::BadWelcome {
                    what: format!("an unusable stream window of {stream_window} bytes"),
                });
            }
            Ok(Agreed {
                version,
                peer_window: stream_window,
                data_keys: (version >= DATA_CONNECTIONS_VERSION).then_some(keys),
                leftover,
            })
        }
        Frame::Refused { reason, message } => {
            Err(HandshakeError::RefusedByPeer { reason, message })
        }
        other => Err(HandshakeError::Unexpected {
            frame: other.name(),
        }),
    }
}

pub(crate) async fn server<T: Io>(
    io: &mut T,
    token: &Token,
    config: &Config,
) -> Result<Agreed, HandshakeError> {
    let limit = config.handshake_timeout;
    tokio::time::timeout(limit, server_exchange(io, token, config))
        .await
        .map_err(|_| HandshakeError::Timeout(limit))?
}

async fn server_exchange<T: Io>(
    io: &mut T,
    token: &Token,
    config: &Config,
) -> Result<Agreed, HandshakeError> {
    let mut buf = BytesMut::new();
    let frame = read_or_refuse(io, &mut buf, kind::HELLO).await?;
    let Frame::Hello {
        min_version,
        max_version,
        stream_window,
        token: client_nonce,
    } = frame
    else {
        return Err(HandshakeError::Unexpected {
            frame: frame.name(),
        });
    };
    let client_nonce = match check_hello(min_version, max_version, stream_window, &client_nonce) {
        Ok(nonce) => nonce,
        Err((reason, detail)) => {
            refuse_now(io, reason, &detail).await;
            return Err(HandshakeError::RefusedPeer { reason, detail });
        }
    };
    let server_nonce = Nonce::random().map_err(HandshakeError::Random)?;
    let mut transcript = session_transcript(
        min_version,
        max_version,
        stream_window,
        &client_nonce,
        &server_nonce,
    );
    let agent_proof = token.prove(Proof::Agent, &transcript);
    let challenge = Frame::AuthChallenge {
        nonce: server_nonce.0,
        proof: agent_proof,
    };
    send(io, &challenge).await?;
    let frame = match read_or_refuse(io, &mut buf, kind::AUTH_PROOF).await {
        Err(HandshakeError::Closed) => return Err(HandshakeError::ClientRejectedProof),
        other => other?,
    };
    let Frame::AuthProof { proof } = frame else {
        return Err(HandshakeError::Unexpected {
            frame: frame.name(),
        });
    };
    transcript.extend_from_slice(&agent_proof);
    if !token.verify(Proof::Client, &transcript, &proof) {
        let reason = RefuseReason::BadToken;
        let detail = "the client did not prove that it holds the session token".to_owned();
        refuse_now(io, reason, &detail).await;
        return Err(HandshakeError::RefusedPeer { reason, detail });
    }
    let version = max_version.min(PROTOCOL_VERSION);
    send(
        io,
        &Frame::Welcome {
            version,
            stream_window: config.window(),
        },
    )
    .await?;
    Ok(Agreed {
        version,
        peer_window: stream_window,
        data_keys: (version >= DATA_CONNECTIONS_VERSION)
            .then(|| DataKeys::derive(token, &transcript, &proof)),
        leftover: buf,
    })
}

/// The client's nonce, if its `Hello` offers what this server can accept; else the refusal.
fn check_hello(
    min_version: u16,
    max_version: u16,
    stream_window: u32,
    nonce: &[u8],
) -> Result<Nonce, (RefuseReason, String)> {
    // The versions first, so that a version 1 client (whose Hello holds its token) is told
    // what is wrong: the versions.
    if max_version < MIN_PROTOCOL_VERSION || min_version > PROTOCOL_VERSION {
        return Err((
            RefuseReason::UnsupportedVersion,
            format!(
                "the agent speaks protocol versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}, \
                 the client {min_version}..={max_version}; use matching sctrace and \
                 sctrace-agent builds"
            ),
        ));
    }
    if !(MIN_STREAM_WINDOW..=MAX_STREAM_WINDOW).contains(&stream_window) {
        return Err((
            RefuseReason::BadHandshake,
            format!("unusable stream window of {stream_window} bytes"),
        ));
    }
    Nonce::from_slice(nonce).ok_or_else(|| {
        (
            RefuseReason::BadHandshake,
            format!("the Hello does not carry a {NONCE_LEN}-byte nonce"),
        )
    })
}

/// Reads the client's next handshake frame, which must be of type `expected`; anything else
/// is refused as `BadHandshake` (telling the client why) before it is returned as an error.
async fn read_or_refuse<T: Io>(
    io: &mut T,
    buf: &mut BytesMut,
    expected: u8,
) -> Result<Frame, HandshakeError> {
    match read_frame(io, buf, &[expected]).await {
        Ok(frame) => Ok(frame),
        Err(e @ (HandshakeError::Decode(_) | HandshakeError::Unexpected { .. })) => {
            let detail = match &e {
                HandshakeError::Decode(cause) => format!("not an sctrace handshake: {cause}"),
                other => other.to_string(),
            };
            refuse_now(io, RefuseReason::BadHandshake, &detail).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Refuses a client without checking its token (e.g. the agent is busy with its one session):
/// waits for the client's first frame, so that closing does not reset the connection before
/// the client read the refusal, then answers `Refused`.
pub async fn refuse<T: Io>(mut io: T, reason: RefuseReason, message: &str, config: &Config) {
    let mut buf = BytesMut::new();
    let _ = tokio::time::timeout(
        config.handshake_timeout,
        read_frame(&mut io, &mut buf, &[kind::HELLO]),
    )
    .await;
    refuse_now(&mut io, reason, message).await;
}

async fn refuse_now<T: Io>(io: &mut T, reason: RefuseReason, message: &str) {
    let frame = Frame::Refused {
        reason,
        message: message.to_string(),
    };
    // Best effort: the peer may already be gone.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = send(io, &frame).await;
        let _ = io.shutdown().await;
    })
    .await;
}

async fn send<T: Io>(io: &mut T, frame: &Frame) -> Result<(), HandshakeError> {
    let mut buf = BytesMut::new();
    frame
        .encode(&mut buf)
        .map_err(|e| HandshakeError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    io.write_all(&buf).await.map_err(HandshakeError::Io)?;
    io.flush().await.map_err(HandshakeError::Io)
}

/// Reads until one whole frame of one of the `allowed` types is buffered. A header of
/// another type, or announcing more than that frame may hold in the handshake, is rejected
/// before its payload is waited for.
async fn read_frame<T: Io>(
    io: &mut T,
    buf: &mut BytesMut,
    allowed: &[u8],
) -> Result<Frame, HandshakeError> {
    loop {
        check_header(buf, allowed)?;
        if let Some(frame) = decode(buf).map_err(HandshakeError::Decode)? {
            return Ok(frame);
        }
        buf.reserve(4096);
        let n = io.read_buf(buf).await.map_err(HandshakeError::Io)?;
        if n == 0 {
            return match decode_eof(buf) {
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => Err(HandshakeError::Closed),
                Err(DecodeError::Truncated { .. }) => Err(HandshakeError::Closed),
                Err(e) => Err(HandshakeError::Decode(e)),
            };
        }
    }
}

fn check_header(buf: &[u8], allowed: &[u8]) -> Result<(), HandshakeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(());
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let kind = header[4];
    if !allowed.contains(&kind) {
        return Err(match frame_name(kind) {
            Some(frame) => HandshakeError::Unexpected { frame },
            None => HandshakeError::Decode(DecodeError::UnknownType { kind }),
        });
    }
    let max = handshake_limit(kind);
    if len as usize > max {
        return Err(HandshakeError::Decode(DecodeError::Oversized {
            kind,
            len,
            max,
        }));
    }
    Ok(())
}

/// The largest payload a handshake frame of type `kind` may have.
fn handshake_limit(kind: u8) -> usize {
    match kind {
        // Versions, window and nonce; a version 1 client's token (up to 1024 bytes) is still
        // read, to refuse it by its versions.
        kind::HELLO => 12 + MAX_TOKEN_LEN,
        kind::WELCOME => 10,
        kind::REFUSED => 5 + MAX_MESSAGE_LEN,
        kind::AUTH_CHALLENGE => NONCE_LEN + PROOF_LEN,
        kind::AUTH_PROOF => PROOF_LEN,
        _ => 0,
    }
}
