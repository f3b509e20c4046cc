//! Data connections (see `sctrace_protocol::data`): on a plain TCP listener, a connection
//! that opens with the data preamble carries one stream's bytes of a session established
//! there. Checked against the session's keys, answered with the agent's proof, then given to
//! the connect request waiting for it, which splices it to the target's socket.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sctrace_protocol::data::{DataKeys, Preamble, PREAMBLE_LEN, SESSION_ID_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::rendezvous::Rendezvous;

/// How long a data connection may take to send its preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Data connections waiting for their preamble at once, from all peers; more are closed.
const MAX_PENDING: usize = 256;

/// The sessions that accept data connections, by session id.
pub struct DataSessions {
    sessions: Mutex<HashMap<[u8; SESSION_ID_LEN], Arc<Attachable>>>,
    pending: Arc<tokio::sync::Semaphore>,
}

impl Default for DataSessions {
    fn default() -> Self {
        DataSessions {
            sessions: Mutex::default(),
            pending: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING)),
        }
    }
}

/// One session's side: its keys, the sockets for its streams, the streams attached so far.
pub struct Attachable {
    keys: DataKeys,
    sockets: Arc<Rendezvous>,
    attached: Mutex<HashSet<u32>>,
}

impl Attachable {
    /// The data connections of this session, by stream id.
    pub fn sockets(&self) -> Arc<Rendezvous> {
        Arc::clone(&self.sockets)
    }
}

/// A session's registration; removed when dropped (the session ended).
pub struct Registration {
    sessions: Arc<DataSessions>,
    id: [u8; SESSION_ID_LEN],
    /// The session's side.
    pub attachable: Arc<Attachable>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut sessions) = self.sessions.sessions.lock() {
            sessions.remove(&self.id);
        }
    }
}

/// Registers a session with these keys.
pub fn register(sessions: &Arc<DataSessions>, keys: DataKeys) -> Option<Registration> {
    let id = keys.session_id();
    let attachable = Arc::new(Attachable {
        keys,
        sockets: Arc::default(),
        attached: Mutex::default(),
    });
    sessions
        .sessions
        .lock()
        .ok()?
        .insert(id, Arc::clone(&attachable));
    Some(Registration {
        sessions: Arc::clone(sessions),
        id,
        attachable,
    })
}

/// Why a data connection was closed unused.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// No complete preamble in time.
    #[error("no data-connection preamble within {0:?}")]
    Timeout(Duration),
    /// Reading or writing it failed.
    #[error("data connection failed")]
    Io(#[source] std::io::Error),
    /// Not a preamble, or it names no session established here.
    #[error("the preamble names no session of this agent")]
    UnknownSession,
    /// The proof does not verify for the session and stream it names.
    #[error("the preamble's proof does not verify")]
    BadProof,
    /// The stream was attached before (a replay).
    #[error("stream {0} was attached already")]
    Replayed(u32),
    /// Too many data connections are waiting for their preamble.
    #[error("too many data connections waiting for their preamble")]
    Busy,
}

/// Serves a connection that opened with the data magic: reads and checks its preamble,
/// answers, and hands the connection to its stream. Any failure closes it having answered
/// nothing.
pub async fn serve(mut conn: TcpStream, sessions: &DataSessions) -> Result<u32, DataError> {
    let _pending = sessions
        .pending
        .clone()
        .try_acquire_owned()
        .map_err(|_| DataError::Busy)?;
    let mut bytes = [0u8; PREAMBLE_LEN];
    tokio::time::timeout(PREAMBLE_TIMEOUT, conn.read_exact(&mut bytes))
        .await
        .map_err(|_| DataError::Timeout(PREAMBLE_TIMEOUT))?
        .map_err(DataError::Io)?;
    let preamble = Preamble::parse(&bytes).ok_or(DataError::UnknownSession)?;
    let session = sessions
        .sessions
        .lock()
        .ok()
        .and_then(|s| s.get(&preamble.session).cloned())
        .ok_or(DataError::UnknownSession)?;
    if !session.keys.verify_preamble(&preamble) {
        return Err(DataError::BadProof);
    }
    let stream = preamble.stream;
    let fresh = session
        .attached
        .lock()
        .map(|mut seen| seen.insert(stream))
        .unwrap_or(false);
    if !fresh {
        return Err(DataError::Replayed(stream));
    }
    conn.write_all(&session.keys.answer(stream))
        .await
        .map_err(DataError::Io)?;
    let _ = conn.set_nodelay(true);
    let std = conn.into_std().map_err(DataError::Io)?;
    session.sockets.deliver(stream, std.into());
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sctrace_protocol::data::ANSWER_LEN;
    use tokio::net::TcpListener;

    /// Two sessions' keys (made by a real handshake over an in-memory pipe).
    async fn keys() -> (DataKeys, DataKeys) {
        let token = sctrace_protocol::Token::new("data-test-token-0123456789").unwrap();
        let mut out = Vec::new();
        for _ in 0..2 {
            let (a, b) = tokio::io::duplex(1 << 16);
            let config = sctrace_protocol::Config::default();
            let (client, server) = tokio::join!(
                sctrace_protocol::Session::client(a, &token, config.clone()),
                sctrace_protocol::Session::server(b, &token, config)
            );
            let (client, server) = (client.unwrap(), server.unwrap());
            let (c, s) = (
                *client.handle.data_keys().unwrap(),
                *server.handle.data_keys().unwrap(),
            );
            assert_eq!(c.session_id(), s.session_id(), "both sides derive the same");
            out.push(c);
        }
        (out[0], out[1])
    }

    /// Sends `preamble` to a data listener; returns what `serve` said and the bytes answered.
    async fn attach(
        sessions: &Arc<DataSessions>,
        preamble: [u8; PREAMBLE_LEN],
    ) -> (Result<u32, DataError>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(&preamble).await.unwrap();
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                (&mut c).take(ANSWER_LEN as u64).read_to_end(&mut answer),
            )
            .await;
            answer
        });
        let (conn, _) = listener.accept().await.unwrap();
        let served = serve(conn, sessions).await;
        (served, client.await.unwrap())
    }

    #[tokio::test]
    async fn a_proved_preamble_attaches_its_stream_once() {
        let (keys, other) = keys().await;
        let sessions = Arc::new(DataSessions::default());
        let registration = register(&sessions, keys).unwrap();
        let (served, answer) = attach(&sessions, keys.preamble(3)).await;
        assert_eq!(served.unwrap(), 3);
        assert!(keys.verify_answer(3, &answer));
        assert!(registration.attachable.sockets().take(3).await.is_some());

        // The same preamble again (a replay): closed unanswered.
        let (served, answer) = attach(&sessions, keys.preamble(3)).await;
        assert!(matches!(served, Err(DataError::Replayed(3))), "{served:?}");
        assert!(answer.is_empty());
        // Another session's preamble: unknown here.
        let (served, answer) = attach(&sessions, other.preamble(4)).await;
        assert!(
            matches!(served, Err(DataError::UnknownSession)),
            "{served:?}"
        );
        assert!(answer.is_empty());
        // A bent proof.
        let mut bent = keys.preamble(5);
        bent[PREAMBLE_LEN - 1] ^= 0x80;
        let (served, answer) = attach(&sessions, bent).await;
        assert!(matches!(served, Err(DataError::BadProof)), "{served:?}");
        assert!(answer.is_empty());
        // The session ended: its id is unknown.
        drop(registration);
        let (served, _) = attach(&sessions, keys.preamble(6)).await;
        assert!(
            matches!(served, Err(DataError::UnknownSession)),
            "{served:?}"
        );
    }
}
