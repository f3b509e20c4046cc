//! The session's background task: a reader that decodes the peer's frames into the shared
//! state, the writer task (see [`crate::session::writer`]), and the keepalive timer.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf};
use tokio::sync::mpsc;

use crate::decode::{decode, decode_eof};
use crate::request::Request;
use crate::session::state::{Shared, OUT_HARD_CAP};
use crate::session::writer::write_loop;
use crate::session::{CloseReason, Io};

/// How long the writer may keep flushing (a final `GoAway`) after the session ended.
const FLUSH_GRACE: Duration = Duration::from_secs(2);
/// Room kept free in the read buffer for each read: several maximal `Data` frames per
/// read during bulk transfers.
pub(crate) const READ_CHUNK: usize = 256 * 1024;

pub(crate) type BoxIo = Box<dyn IoObject>;
/// The connection, type-erased so that handles and tasks are not generic.
pub(crate) trait IoObject: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: Io> IoObject for T {}

/// Drives one session: run it (usually with `tokio::spawn(task.run())`) for the session's
/// lifetime. Nothing moves while it is not polled.
pub struct SessionTask {
    io: ReadHalf<BoxIo>,
    shared: Arc<Shared>,
    leftover: BytesMut,
    requests: mpsc::Sender<Request>,
    keepalive_interval: Duration,
    keepalive_timeout: Duration,
}

impl SessionTask {
    pub(crate) fn new(
        io: ReadHalf<BoxIo>,
        shared: Arc<Shared>,
        leftover: BytesMut,
        requests: mpsc::Sender<Request>,
        keepalive_interval: Duration,
        keepalive_timeout: Duration,
    ) -> SessionTask {
        SessionTask {
            io,
            shared,
            leftover,
            requests,
            keepalive_interval,
            keepalive_timeout,
        }
    }

    /// Runs the session until it ends, and returns why. When it returns, every stream and flow
    /// of the session has failed and the connection is closed.
    pub async fn run(self) -> CloseReason {
        let SessionTask {
            io,
            shared,
            leftover,
            requests,
            keepalive_interval,
            keepalive_timeout,
        } = self;
        let rd = io;
        let mut writer = pin!(write_loop(shared.clone()));
        let mut writer_done = false;
        let mut closed_rx = shared.closed_rx();
        let (reason, go_away) = tokio::select! {
            reason = read_loop(shared.clone(), rd, leftover, requests) => {
                let go_away = match &reason {
                    CloseReason::Decode(_) | CloseReason::Violation(_) => Some(reason.to_string()),
                    _ => None,
                };
                (reason, go_away)
            }
            reason = keepalive_loop(shared.clone(), keepalive_interval, keepalive_timeout) => {
                let go_away = Some(reason.to_string());
                (reason, go_away)
            }
            reason = async { closed_rx.wait_for(Option::is_some).await.ok().and_then(|r| r.clone()) } => {
                (reason.unwrap_or(CloseReason::PeerClosed), None)
            }
            result = &mut writer => {
                writer_done = true;
                match result {
                    Ok(()) => (shared.close_reason().unwrap_or(CloseReason::PeerClosed), None),
                    Err(e) => (CloseReason::Io(Arc::new(e)), None),
                }
            }
        };
        shared.close(reason.clone(), go_away);
        if !writer_done {
            let _ = tokio::time::timeout(FLUSH_GRACE, writer).await;
        }
        crate::session::writer::release(&shared);
        shared.close_reason().unwrap_or(reason)
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    mut rd: R,
    mut buf: BytesMut,
    requests: mpsc::Sender<Request>,
) -> CloseReason {
    let mut deliver = Vec::new();
    loop {
        let result = {
            let mut st = shared.lock();
            loop {
                match decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if let Err(reason) = st.on_frame(&shared, frame, &mut deliver) {
                            break Err(reason);
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(CloseReason::Decode(e)),
                }
            }
        };
        for request in deliver.drain(..) {
            match requests.try_send(request) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(request)) => request.refuse_overloaded(),
                Err(mpsc::error::TrySendError::Closed(request)) => request.refuse_unserved(),
            }
        }
        if let Err(reason) = result {
            return reason;
        }
        // Backpressure: a peer that provokes answers without reading them is not read either.
        let closed = poll_fn(|cx| {
            let mut st = shared.lock();
            if st.closed.is_some() {
                return Poll::Ready(true);
            }
            if st.out.len() < OUT_HARD_CAP {
                return Poll::Ready(false);
            }
            crate::session::state::register(&mut st.reader_waker, cx.waker());
            Poll::Pending
        })
        .await;
        if closed {
            return shared.close_reason().unwrap_or(CloseReason::PeerClosed);
        }
        if buf.capacity() - buf.len() < READ_CHUNK {
            buf.reserve(READ_CHUNK);
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => {
                return match decode_eof(&mut buf) {
                    Ok(_) => CloseReason::PeerClosed,
                    Err(e) => CloseReason::Decode(e),
                }
            }
            Ok(_) => {
                let mut st = shared.lock();
                st.last_recv = Instant::now();
                // The frames decoded next are views of the buffer this read went into.
                st.read_batch += 1;
            }
            Err(e) => return CloseReason::Io(Arc::new(e)),
        }
    }
}

async fn keepalive_loop(shared: Arc<Shared>, interval: Duration, timeout: Duration) -> CloseReason {
    let interval = interval.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let mut st = shared.lock();
        let silent_for = st.last_recv.elapsed();
        if silent_for >= timeout {
            return CloseReason::KeepaliveTimeout { silent_for };
        }
        let ping = st.next_ping();
        st.queue(&ping);
    }
}
