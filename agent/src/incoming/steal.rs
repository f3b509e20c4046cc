//! Stealing whole connections: each redirected connection goes to the stealing session as an
//! `IncomingTcp` stream of kind `Stolen`, relayed both ways with half-close and reset passed
//! through. If sctrace declines it (the app stopped listening, it unsubscribed meanwhile),
//! the target's own server gets the connection instead.

use std::net::SocketAddr;
use std::sync::Arc;

use sctrace_protocol::{IncomingKind, RelayEnd};

use super::proxy::{abort, pass_through, ClientConn};
use super::Subscriber;
use crate::netns::NetnsSockets;

/// Hands `conn` (from `client` to `server`) to `stealer`.
pub async fn whole_connection<C: ClientConn>(
    mut conn: C,
    stealer: Arc<Subscriber>,
    client: SocketAddr,
    server: SocketAddr,
    sockets: &NetnsSockets,
) {
    let opened = stealer
        .session
        .open_incoming(stealer.subscription, IncomingKind::Stolen, client, server)
        .await;
    let mut stream = match opened {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%client, %server, error = %e, "sctrace declined a stolen connection; the target's server gets it");
            pass_through(conn, server, sockets).await;
            return;
        }
    };
    let outcome = sctrace_protocol::relay(&mut stream, &mut conn).await;
    match &outcome.end {
        RelayEnd::Closed => {}
        RelayEnd::StreamFailed(e) => {
            // The app's side was reset (or the session died): reset the client too.
            abort(conn.socket());
            tracing::debug!(%client, %server, error = %e, "stolen connection reset by sctrace's side");
        }
        RelayEnd::LocalFailed(e) => {
            tracing::debug!(%client, %server, error = %e, "stolen connection failed on the client's side");
        }
    }
    tracing::debug!(
        %client,
        %server,
        from_client = outcome.to_stream,
        to_client = outcome.from_stream,
        "stolen connection closed"
    );
}
