//! The state one session shares between its background task and its handles: the table of
//! streams, the outgoing frame buffer, and what happens when a frame arrives from the peer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::{oneshot, watch};

use crate::frame::{DnsFailureKind, Frame, StreamId, MAX_ENV_BYTES};
use crate::incoming::SubscribeFailureKind;
use crate::request::Request;
use crate::session::CloseReason;

/// Once this many encoded bytes wait to be written, senders of data and datagrams wait.
pub(crate) const OUT_HIGH_WATER: usize = 512 * 1024;
/// Once this many bytes wait (answers the peer provokes but does not read), the session stops
/// reading from the peer until the writer catches up.
pub(crate) const OUT_HARD_CAP: usize = 8 * 1024 * 1024;

/// Linux errno values carried on the wire (both ends are Linux).
pub(crate) mod errno {
    /// Resource temporarily unavailable: a limit refused a new stream.
    pub const EAGAIN: i32 = 11;
    /// Operation not supported: the peer does not serve this kind of request.
    pub const EOPNOTSUPP: i32 = 95;
    /// Connection reset by peer.
    pub const ECONNRESET: i32 = 104;
    /// Connection refused: an incoming connection for a subscription that has ended.
    pub const ECONNREFUSED: i32 = 111;
}

/// What the session's two sides agreed on, fixed after the handshake.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub version: u16,
    /// Bytes we let the peer send per stream before granting more.
    pub local_window: u32,
    /// Bytes the peer lets us send per stream initially.
    pub peer_window: u32,
    pub max_peer_streams: usize,
    /// Datagram bytes queued per UDP flow before new ones are dropped.
    pub udp_queue_bytes: usize,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    closed_tx: watch::Sender<Option<CloseReason>>,
    pub limits: Limits,
}

/// Where an open we asked for stands.
pub(crate) enum OpenReply {
    Opened(SocketAddr),
    Failed(i32),
}

pub(crate) enum DnsReply {
    Answer(Bytes),
    Failed(DnsFailureKind, String),
}

/// The answer to an `EnvQuery`: the variables, or why there are none.
pub(crate) type EnvReply = Result<Vec<(Bytes, Bytes)>, String>;

/// The answer to a `Subscribe`: in place, or refused and why.
pub(crate) type SubscribeReply = Result<(), (SubscribeFailureKind, String)>;

pub(crate) enum Slot {
    /// We asked the peer to open a stream (`tcp`) or UDP flow; its answer goes to `reply`.
    Opening {
        tcp: bool,
        reply: oneshot::Sender<OpenReply>,
    },
    /// We sent a DNS query.
    Querying {
        reply: oneshot::Sender<DnsReply>,
    },
    /// We asked for the environment; `vars` collects the `EnvVars` frames received so far
    /// (`bytes`: their names and values together, bounded by `MAX_ENV_BYTES`).
    Environment {
        reply: oneshot::Sender<EnvReply>,
        vars: Vec<(Bytes, Bytes)>,
        bytes: usize,
    },
    /// The peer asked us to open something or answer a DNS query; our user has not answered
    /// yet. Dropping `cancel` tells the user the peer gave up.
    Offered {
        _cancel: oneshot::Sender<()>,
    },
    /// We asked the peer to subscribe a port.
    Subscribing {
        reply: oneshot::Sender<SubscribeReply>,
    },
    Stream(StreamState),
    Udp(UdpState),
    /// A subscription in place (made by either side).
    Subscription(SubscriptionState),
}

/// One TCP-like stream. Buffers are empty (and unallocated) while the stream is idle.
pub(crate) struct StreamState {
    pub recv: VecDeque<Bytes>,
    /// Bytes the peer may still send before we grant more.
    pub recv_window: u32,
    /// Bytes our user consumed that we have not granted back yet.
    pub consumed: u32,
    pub fin_received: bool,
    /// Set when the peer reset the stream (the errno its user should see).
    pub reset: Option<i32>,
    pub send_credit: u32,
    pub fin_sent: bool,
    pub read_waker: Option<Waker>,
    pub write_waker: Option<Waker>,
    pub waiting_out: bool,
}

pub(crate) struct UdpState {
    pub queue: VecDeque<(SocketAddr, Bytes)>,
    pub queued_bytes: usize,
    pub dropped: u64,
    pub reset: Option<i32>,
    pub recv_waker: Option<Waker>,
    pub send_waker: Option<Waker>,
    pub waiting_out: bool,
}

/// A subscription in place; it lasts until either side resets it or the session ends.
pub(crate) struct SubscriptionState {
    /// Set when the peer ended it (the errno of its `Reset`, 0 for a plain end).
    pub ended: Option<i32>,
    pub waker: Option<Waker>,
}

pub(crate) struct State {
    next_local_id: u32,
    highest_peer_id: u32,
    local_is_odd: bool,
    slots: HashMap<StreamId, Slot>,
    peer_open: usize,
    pub out: BytesMut,
    out_waiters: Vec<StreamId>,
    writer_waker: Option<Waker>,
    pub reader_waker: Option<Waker>,
    pub closed: Option<CloseReason>,
    pub last_recv: Instant,
    ping_nonce: u64,
    limits: Limits,
}

/// A frame from the peer that breaks the protocol: the reason the session ends.
fn violation(detail: String) -> CloseReason {
    CloseReason::Violation(detail)
}

impl Shared {
    pub fn new(limits: Limits, local_is_odd: bool) -> Arc<Shared> {
        let (closed_tx, _) = watch::channel(None);
        Arc::new(Shared {
            state: Mutex::new(State {
                next_local_id: if local_is_odd { 1 } else { 2 },
                highest_peer_id: 0,
                local_is_odd,
                slots: HashMap::new(),
                peer_open: 0,
                out: BytesMut::new(),
                out_waiters: Vec::new(),
                writer_waker: None,
                reader_waker: None,
                closed: None,
                last_recv: Instant::now(),
                ping_nonce: 0,
                limits,
            }),
            closed_tx,
            limits,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should it ever, the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn closed_rx(&self) -> watch::Receiver<Option<CloseReason>> {
        self.closed_tx.subscribe()
    }

    /// Ends the session (first reason wins): wakes every waiter, fails pending opens and
    /// queries, and, with `go_away`, queues a last `GoAway` frame for the writer to flush.
    pub fn close(&self, reason: CloseReason, go_away: Option<String>) {
        {
            let mut st = self.lock();
            if st.closed.is_some() {
                return;
            }
            if let Some(message) = go_away {
                st.queue(&Frame::GoAway { message });
            }
            st.closed = Some(reason.clone());
            // Pending opens/queries/offers are dropped: their receivers see the session end.
            st.slots.retain(|_, slot| {
                matches!(slot, Slot::Stream(_) | Slot::Udp(_) | Slot::Subscription(_))
            });
            for slot in st.slots.values_mut() {
                match slot {
                    Slot::Stream(s) => {
                        wake(&mut s.read_waker);
                        wake(&mut s.write_waker);
                    }
                    Slot::Udp(u) => {
                        wake(&mut u.recv_waker);
                        wake(&mut u.send_waker);
                    }
                    Slot::Subscription(sub) => wake(&mut sub.waker),
                    _ => {}
                }
            }
            wake(&mut st.writer_waker);
            wake(&mut st.reader_waker);
        }
        self.closed_tx.send_replace(Some(reason));
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closed.clone()
    }
}

pub(crate) fn wake(w: &mut Option<Waker>) {
    if let Some(w) = w.take() {
        w.wake();
    }
}

/// Stores `cx`'s waker in `slot` unless an equivalent one is already there.
pub(crate) fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

impl StreamState {
    pub fn new(limits: &Limits) -> StreamState {
        StreamState {
            recv: VecDeque::new(),
            recv_window: limits.local_window,
            consumed: 0,
            fin_received: false,
            reset: None,
            send_credit: limits.peer_window,
            fin_sent: false,
            read_waker: None,
            write_waker: None,
            waiting_out: false,
        }
    }
}

impl UdpState {
    pub fn new() -> UdpState {
        UdpState {
            queue: VecDeque::new(),
            queued_bytes: 0,
            dropped: 0,
            reset: None,
            recv_waker: None,
            send_waker: None,
            waiting_out: false,
        }
    }
}

impl State {
    /// Encodes `frame` onto the outgoing buffer and wakes the writer.
    pub fn queue(&mut self, frame: &Frame) {
        if let Err(e) = frame.encode(&mut self.out) {
            // Only frames built by this crate are queued, and their sizes are checked where
            // users hand over payloads; reaching this is a bug, never worth a panic.
            tracing::error!(error = %e, "dropping a frame that cannot be encoded");
            return;
        }
        wake(&mut self.writer_waker);
    }

    pub fn wake_writer(&mut self) {
        wake(&mut self.writer_waker);
    }

    pub fn out_full(&self) -> bool {
        self.out.len() >= OUT_HIGH_WATER
    }

    /// Remembers that `id` waits for room in the outgoing buffer.
    pub fn wait_for_out(&mut self, id: StreamId) {
        self.out_waiters.push(id);
    }

    /// The writer took the buffer: wake everyone waiting for room, and a paused reader.
    pub fn take_out(&mut self, spare: &mut BytesMut) {
        std::mem::swap(&mut self.out, spare);
        for id in std::mem::take(&mut self.out_waiters) {
            match self.slots.get_mut(&id) {
                Some(Slot::Stream(s)) => {
                    s.waiting_out = false;
                    wake(&mut s.write_waker);
                }
                Some(Slot::Udp(u)) => {
                    u.waiting_out = false;
                    wake(&mut u.send_waker);
                }
                _ => {}
            }
        }
        wake(&mut self.reader_waker);
    }

    pub fn register_writer(&mut self, waker: &Waker) {
        register(&mut self.writer_waker, waker);
    }

    pub fn next_ping(&mut self) -> Frame {
        self.ping_nonce = self.ping_nonce.wrapping_add(1);
        Frame::Ping {
            nonce: self.ping_nonce,
        }
    }

    /// Allocates the id for a stream we open, and inserts its slot.
    pub fn open_local(&mut self, slot: Slot) -> Option<StreamId> {
        let id = self.next_local_id;
        self.next_local_id = id.checked_add(2)?;
        self.slots.insert(id, slot);
        Some(id)
    }

    pub fn slot_mut(&mut self, id: StreamId) -> Option<&mut Slot> {
        self.slots.get_mut(&id)
    }

    pub fn stream_mut(&mut self, id: StreamId) -> Option<&mut StreamState> {
        match self.slots.get_mut(&id) {
            Some(Slot::Stream(s)) => Some(s),
            _ => None,
        }
    }

    pub fn udp_mut(&mut self, id: StreamId) -> Option<&mut UdpState> {
        match self.slots.get_mut(&id) {
            Some(Slot::Udp(u)) => Some(u),
            _ => None,
        }
    }

    /// Whether `id` is a subscription in place that has not ended.
    pub fn subscription_live(&self, id: StreamId) -> bool {
        matches!(self.slots.get(&id), Some(Slot::Subscription(s)) if s.ended.is_none())
    }

    pub(crate) fn is_local_id(&self, id: StreamId) -> bool {
        (id % 2 == 1) == self.local_is_odd
    }

    pub fn remove(&mut self, id: StreamId) -> Option<Slot> {
        let slot = self.slots.remove(&id)?;
        if !self.is_local_id(id) {
            self.peer_open = self.peer_open.saturating_sub(1);
        }
        if self.slots.is_empty() {
            // Give back the table's memory once a burst of streams is gone.
            self.slots.shrink_to_fit();
        }
        Some(slot)
    }

    /// Our user is done with `id` (handle dropped, open abandoned): forget it and, unless the
    /// stream ended cleanly in both directions, tell the peer with a `Reset`.
    pub fn release(&mut self, id: StreamId, errno: i32) {
        let Some(slot) = self.remove(id) else { return };
        if self.closed.is_some() {
            return;
        }
        let clean = match &slot {
            Slot::Stream(s) => s.reset.is_some() || (s.fin_sent && s.fin_received),
            Slot::Udp(u) => u.reset.is_some(),
            Slot::Subscription(sub) => sub.ended.is_some(),
            _ => false,
        };
        if !clean {
            self.queue(&Frame::Reset { stream: id, errno });
        }
    }

    /// Whether a frame for a stream we have no slot for refers to one that existed (and is
    /// ignored) rather than one that never did (a protocol violation).
    fn existed(&self, id: StreamId) -> bool {
        if self.is_local_id(id) {
            id < self.next_local_id
        } else {
            id <= self.highest_peer_id
        }
    }

    /// Accepts a new stream id opened by the peer, or explains why it is invalid.
    fn accept_peer_id(&mut self, id: StreamId) -> Result<(), CloseReason> {
        if self.is_local_id(id) {
            return Err(violation(format!(
                "peer opened stream {id}, which has our parity"
            )));
        }
        if id <= self.highest_peer_id {
            return Err(violation(format!(
                "peer reused or reordered stream id {id} (highest so far {})",
                self.highest_peer_id
            )));
        }
        self.highest_peer_id = id;
        Ok(())
    }

    /// Applies one frame from the peer. Requests for our user are pushed to `deliver` (handed
    /// over after the lock is released, since refusing one takes the lock again).
    pub fn on_frame(
        &mut self,
        shared: &Arc<Shared>,
        frame: Frame,
        deliver: &mut Vec<Request>,
    ) -> Result<(), CloseReason> {
        match frame {
            Frame::Ping { nonce } => self.queue(&Frame::Pong { nonce }),
            Frame::Pong { .. } => {}
            Frame::GoAway { message } => {
                return Err(CloseReason::PeerShutdown { message });
            }
            Frame::Hello { .. } | Frame::Welcome { .. } | Frame::Refused { .. } => {
                return Err(violation("handshake frame after the handshake".to_string()));
            }
            Frame::ConnectTcp {
                stream,
                addr,
                timeout_ms,
            } => {
                if let Some(cancel) = self.offer(stream, errno::EAGAIN)? {
                    deliver.push(Request::connect_tcp(
                        shared.clone(),
                        stream,
                        addr,
                        timeout_ms,
                        cancel,
                    ));
                }
            }
            Frame::OpenUdp { stream, bind } => {
                if let Some(cancel) = self.offer(stream, errno::EAGAIN)? {
                    deliver.push(Request::open_udp(shared.clone(), stream, bind, cancel));
                }
            }
            Frame::DnsQuery {
                stream,
                transport,
                message,
            } => {
                if self.peer_open >= self.limits.max_peer_streams {
                    self.accept_peer_id(stream)?;
                    self.queue(&Frame::DnsFailed {
                        stream,
                        kind: DnsFailureKind::Unavailable,
                        message: "too many open streams".into(),
                    });
                } else if let Some(cancel) = self.offer(stream, errno::EAGAIN)? {
                    deliver.push(Request::dns(
                        shared.clone(),
                        stream,
                        transport,
                        message,
                        cancel,
                    ));
                }
            }
            Frame::EnvQuery { stream } => {
                if self.peer_open >= self.limits.max_peer_streams {
                    self.accept_peer_id(stream)?;
                    self.queue(&Frame::EnvFailed {
                        stream,
                        message: "too many open streams".into(),
                    });
                } else if let Some(cancel) = self.offer(stream, errno::EAGAIN)? {
                    deliver.push(Request::env(shared.clone(), stream, cancel));
                }
            }
            Frame::EnvVars { stream, vars, more } => match self.slots.get_mut(&stream) {
                Some(Slot::Environment {
                    vars: have, bytes, ..
                }) => {
                    *bytes += vars.iter().map(|(n, v)| n.len() + v.len()).sum::<usize>();
                    if *bytes > MAX_ENV_BYTES {
                        return Err(violation(format!(
                            "stream {stream}: environment larger than {MAX_ENV_BYTES} bytes"
                        )));
                    }
                    have.extend(vars);
                    if !more {
                        if let Some(Slot::Environment { reply, vars, .. }) = self.remove(stream) {
                            let _ = reply.send(Ok(vars));
                        }
                    }
                }
                Some(_) => {
                    return Err(violation(format!(
                        "EnvVars for stream {stream}, which is not waiting for it"
                    )))
                }
                None => return self.unexpected(stream, None, "EnvVars"),
            },
            Frame::EnvFailed { stream, message } => match self.slots.remove(&stream) {
                Some(Slot::Environment { reply, .. }) => {
                    let _ = reply.send(Err(message));
                }
                other => return self.unexpected(stream, other, "EnvFailed"),
            },
            Frame::Subscribe {
                stream,
                port,
                mode,
                filter,
            } => {
                if self.peer_open >= self.limits.max_peer_streams {
                    self.accept_peer_id(stream)?;
                    self.queue(&Frame::SubscribeFailed {
                        stream,
                        kind: SubscribeFailureKind::Failed,
                        message: "too many open streams".into(),
                    });
                } else if let Some(cancel) = self.offer(stream, errno::EAGAIN)? {
                    deliver.push(Request::subscribe(
                        shared.clone(),
                        stream,
                        port,
                        mode,
                        filter,
                        cancel,
                    ));
                }
            }
            Frame::Subscribed { stream } => match self.slots.remove(&stream) {
                Some(Slot::Subscribing { reply }) => {
                    self.slots.insert(
                        stream,
                        Slot::Subscription(SubscriptionState {
                            ended: None,
                            waker: None,
                        }),
                    );
                    // If the subscriber is gone its guard releases the subscription.
                    let _ = reply.send(Ok(()));
                }
                other => return self.unexpected(stream, other, "Subscribed"),
            },
            Frame::SubscribeFailed {
                stream,
                kind,
                message,
            } => match self.slots.remove(&stream) {
                Some(Slot::Subscribing { reply }) => {
                    let _ = reply.send(Err((kind, message)));
                }
                other => return self.unexpected(stream, other, "SubscribeFailed"),
            },
            Frame::IncomingTcp {
                stream,
                subscription,
                kind,
                client,
                server,
            } => {
                if !self.is_local_id(subscription) || !self.existed(subscription) {
                    return Err(violation(format!(
                        "IncomingTcp for subscription {subscription}, which we never made"
                    )));
                }
                match self.slots.get(&subscription) {
                    Some(Slot::Subscription(sub)) if sub.ended.is_none() => {
                        if let Some(cancel) = self.offer(stream, errno::EAGAIN)? {
                            deliver.push(Request::incoming(
                                shared.clone(),
                                stream,
                                subscription,
                                kind,
                                client,
                                server,
                                cancel,
                            ));
                        }
                    }
                    Some(Slot::Subscription(_)) | None => {
                        // Unsubscribed while the connection was on its way: refused, and
                        // the agent gives it to the target's own server.
                        self.accept_peer_id(stream)?;
                        self.queue(&Frame::OpenFailed {
                            stream,
                            errno: errno::ECONNREFUSED,
                        });
                    }
                    Some(_) => {
                        return Err(violation(format!(
                            "IncomingTcp for stream {subscription}, which is not a subscription in place"
                        )));
                    }
                }
            }
            Frame::Opened { stream, local } => match self.slots.remove(&stream) {
                Some(Slot::Opening { tcp, reply }) => {
                    let slot = if tcp {
                        Slot::Stream(StreamState::new(&self.limits))
                    } else {
                        Slot::Udp(UdpState::new())
                    };
                    self.slots.insert(stream, slot);
                    // If the opener is gone its guard releases the stream (and resets it).
                    let _ = reply.send(OpenReply::Opened(local));
                }
                other => return self.unexpected(stream, other, "Opened"),
            },
            Frame::OpenFailed { stream, errno } => match self.slots.remove(&stream) {
                Some(Slot::Opening { reply, .. }) => {
                    let _ = reply.send(OpenReply::Failed(errno));
                }
                other => return self.unexpected(stream, other, "OpenFailed"),
            },
            Frame::DnsAnswer { stream, message } => match self.slots.remove(&stream) {
                Some(Slot::Querying { reply }) => {
                    let _ = reply.send(DnsReply::Answer(message));
                }
                other => return self.unexpected(stream, other, "DnsAnswer"),
            },
            Frame::DnsFailed {
                stream,
                kind,
                message,
            } => match self.slots.remove(&stream) {
                Some(Slot::Querying { reply }) => {
                    let _ = reply.send(DnsReply::Failed(kind, message));
                }
                other => return self.unexpected(stream, other, "DnsFailed"),
            },
            Frame::Data { stream, payload } => match self.slots.get_mut(&stream) {
                Some(Slot::Stream(s)) => {
                    if s.reset.is_some() {
                        // The peer reset it; data that crossed the Reset is moot.
                        return Ok(());
                    }
                    if s.fin_received {
                        return Err(violation(format!("data after FIN on stream {stream}")));
                    }
                    let len = payload.len() as u32;
                    if len > s.recv_window {
                        return Err(violation(format!(
                            "stream {stream}: {len} bytes sent with only {} bytes of credit",
                            s.recv_window
                        )));
                    }
                    s.recv_window -= len;
                    s.recv.push_back(payload);
                    wake(&mut s.read_waker);
                }
                other => {
                    let other = other.map(|_| ());
                    return self.stale(stream, other.is_some(), "Data");
                }
            },
            Frame::WindowUpdate { stream, increment } => match self.slots.get_mut(&stream) {
                Some(Slot::Stream(s)) => {
                    let credit = u64::from(s.send_credit) + u64::from(increment);
                    if credit > u64::from(i32::MAX as u32) {
                        return Err(violation(format!(
                            "stream {stream}: window grew beyond 2^31 bytes"
                        )));
                    }
                    s.send_credit = credit as u32;
                    wake(&mut s.write_waker);
                }
                other => {
                    let other = other.map(|_| ());
                    return self.stale(stream, other.is_some(), "WindowUpdate");
                }
            },
            Frame::Fin { stream } => match self.slots.get_mut(&stream) {
                Some(Slot::Stream(s)) => {
                    s.fin_received = true;
                    wake(&mut s.read_waker);
                }
                other => {
                    let other = other.map(|_| ());
                    return self.stale(stream, other.is_some(), "Fin");
                }
            },
            Frame::Reset { stream, errno } => {
                let raw_errno = errno;
                let errno = if errno == 0 { errno::ECONNRESET } else { errno };
                match self.slots.get_mut(&stream) {
                    Some(Slot::Subscription(sub)) => {
                        if sub.ended.is_none() {
                            sub.ended = Some(raw_errno);
                        }
                        wake(&mut sub.waker);
                    }
                    Some(Slot::Subscribing { .. }) => {
                        if let Some(Slot::Subscribing { reply }) = self.remove(stream) {
                            let _ = reply.send(Err((
                                SubscribeFailureKind::Failed,
                                "the peer cancelled the subscription".into(),
                            )));
                        }
                    }
                    Some(Slot::Stream(s)) => {
                        s.reset = Some(errno);
                        // Like TCP after RST: unread data is gone.
                        s.recv = VecDeque::new();
                        wake(&mut s.read_waker);
                        wake(&mut s.write_waker);
                    }
                    Some(Slot::Udp(u)) => {
                        u.reset = Some(errno);
                        u.queue = VecDeque::new();
                        u.queued_bytes = 0;
                        wake(&mut u.recv_waker);
                        wake(&mut u.send_waker);
                    }
                    Some(Slot::Offered { .. }) => {
                        // The peer gave up before we answered; dropping the slot tells our user.
                        self.remove(stream);
                    }
                    Some(Slot::Opening { .. }) => {
                        if let Some(Slot::Opening { reply, .. }) = self.remove(stream) {
                            let _ = reply.send(OpenReply::Failed(errno));
                        }
                    }
                    Some(Slot::Querying { .. }) => {
                        if let Some(Slot::Querying { reply }) = self.remove(stream) {
                            let _ = reply.send(DnsReply::Failed(
                                DnsFailureKind::Unavailable,
                                "the peer cancelled the query".into(),
                            ));
                        }
                    }
                    Some(Slot::Environment { .. }) => {
                        if let Some(Slot::Environment { reply, .. }) = self.remove(stream) {
                            let _ = reply.send(Err("the peer cancelled the request".into()));
                        }
                    }
                    None => {
                        if !self.existed(stream) {
                            return Err(violation(format!(
                                "Reset for stream {stream}, which was never opened"
                            )));
                        }
                    }
                }
            }
            Frame::Datagram {
                stream,
                addr,
                payload,
            } => {
                let cap = self.limits.udp_queue_bytes;
                match self.slots.get_mut(&stream) {
                    Some(Slot::Udp(u)) => {
                        if u.reset.is_some() {
                            return Ok(());
                        }
                        if u.queued_bytes + payload.len() > cap {
                            // UDP may drop; a flow whose reader lags never holds up others.
                            u.dropped += 1;
                        } else {
                            u.queued_bytes += payload.len();
                            u.queue.push_back((addr, payload));
                            wake(&mut u.recv_waker);
                        }
                    }
                    other => {
                        let other = other.map(|_| ());
                        return self.stale(stream, other.is_some(), "Datagram");
                    }
                }
            }
        }
        Ok(())
    }

    /// Registers a stream the peer opens; returns the cancel receiver for the request, or
    /// `None` when a limit refused it (the refusal is already queued).
    fn offer(
        &mut self,
        id: StreamId,
        refuse_errno: i32,
    ) -> Result<Option<oneshot::Receiver<()>>, CloseReason> {
        self.accept_peer_id(id)?;
        if self.peer_open >= self.limits.max_peer_streams {
            self.queue(&Frame::OpenFailed {
                stream: id,
                errno: refuse_errno,
            });
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        self.slots.insert(id, Slot::Offered { _cancel: tx });
        self.peer_open += 1;
        Ok(Some(rx))
    }

    /// A reply frame arrived for a slot that is not waiting for it.
    fn unexpected(
        &mut self,
        id: StreamId,
        found: Option<Slot>,
        frame: &str,
    ) -> Result<(), CloseReason> {
        match found {
            // The opener gave up (and reset the stream); its late answer is moot.
            None if self.is_local_id(id) && self.existed(id) => Ok(()),
            None => Err(violation(format!(
                "{frame} for stream {id}, which we never opened"
            ))),
            Some(slot) => {
                // Put it back: the error ends the session, but keep the table consistent.
                self.slots.insert(id, slot);
                Err(violation(format!(
                    "{frame} for stream {id}, which is not waiting for it"
                )))
            }
        }
    }

    /// A stream frame for a slot of the wrong kind (violation) or for a stream that is gone
    /// (ignored: frames cross a `Reset` in flight).
    fn stale(&self, id: StreamId, wrong_kind: bool, frame: &str) -> Result<(), CloseReason> {
        if wrong_kind {
            return Err(violation(format!(
                "{frame} for stream {id}, which is not that kind of stream"
            )));
        }
        if self.existed(id) {
            Ok(())
        } else {
            Err(violation(format!(
                "{frame} for stream {id}, which was never opened"
            )))
        }
    }
}
