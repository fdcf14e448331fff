//! rumqttd inside Roost: its router thread and a factory for in-process links. Only this file
//! and `ingress.rs` touch rumqttd's API; the rest of the crate sees links as keys.
//!
//! Why not `rumqttd::Broker`: its `start()` blocks, runs one thread and runtime per listener,
//! and allows new links only before it is called. Roost owns the `Router` instead and opens
//! links at any time; it runs no rumqttd listener at all (the edge owns the network).

use std::sync::Arc;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use rumqttd::{Router, RouterConfig};

use crate::error::{Error, Result};

/// Builds an in-process link to the router. Blocking: it waits for the router's answer, so
/// it is only called on the ingress thread.
pub(crate) type LinkFactory = Arc<dyn Fn(&str) -> Result<(LinkTx, LinkRx)> + Send + Sync>;

/// Client ids of the node's own links. Network clients never reach the router under their
/// own id (every link is the edge's), but the prefix stays reserved so a log line or a
/// metric of the router can always be told apart from a client's id.
pub(crate) const INTERNAL_ID_PREFIX: &str = "roost-internal-";

/// Bytes of topic and payload per segment of each filter's commitlog. rumqttd keeps
/// `SEGMENT_SIZE * SEGMENT_COUNT` per filter for links that lag; the edge drains every link
/// as it is fed (session.rs), so this only has to cover scheduling hiccups.
const SEGMENT_SIZE: usize = 256 * 1024;
/// Segments kept per filter.
const SEGMENT_COUNT: usize = 4;
/// Bytes of topic and payload rumqttd keeps per filter for a link that lags.
pub(crate) const LINK_WINDOW: u64 = (SEGMENT_SIZE * SEGMENT_COUNT) as u64;
/// Router slots: one per session that subscribed, plus the node's own links.
const INTERNAL_LINKS: usize = 256;

/// Starts rumqttd's router thread and returns the factory for links to it. The router thread
/// has no stop API; it ends with the process.
pub(crate) fn start(max_sessions: usize) -> LinkFactory {
    let router_config = RouterConfig {
        max_connections: max_sessions + INTERNAL_LINKS,
        max_outgoing_packet_count: 200,
        max_segment_size: SEGMENT_SIZE,
        max_segment_count: SEGMENT_COUNT,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, router_config).spawn();
    Arc::new(move |client_id: &str| {
        LinkBuilder::new(client_id, router_tx.clone())
            .build()
            .map(|(tx, rx, _ack)| (tx, rx))
            .map_err(|e| link_error(client_id, e))
    })
}

/// Sends a packet on a link, from a thread that may block.
///
/// In rumqttd 0.20 `LinkTx::send` is async in name only: it never awaits, and it may block on
/// the router's bounded channel. One poll therefore completes it; should a rumqttd upgrade make
/// it really wait, this reports an error instead of blocking a runtime.
pub(crate) fn send_blocking(client_id: &str, link: &mut LinkTx, packet: Packet) -> Result<()> {
    match futures_util::FutureExt::now_or_never(link.send(packet)) {
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(link_error(client_id, e)),
        None => Err(Error::LinkWouldWait {
            client_id: client_id.to_owned(),
        }),
    }
}

/// A normal DISCONNECT, which makes the router drop a link (its subscriptions with it).
pub(crate) fn disconnect() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

pub(crate) fn link_error(client_id: &str, e: LinkError) -> Error {
    Error::Link {
        client_id: client_id.to_owned(),
        source: Box::new(e),
    }
}
