//! rumqttd inside Roost: its router thread and a factory for in-process links. Only this file
//! and `ingress.rs` (and the dispatcher's reading, `fanout.rs`) touch rumqttd's API.
//!
//! Why not `rumqttd::Broker`: its `start()` blocks, runs one thread and runtime per listener,
//! and allows new links only before it is called. Roost owns the `Router` instead and opens
//! links at any time; it runs no rumqttd listener at all (the edge owns the network).

use std::sync::Arc;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Router, RouterConfig};

use crate::error::{Error, Result};

/// Builds an in-process link to the router. Blocking: it waits for the router's answer, so
/// it is only called on the ingress thread.
pub(crate) type LinkFactory = Arc<dyn Fn(&str) -> Result<(LinkTx, LinkRx)> + Send + Sync>;

/// Client ids of the node's own links. Network clients never reach the router under their
/// own id (both links are the node's), but the prefix stays reserved so a log line of the
/// router can always be told apart from a client's id.
pub(crate) const INTERNAL_ID_PREFIX: &str = "roost-internal-";

/// Bytes of topic and payload per segment of the router's log (one log: the reader link's
/// filter, `#`).
const SEGMENT_SIZE: usize = 256 * 1024;
/// Segments the log keeps. A new segment starts when the last one is full, and the oldest is
/// dropped beyond this count, so the log always holds at least the last
/// `(SEGMENT_COUNT - 1) * SEGMENT_SIZE` bytes: a reader that far behind loses nothing.
const SEGMENT_COUNT: usize = 4;
/// Bytes of topic and payload the router's log is certain to keep for the reader. The
/// intake keeps what is inside the router below this (`intake::BUDGET`).
pub(crate) const LOG_KEPT: u64 = ((SEGMENT_COUNT - 1) * SEGMENT_SIZE) as u64;
/// Router connection slots: the publisher and the reader link, and room to spare.
const LINKS: usize = 4;
/// Forwards the router hands the reader per turn before it waits to be rescheduled.
const FORWARDS_PER_TURN: usize = 1024;

/// Starts rumqttd's router thread and returns the factory for links to it. The router thread
/// has no stop API; it ends with the process.
pub(crate) fn start() -> LinkFactory {
    let router_config = RouterConfig {
        max_connections: LINKS,
        max_outgoing_packet_count: FORWARDS_PER_TURN as u64,
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

/// A link error, with the link's client id.
pub(crate) fn link_error(client_id: &str, e: LinkError) -> Error {
    Error::Link {
        client_id: client_id.to_owned(),
        source: Box::new(e),
    }
}
