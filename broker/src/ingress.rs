//! The one way into rumqttd's router: a thread of its own that owns every link's sending half.
//! Sessions, wills and the in-process client hand it operations through a bounded channel,
//! so a full router channel (rumqttd's link sends block) slows the senders down instead of
//! blocking the node's async workers. The thread keeps the order operations were queued in,
//! which the edge relies on: a SUBSCRIBE queued before a PUBLISH is seen by the router first.
//!
//! Receiving is async (`next_forward`, `reschedule`), on whichever task owns a link's
//! `LinkRx`.

use std::collections::HashMap;

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use tokio::sync::{mpsc, oneshot};

use crate::embed::{self, disconnect, link_error, send_blocking, LinkFactory};
use crate::envelope::router_filter;
use crate::error::{Error, Result};

/// Operations queued before senders wait. Small: a message queued here is already past the
/// publishers' flow control (`session::Flow`), so this bounds what arrives after a hold.
const QUEUE: usize = 256;

/// Names a link on the ingress thread.
pub(crate) type LinkKey = u64;

/// The key of the node's publisher link, which every publish goes through.
const PUBLISHER: LinkKey = 0;

/// What the ingress thread is asked to do.
enum Op {
    /// Open a link named `client_id` under `key`; its receiving half goes back on `reply`.
    Open {
        key: LinkKey,
        client_id: String,
        reply: oneshot::Sender<Result<LinkRx>>,
    },
    /// Route a message (topic and envelope, see `envelope.rs`) through the publisher link.
    Publish { topic: Bytes, payload: Bytes },
    /// Subscribe link `key` to `filter` (at QoS 0: the edge runs QoS itself).
    Subscribe { key: LinkKey, filter: String },
    /// Remove `filter` from link `key`.
    Unsubscribe { key: LinkKey, filter: String },
    /// Close link `key`; the router forgets its subscriptions.
    Close { key: LinkKey },
}

/// Handle to the ingress thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct Ingress {
    ops: mpsc::Sender<Op>,
}

impl Ingress {
    /// Opens the publisher link and starts the thread. The thread ends when every handle is
    /// dropped.
    pub(crate) fn start(links: LinkFactory) -> Result<Ingress> {
        let id = embed::INTERNAL_ID_PREFIX.to_owned() + "publisher";
        let (publisher, publisher_rx) = links(&id)?;
        let (ops, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("roost-ingress".into())
            .spawn(move || run(links, publisher, queue))
            .map_err(|e| Error::Startup(format!("spawning the ingress thread: {e}")))?;
        // The publisher link subscribes to nothing, but the router may still ask it to
        // reschedule: keep it drained so the router never stalls it.
        tokio::spawn(async move {
            let mut rx = publisher_rx;
            loop {
                match next_forward(&mut rx).await {
                    Next::Message(..) => {}
                    Next::Reschedule => {
                        if !reschedule(&rx).await {
                            return;
                        }
                    }
                    Next::Gone => return,
                }
            }
        });
        Ok(Ingress { ops })
    }

    /// Opens a link for a session or an in-process subscription.
    pub(crate) async fn open(&self, key: LinkKey, client_id: String) -> Result<LinkRx> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Open {
            key,
            client_id,
            reply,
        })
        .await?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Routes one message (its router topic and envelope, `envelope.rs`); waits while the
    /// queue is full.
    pub(crate) async fn publish(&self, topic: Bytes, payload: Bytes) -> Result<()> {
        self.send(Op::Publish { topic, payload }).await
    }

    /// Subscribes link `key` to `filter` (a client's filter; escaped here for the router).
    pub(crate) async fn subscribe(&self, key: LinkKey, filter: &str) -> Result<()> {
        let filter = router_filter(filter);
        self.send(Op::Subscribe { key, filter }).await
    }

    /// Unsubscribes link `key` from `filter` (a client's filter).
    pub(crate) async fn unsubscribe(&self, key: LinkKey, filter: &str) -> Result<()> {
        let filter = router_filter(filter);
        self.send(Op::Unsubscribe { key, filter }).await
    }

    /// Closes link `key`.
    pub(crate) async fn close(&self, key: LinkKey) -> Result<()> {
        self.send(Op::Close { key }).await
    }

    async fn send(&self, op: Op) -> Result<()> {
        self.ops.send(op).await.map_err(|_| Error::Closed)
    }
}

/// What a link's receiving half has next.
pub(crate) enum Next {
    /// A message: its router topic and envelope.
    Message(Bytes, Bytes),
    /// The router stopped feeding the link until it says it is ready again: call
    /// [`reschedule`] (not inside a `select!`: a dropped reschedule stalls the link for good).
    Reschedule,
    /// The link is gone.
    Gone,
}

/// The next thing a link receives. Cancel-safe: nothing is taken until it completes.
pub(crate) async fn next_forward(link: &mut LinkRx) -> Next {
    loop {
        match link.next().await {
            Ok(Some(Notification::Forward(forward))) => {
                return Next::Message(forward.publish.topic, forward.publish.payload);
            }
            Ok(Some(Notification::Unschedule)) => return Next::Reschedule,
            Ok(Some(Notification::Disconnect(..))) | Err(_) => return Next::Gone,
            Ok(_) => {}
        }
    }
}

/// Tells the router the link is ready for more; false when the router is gone.
pub(crate) async fn reschedule(link: &LinkRx) -> bool {
    link.wake().await.is_ok()
}

/// Publishes handed to the router per notification at most.
const BATCH: usize = 256;

/// The ingress thread: applies operations in order until every handle is gone.
///
/// Publishes that are waiting are handed over in one batch with one notification: every
/// notification takes a slot of the router's channel, where a link's request to be fed again
/// waits its turn, so fewer notifications keep subscribers' links fed in step.
fn run(links: LinkFactory, publisher: LinkTx, mut queue: mpsc::Receiver<Op>) {
    let mut open: HashMap<LinkKey, (String, LinkTx)> = HashMap::new();
    open.insert(PUBLISHER, ("publisher".into(), publisher));
    let mut next = None;
    loop {
        let Some(op) = next.take().or_else(|| queue.blocking_recv()) else {
            return;
        };
        let result = match op {
            Op::Open {
                key,
                client_id,
                reply,
            } => {
                let opened = links(&client_id).map(|(tx, rx)| {
                    open.insert(key, (client_id, tx));
                    rx
                });
                let _ = reply.send(opened);
                Ok(())
            }
            Op::Publish { topic, payload } => with(&mut open, PUBLISHER, |id, link| {
                let mut last = (topic, payload);
                for _ in 1..BATCH {
                    match queue.try_recv() {
                        Ok(Op::Publish { topic, payload }) => {
                            let (topic, payload) = std::mem::replace(&mut last, (topic, payload));
                            link.buffer().push_back(Packet::Publish(
                                Publish::new(topic, payload, false),
                                None,
                            ));
                        }
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                // The last one goes through the link's own call, which notifies the router of
                // the whole batch.
                link.publish(last.0, last.1)
                    .map(drop)
                    .map_err(|e| link_error(id, e))
            }),
            Op::Subscribe { key, filter } => with(&mut open, key, |id, link| {
                link.subscribe(filter)
                    .map(drop)
                    .map_err(|e| link_error(id, e))
            }),
            Op::Unsubscribe { key, filter } => with(&mut open, key, |id, link| {
                link.unsubscribe(filter)
                    .map(drop)
                    .map_err(|e| link_error(id, e))
            }),
            Op::Close { key } => match open.remove(&key) {
                Some((id, mut link)) => send_blocking(&id, &mut link, disconnect()),
                None => Ok(()),
            },
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "a router operation failed");
        }
    }
}

/// Runs `f` on link `key`; a key that is not open is a bug on our side, reported as such.
fn with(
    open: &mut HashMap<LinkKey, (String, LinkTx)>,
    key: LinkKey,
    f: impl FnOnce(&str, &mut LinkTx) -> Result<()>,
) -> Result<()> {
    match open.get_mut(&key) {
        Some((id, link)) => f(id, link),
        None => Err(Error::UnknownLink(key)),
    }
}
