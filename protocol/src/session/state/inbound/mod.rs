//! Applying one frame from the peer to the session's state: [`State::on_frame`] hands each
//! frame to the module of its family; the stream-id rules they all follow live here.
//!
//! | module | frames | what it owns |
//! |---|---|---|
//! | `control` | `Ping`, `Pong`, `GoAway`, late handshake frames | the session as a whole |
//! | `open` | `ConnectTcp`, `OpenUdp`, `Opened`, `OpenFailed` | opening streams and flows |
//! | `stream` | `Data`, `WindowUpdate`, `Fin` | a stream's bytes and flow control |
//! | `datagram` | `Datagram` | a UDP flow's datagrams |
//! | `reset` | `Reset` | ending whatever a stream id stands for |
//! | `dns` | `DnsQuery`, `DnsAnswer`, `DnsFailed` | DNS exchanges |
//! | `env` | `EnvQuery`, `EnvVars`, `EnvFailed` | environment requests |
//! | `subscription` | `Subscribe`, `Subscribed`, `SubscribeFailed`, `IncomingTcp` | port subscriptions and their connections |
//! | `query` | `RouteQuery`, `ResolverQuery`, `ResolverConf` (and the `Opened`/`OpenFailed` answering a route query) | one-shot questions about the target |
//!
//! Frames that open something on our side come back as a [`Request`] for our user (none
//! when a limit refused it); the others only change the state. An error is a protocol
//! violation (or the peer's `GoAway`) and ends the session.

mod control;
mod datagram;
mod dns;
mod env;
mod open;
mod query;
mod reset;
mod stream;
mod subscription;

use std::sync::Arc;

use tokio::sync::oneshot;

use super::{errno, Shared, Slot, State};
use crate::frame::{Frame, StreamId};
use crate::request::{OfferKind, Request};
use crate::session::CloseReason;

/// A frame from the peer that breaks the protocol: the reason the session ends.
fn violation(detail: String) -> CloseReason {
    CloseReason::Violation(detail)
}

impl State {
    /// Applies one frame from the peer. Requests for our user are pushed to `deliver` (handed
    /// over after the lock is released, since refusing one takes the lock again).
    pub fn on_frame(
        &mut self,
        shared: &Arc<Shared>,
        frame: Frame,
        deliver: &mut Vec<Request>,
    ) -> Result<(), CloseReason> {
        match frame {
            Frame::Hello { .. }
            | Frame::Welcome { .. }
            | Frame::Refused { .. }
            | Frame::AuthChallenge { .. }
            | Frame::AuthProof { .. } => return Err(control::late_handshake()),
            Frame::Ping { nonce } => self.on_ping(nonce),
            Frame::Pong { .. } => {}
            Frame::GoAway { message } => return Err(control::go_away(message)),

            Frame::ConnectTcp {
                stream,
                addr,
                timeout_ms,
                attach,
            } => deliver.extend(self.on_connect_tcp(shared, stream, addr, timeout_ms, attach)?),
            Frame::OpenUdp { stream, bind } => {
                deliver.extend(self.on_open_udp(shared, stream, bind)?)
            }
            Frame::Opened { stream, local } => self.on_opened(stream, local)?,
            Frame::OpenFailed { stream, errno } => self.on_open_failed(stream, errno)?,

            Frame::Data { stream, payload } => self.on_data(stream, payload)?,
            Frame::WindowUpdate { stream, increment } => {
                self.on_window_update(stream, increment)?
            }
            Frame::Fin { stream } => self.on_fin(stream)?,
            Frame::Datagram {
                stream,
                addr,
                payload,
            } => self.on_datagram(stream, addr, payload)?,
            Frame::Reset { stream, errno } => self.on_reset(stream, errno)?,

            Frame::DnsQuery {
                stream,
                transport,
                message,
            } => deliver.extend(self.on_dns_query(shared, stream, transport, message)?),
            Frame::DnsAnswer { stream, message } => self.on_dns_answer(stream, message)?,
            Frame::DnsFailed {
                stream,
                kind,
                message,
            } => self.on_dns_failed(stream, kind, message)?,

            Frame::EnvQuery { stream } => deliver.extend(self.on_env_query(shared, stream)?),
            Frame::EnvVars { stream, vars, more } => self.on_env_vars(stream, vars, more)?,
            Frame::EnvFailed { stream, message } => self.on_env_failed(stream, message)?,

            Frame::Subscribe {
                stream,
                port,
                mode,
                families,
                listeners,
                filter,
            } => deliver.extend(
                self.on_subscribe(shared, stream, port, mode, families, listeners, filter)?,
            ),
            Frame::Subscribed { stream } => self.on_subscribed(stream)?,
            Frame::SubscribeFailed {
                stream,
                kind,
                message,
            } => self.on_subscribe_failed(stream, kind, message)?,
            Frame::IncomingTcp {
                stream,
                subscription,
                kind,
                client,
                server,
            } => deliver.extend(self.on_incoming_tcp(
                shared,
                stream,
                subscription,
                kind,
                client,
                server,
            )?),

            Frame::RouteQuery { stream, addr } => {
                deliver.extend(self.on_route_query(shared, stream, addr)?)
            }
            Frame::ResolverQuery { stream } => {
                deliver.extend(self.on_resolver_query(shared, stream)?)
            }
            Frame::ResolverConf { stream, text } => self.on_resolver_conf(stream, text)?,
        }
        Ok(())
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

    /// Registers a stream the peer opens; returns the cancel receiver for the request, or
    /// `None` when the limit on the peer's streams refused it (the refusal, the failure frame
    /// of `kind` with `EAGAIN`, is already queued).
    fn offer(
        &mut self,
        id: StreamId,
        kind: OfferKind,
    ) -> Result<Option<oneshot::Receiver<()>>, CloseReason> {
        self.accept_peer_id(id)?;
        if self.peer_open >= self.limits.max_peer_streams {
            self.queue(&kind.refusal(id, errno::EAGAIN, "too many open streams"));
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
