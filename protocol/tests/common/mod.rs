//! Playing one side of a session by hand, with raw frames: what the tests of misbehaving
//! peers need.
#![allow(dead_code)] // Each test file uses its own subset.

use bytes::{Bytes, BytesMut};
use sctrace_protocol::auth::{session_transcript, Nonce, Proof};
use sctrace_protocol::{decode, Frame, Token, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub async fn read_one_frame<T: AsyncRead + Unpin>(io: &mut T, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(f) = decode(buf).unwrap() {
            return Some(f);
        }
        if io.read_buf(buf).await.unwrap() == 0 {
            return None;
        }
    }
}

pub async fn send_frame<T: AsyncWrite + Unpin>(io: &mut T, frame: Frame) {
    let mut b = BytesMut::new();
    frame.encode(&mut b).unwrap();
    io.write_all(&b).await.unwrap();
}

/// The agent's side of the handshake, up to (not including) the `Welcome`: answers the
/// client's `Hello` with a challenge proving `token` and checks the client's proof.
pub async fn challenge_by_hand<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    token: &Token,
) {
    let Some(Frame::Hello {
        min_version,
        max_version,
        stream_window,
        token: nonce,
    }) = read_one_frame(io, buf).await
    else {
        panic!("expected Hello");
    };
    let client = Nonce::from_slice(&nonce).expect("a nonce in Hello");
    let server = Nonce::random().unwrap();
    let mut transcript =
        session_transcript(min_version, max_version, stream_window, &client, &server);
    let proof = token.prove(Proof::Agent, &transcript);
    send_frame(
        io,
        Frame::AuthChallenge {
            nonce: server.0,
            proof,
        },
    )
    .await;
    let Some(Frame::AuthProof {
        proof: client_proof,
    }) = read_one_frame(io, buf).await
    else {
        panic!("expected AuthProof");
    };
    transcript.extend_from_slice(&proof);
    assert!(token.verify(Proof::Client, &transcript, &client_proof));
}

/// The agent's side of a whole handshake: [`challenge_by_hand`], then `Welcome`.
pub async fn accept_by_hand<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    token: &Token,
) {
    challenge_by_hand(io, buf, token).await;
    send_frame(
        io,
        Frame::Welcome {
            version: PROTOCOL_VERSION,
            stream_window: 65536,
        },
    )
    .await;
}

/// The client's side of the handshake: `Hello`, the agent's proof checked, our proof; returns
/// the server's answer (`Welcome` or `Refused`).
pub async fn connect_by_hand<T: AsyncRead + AsyncWrite + Unpin>(
    io: &mut T,
    buf: &mut BytesMut,
    token: &Token,
) -> Option<Frame> {
    let client = Nonce::random().unwrap();
    send_frame(
        io,
        Frame::Hello {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            stream_window: 65536,
            token: Bytes::copy_from_slice(&client.0),
        },
    )
    .await;
    let Some(Frame::AuthChallenge { nonce, proof }) = read_one_frame(io, buf).await else {
        panic!("expected AuthChallenge");
    };
    let mut transcript = session_transcript(
        PROTOCOL_VERSION,
        PROTOCOL_VERSION,
        65536,
        &client,
        &Nonce(nonce),
    );
    assert!(token.verify(Proof::Agent, &transcript, &proof));
    transcript.extend_from_slice(&proof);
    send_frame(
        io,
        Frame::AuthProof {
            proof: token.prove(Proof::Client, &transcript),
        },
    )
    .await;
    read_one_frame(io, buf).await
}
