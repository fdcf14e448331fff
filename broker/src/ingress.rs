//! The way through rumqttd's router: every message is appended once to the router's log by
//! the publisher link and read back, in order, by the dispatcher's reader link
//! (`fanout.rs`). A thread of its own owns the publisher link, because rumqttd's link sends
//! block on the router's bounded channel: senders queue here (async, bounded) instead of
//! blocking the node's workers.
//!
//! Receiving is async (`next_forward`, `reschedule`), on the dispatcher's task.

use bytes::Bytes;
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::{Packet, Publish};
use rumqttd::Notification;
use tokio::sync::mpsc;

use crate::embed::{self, link_error, LinkFactory};
use crate::error::{Error, Result};

/// Messages queued before senders wait. Small: the router budget (`intake.rs`) already
/// bounds what is on its way through the router.
const QUEUE: usize = 256;

/// The filter the reader link subscribes to: every topic. Topics starting with `$` cross
/// the router escaped (`envelope::router_topic`), so `#` carries them too.
const EVERYTHING: &str = "#";

/// Handle to the ingress thread; cheap to clone.
#[derive(Clone)]
pub(crate) struct Ingress {
    messages: mpsc::Sender<(Bytes, Bytes)>,
}

impl Ingress {
    /// Opens the publisher and reader links and starts the thread; returns the handle and
    /// the reader link's receiving half, for the dispatcher. The thread ends when every
    /// handle is dropped.
    pub(crate) fn start(links: LinkFactory) -> Result<(Ingress, LinkRx)> {
        let prefix = embed::INTERNAL_ID_PREFIX;
        let (publisher, publisher_rx) = links(&format!("{prefix}publisher"))?;
        let reader_id = format!("{prefix}reader");
        let (mut reader, reader_rx) = links(&reader_id)?;
        reader
            .subscribe(EVERYTHING)
            .map_err(|e| link_error(&reader_id, e))?;
        let (messages, queue) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("roost-ingress".into())
            .spawn(move || run(publisher, reader, queue))
            .map_err(|e| Error::Startup(format!("spawning the ingress thread: {e}")))?;
        // The publisher link subscribes to nothing, but the router may still ask it to
        // reschedule: keep it drained so the router never stalls it.
        tokio::spawn(async move {
            let mut rx = publisher_rx;
            loop {
                match next_forward(&mut rx).await {
                    Next::Message(..) => {}
                    Next::Reschedule if reschedule(&rx).await => {}
                    Next::Reschedule | Next::Gone => return,
                }
            }
        });
        Ok((Ingress { messages }, reader_rx))
    }

    /// Appends one message (its router topic and envelope, `envelope.rs`) to the router's
    /// log; waits while the queue is full.
    pub(crate) async fn publish(&self, topic: Bytes, envelope: Bytes) -> Result<()> {
        self.messages
            .send((topic, envelope))
            .await
            .map_err(|_| Error::Closed)
    }
}

/// What the reader link has next.
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

/// Messages handed to the router per notification at most.
const BATCH: usize = 256;

/// The ingress thread: appends queued messages in order until every handle is gone.
///
/// Messages that are waiting are handed over in one batch with one notification: every
/// notification takes a slot of the router's channel, where the reader's request to be fed
/// again waits its turn, so fewer notifications keep the reader fed in step. `_reader` is
/// the reader link's sending half, kept open for as long as the thread runs.
fn run(mut publisher: LinkTx, _reader: LinkTx, mut queue: mpsc::Receiver<(Bytes, Bytes)>) {
    let id = "publisher";
    while let Some(mut last) = queue.blocking_recv() {
        for _ in 1..BATCH {
            let Ok(next) = queue.try_recv() else { break };
            let (topic, envelope) = std::mem::replace(&mut last, next);
            publisher
                .buffer()
                .push_back(Packet::Publish(Publish::new(topic, envelope, false), None));
        }
        // The last one goes through the link's own call, which notifies the router of the
        // whole batch.
        if let Err(e) = publisher.publish(last.0, last.1) {
            tracing::error!(error = %link_error(id, e), "the router refused a message");
        }
    }
}
