//! Environment requests: the peer's `EnvQuery` becomes a request for our user; the
//! `EnvVars` frames (all but the last flagged `more`, [`MAX_ENV_BYTES`] in all) or an
//! `EnvFailed` answer the one we sent.

use std::sync::Arc;

use bytes::Bytes;

use super::violation;
use crate::frame::{StreamId, MAX_ENV_BYTES};
use crate::request::{OfferKind, Request};
use crate::session::state::{Shared, Slot, State};
use crate::session::CloseReason;

impl State {
    /// `EnvQuery`: the peer asks for our target process's environment.
    pub(super) fn on_env_query(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
    ) -> Result<Option<Request>, CloseReason> {
        let cancel = self.offer(stream, OfferKind::Env)?;
        Ok(cancel.map(|cancel| Request::env(shared.clone(), stream, cancel)))
    }

    /// `EnvVars`: some of the variables we asked for; the last frame (`more` unset) completes
    /// the answer.
    pub(super) fn on_env_vars(
        &mut self,
        stream: StreamId,
        vars: Vec<(Bytes, Bytes)>,
        more: bool,
    ) -> Result<(), CloseReason> {
        match self.slots.get_mut(&stream) {
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
                Ok(())
            }
            Some(_) => Err(violation(format!(
                "EnvVars for stream {stream}, which is not waiting for it"
            ))),
            None => self.unexpected(stream, None, "EnvVars"),
        }
    }

    /// `EnvFailed`: the environment we asked for cannot be had, and why.
    pub(super) fn on_env_failed(
        &mut self,
        stream: StreamId,
        message: String,
    ) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Environment { reply, .. }) => {
                let _ = reply.send(Err(message));
                Ok(())
            }
            other => self.unexpected(stream, other, "EnvFailed"),
        }
    }
}
