//! The handshake: the client's `Hello` (versions, window, token) answered by the server's
//! `Welcome` or `Refused`. Both frames' layouts are frozen across protocol versions.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::decode::{decode, decode_eof, DecodeError};
use crate::frame::{Frame, RefuseReason};
use crate::session::{
    Config, Io, MAX_STREAM_WINDOW, MIN_PROTOCOL_VERSION, MIN_STREAM_WINDOW, PROTOCOL_VERSION,
};
use crate::token::Token;

/// Why a session could not be established.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer (the agent) refused this session.
    #[error("the agent refused the session ({reason}): {message}")]
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
    /// The peer did not complete the handshake in time.
    #[error("no handshake from the peer within {0:?}")]
    Timeout(Duration),
    /// The connection closed before the handshake completed.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The peer's bytes are not a valid handshake frame.
    #[error("the peer's handshake is malformed")]
    Decode(#[source] DecodeError),
    /// The peer sent a valid frame that does not belong in the handshake.
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
    /// Reading or writing the connection failed.
    #[error("connection error during the handshake")]
    Io(#[source] io::Error),
}

/// What the handshake settled.
pub(crate) struct Agreed {
    pub version: u16,
    pub peer_window: u32,
    /// Bytes read past the handshake frame (frames the peer sent right after it).
    pub leftover: BytesMut,
}

pub(crate) async fn client<T: Io>(
    io: &mut T,
    token: &Token,
    config: &Config,
) -> Result<Agreed, HandshakeError> {
    let hello = Frame::Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        stream_window: config.window(),
        token: token.bytes().clone(),
    };
    let limit = config.handshake_timeout;
    let exchange = async {
        send(io, &hello).await?;
        let mut buf = BytesMut::new();
        let frame = read_frame(io, &mut buf).await?;
        Ok::<_, HandshakeError>((frame, buf))
    };
    let (frame, leftover) = tokio::time::timeout(limit, exchange)
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
    let (frame, leftover) = tokio::time::timeout(limit, async {
        let mut buf = BytesMut::new();
        let frame = read_frame(io, &mut buf).await;
        (frame, buf)
    })
    .await
    .map_err(|_| HandshakeError::Timeout(limit))?;
    let frame = match frame {
        Ok(frame) => frame,
        Err(HandshakeError::Decode(e)) => {
            let detail = format!("not an sctrace handshake: {e}");
            refuse_now(io, RefuseReason::BadHandshake, &detail).await;
            return Err(HandshakeError::Decode(e));
        }
        Err(e) => return Err(e),
    };
    let Frame::Hello {
        min_version,
        max_version,
        stream_window,
        token: presented,
    } = frame
    else {
        let detail = format!("expected Hello, got {}", frame.name());
        refuse_now(io, RefuseReason::BadHandshake, &detail).await;
        return Err(HandshakeError::Unexpected {
            frame: frame.name(),
        });
    };
    let refusal = if !token.matches(&presented) {
        Some((RefuseReason::BadToken, "bad session token".to_string()))
    } else if max_version < MIN_PROTOCOL_VERSION || min_version > PROTOCOL_VERSION {
        Some((
            RefuseReason::UnsupportedVersion,
            format!(
                "the agent speaks protocol versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}, \
                 the client {min_version}..={max_version}; use matching sctrace and \
                 sctrace-agent builds"
            ),
        ))
    } else if !(MIN_STREAM_WINDOW..=MAX_STREAM_WINDOW).contains(&stream_window) {
        Some((
            RefuseReason::BadHandshake,
            format!("unusable stream window of {stream_window} bytes"),
        ))
    } else {
        None
    };
    if let Some((reason, detail)) = refusal {
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
        leftover,
    })
}

/// Refuses a client without checking its token (e.g. the agent is busy with its one session):
/// waits for the client's first frame, so that closing does not reset the connection before
/// the client read the refusal, then answers `Refused`.
pub async fn refuse<T: Io>(mut io: T, reason: RefuseReason, message: &str, config: &Config) {
    let mut buf = BytesMut::new();
    let _ = tokio::time::timeout(config.handshake_timeout, read_frame(&mut io, &mut buf)).await;
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

/// Reads until one whole frame is buffered. The decoder bounds what is buffered: a header
/// announcing more than a handshake frame may hold is rejected before its payload is read.
async fn read_frame<T: Io>(io: &mut T, buf: &mut BytesMut) -> Result<Frame, HandshakeError> {
    loop {
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
