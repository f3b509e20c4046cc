//! Route queries: where the target's kernel would send datagrams to an address from. A UDP
//! socket of the address's family is connected there in the target namespace (a route
//! lookup; nothing is sent), and its own address is the answer — what an application's
//! `getsockname` would show after the same `connect` in the target (glibc sorts the
//! addresses `getaddrinfo` returns by it, RFC 6724).

use sctrace_protocol::RouteRequest;
use socket2::{Domain, Type};

use crate::errno;
use crate::netns::NetnsSockets;

/// Answers one route query.
pub async fn serve(request: RouteRequest, sockets: NetnsSockets) {
    let addr = request.addr();
    let routed = async {
        let socket = sockets
            .socket(Domain::for_address(addr), Type::DGRAM)
            .await?;
        socket.connect(&addr.into())?;
        socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an inet address"))
    };
    match routed.await {
        Ok(local) => {
            let _ = request.answer(local);
        }
        Err(e) => {
            tracing::debug!(%addr, error = %e, "no route");
            request.reject(errno::of(&e));
        }
    }
}
