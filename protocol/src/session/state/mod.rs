//! The state one session shares between its background task and its handles: the table of
//! streams and the outgoing frame buffer. What a frame from the peer does to it is in
//! [`inbound`].

mod inbound;
mod out;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::frame::{DnsFailureKind, Frame, StreamId};
use crate::incoming::SubscribeFailureKind;
use crate::session::writer::Writer;
use crate::session::CloseReason;
pub(crate) use out::OutQueue;

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
    /// The keys of the session's data connections (version 3 on).
    pub data_keys: Option<crate::data::DataKeys>,
}

pub(crate) struct Shared {
    state: Mutex<State>,
    closed_tx: watch::Sender<Option<CloseReason>>,
    pub limits: Limits,
    /// The connection's write half; used only by the holder of the write token
    /// (`State::writing`), see [`crate::session::writer`].
    pub writer: Mutex<Option<Writer>>,
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
    /// We asked the peer where its kernel would route datagrams (answered like an open).
    Routing {
        reply: oneshot::Sender<OpenReply>,
    },
    /// We asked for the peer's resolver configuration.
    Resolving {
        reply: oneshot::Sender<String>,
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
    /// The read (see [`State::read_batch`]) whose buffer the payloads queued in `recv` as
    /// views keep alive, if any: all of them come from that one buffer.
    pub pinned_batch: Option<u64>,
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
    pub out: OutQueue,
    /// Someone holds the write token: it alone writes the connection.
    pub writing: bool,
    /// A write left bytes behind (the connection would block): the writer task must take
    /// the token and finish them.
    pub backlog: bool,
    out_waiters: Vec<StreamId>,
    writer_waker: Option<Waker>,
    pub reader_waker: Option<Waker>,
    pub closed: Option<CloseReason>,
    pub last_recv: Instant,
    ping_nonce: u64,
    limits: Limits,
    /// Counts the reads of the session's connection: the frames decoded from one read are
    /// views of one buffer.
    pub read_batch: u64,
}

impl Shared {
    pub fn new(limits: Limits, local_is_odd: bool, writer: Mutex<Option<Writer>>) -> Arc<Shared> {
        let (closed_tx, _) = watch::channel(None);
        Arc::new(Shared {
            writer,
            state: Mutex::new(State {
                next_local_id: if local_is_odd { 1 } else { 2 },
                highest_peer_id: 0,
                local_is_odd,
                slots: HashMap::new(),
                peer_open: 0,
                out: OutQueue::default(),
                writing: false,
                backlog: false,
                out_waiters: Vec::new(),
                writer_waker: None,
                reader_waker: None,
                closed: None,
                last_recv: Instant::now(),
                ping_nonce: 0,
                limits,
                read_batch: 0,
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
            pinned_batch: None,
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
    /// Encodes `frame` onto the outgoing queue and wakes the writer.
    pub fn queue(&mut self, frame: &Frame) {
        if let Err(e) = self.out.frame(frame) {
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

    /// The token holder takes the queue (appended to `into`): wake everyone waiting for
    /// room, and a paused reader.
    pub fn take_out(&mut self, into: &mut VecDeque<Bytes>) {
        self.out.take_into(into);
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
}
