//! Data connections to an agent reached over plain TCP (protocol version 3, see
//! `sctrace_protocol::data`): where they go, and the ones sctrace makes itself. (Most are
//! made on the app's own socket instead, see `execute::attach`.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sctrace_protocol::data::{DataKeys, ANSWER_LEN};
use sctrace_protocol::StreamId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long making a data connection (connect, preamble, the agent's answer) may take.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// Data connections one session makes at once; the others wait (their app calls are held
/// meanwhile). Each takes one round trip to the agent; few at once keep clear of the agent's
/// bound on connections that have not yet said what they are (8 per peer address).
const IN_FLIGHT: usize = 4;

/// Where and how a stream's data connection is made: to the address the session reached,
/// with its keys.
#[derive(Debug, Clone)]
pub struct DataRoute {
    /// The agent's address, as the session's connection reached it.
    pub agent: SocketAddr,
    /// The session's keys.
    pub keys: DataKeys,
    /// Bounds the data connections being made at once.
    in_flight: Arc<Semaphore>,
}

/// Whether streams may get data connections (`SCTRACE_DATA_CONNECTIONS=0` keeps every
/// stream's bytes on the session, to compare or to work around a problem).
pub fn wanted() -> bool {
    std::env::var_os("SCTRACE_DATA_CONNECTIONS").is_none_or(|v| v != "0")
}

impl DataRoute {
    /// The route of a session that reached the agent at `agent`, with these keys.
    pub fn new(agent: SocketAddr, keys: DataKeys) -> DataRoute {
        DataRoute {
            agent,
            keys,
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Waits for a turn to make a data connection; the turn lasts as long as the permit.
    pub async fn turn(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).acquire_owned().await.ok()
    }

    /// A data connection of sctrace's own for `stream`: connected, proved and answered.
    pub async fn open(&self, stream: StreamId) -> std::io::Result<TcpStream> {
        let opening = async {
            let _turn = self.turn().await;
            let mut conn = TcpStream::connect(self.agent).await?;
            conn.set_nodelay(true)?;
            conn.write_all(&self.keys.preamble(stream)).await?;
            let mut answer = [0u8; ANSWER_LEN];
            conn.read_exact(&mut answer).await?;
            if !self.keys.verify_answer(stream, &answer) {
                return Err(std::io::Error::other(
                    "the agent answered a data connection without its proof",
                ));
            }
            Ok(conn)
        };
        tokio::time::timeout(ATTACH_TIMEOUT, opening)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }
}
