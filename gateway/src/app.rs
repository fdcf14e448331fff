//! One node's life: start every part in order, announce the node, run until SIGTERM or
//! Ctrl-C, then shut down within the contract's 5 s: announce offline, stop every task,
//! flush the state store, exit 0.
//!
//! Start order: telemetry, state store, broker (with the mesh), cluster coordinator, state
//! replication, devices (outputs to their safe states), HTTP, presence. At the stop, a leader
//! hands the lease over first, then the devices go to their safe states and offline. Each part
//! gets a child of the root cancellation token and runs on the shared task tracker.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use roost_broker::{Broker, BrokerClient, BrokerSettings, MeshPeer, MeshSettings};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{ClusterView, Event};
use crate::config::Settings;
use crate::coordinator::{Coordinator, Setup};
use crate::demo;
use crate::devices::{self, Devices};
use crate::http::{self, AppState};
use crate::lease::Timing;
use crate::logging;
use crate::replication;
use crate::state::Store;
use crate::telemetry::Telemetry;
use crate::topics::Topics;

/// Everything after the stop signal fits in this, inside the contract's 5 s.
const SHUTDOWN_BUDGET: Duration = Duration::from_millis(4000);
/// Part of the budget for announcing offline (the broker routing it, then the drain below).
const ANNOUNCE_BUDGET: Duration = Duration::from_millis(1500);
/// Part of the budget kept for flushing the state store after the tasks stopped.
const FLUSH_RESERVE: Duration = Duration::from_millis(1000);
/// Time for the broker to hand the offline announcement to connected clients before their
/// connections close; rumqttd gives no signal that its outgoing buffers are written.
const ANNOUNCE_DRAIN: Duration = Duration::from_millis(200);
/// What blocking work still running when the node returns gets before the runtime drops it.
const RUNTIME_GRACE: Duration = Duration::from_millis(500);

/// Runs a node until it is told to stop. Builds the runtime; called once by `main`.
pub fn run(settings: Settings) -> anyhow::Result<()> {
    logging::init(&settings.log);
    // Each MQTT client holds a socket; the usual soft limit of 1024 would cap a node below
    // mqtt.max_connections' default of 1000 once files and listeners are counted.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("roost")
        .build()
        .context("building the async runtime")?;
    let outcome = runtime.block_on(run_node(settings));
    runtime.shutdown_timeout(RUNTIME_GRACE);
    outcome
}

async fn run_node(settings: Settings) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stop_signals = StopSignals::install();
    let node = settings.node.id.clone();
    let telemetry = Telemetry::new(node.as_str()).context("registering metrics")?;
    let registry = telemetry.registry().clone();
    let store = Store::open(&settings.node.data_dir, &registry).with_context(|| {
        format!(
            "opening the state store in {}",
            settings.node.data_dir.display()
        )
    })?;

    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let broker = Broker::start(
        BrokerSettings {
            listen: settings.mqtt.listen,
            max_connections: settings.mqtt.max_connections,
            max_packet_size: settings.mqtt.max_packet_size,
            connect_timeout: settings.mqtt.connect_timeout,
            send_timeout: settings.mqtt.send_timeout,
            max_session_expiry: settings.mqtt.max_session_expiry,
            max_queued_messages: settings.mqtt.max_queued_messages,
            data_dir: settings.node.data_dir.clone(),
            node: node.to_string(),
            mesh: MeshSettings {
                cluster: settings.cluster.name.clone(),
                peers: settings
                    .cluster
                    .peers
                    .iter()
                    .map(|p| MeshPeer {
                        id: p.id.to_string(),
                        addr: p.mqtt.to_string(),
                    })
                    .collect(),
            },
        },
        &registry,
        token.child_token(),
        &tracker,
    )
    .await
    .context("starting the MQTT broker")?;
    let client = broker.client();

    let view = ClusterView::new(&settings, Some(broker.peer_links()));
    let topics = Topics::new(&settings.mqtt.topic_prefix, &settings.cluster.name);
    let witness = settings.cluster.witness.as_ref().map(|w| {
        crate::witness::WitnessLink::start(w, &settings.cluster.name, &node, &topics, &tracker)
    });
    let coordinator = Coordinator::start(
        Setup {
            client: client.clone(),
            store: store.clone(),
            topics: topics.clone(),
            view: view.clone(),
            node: node.clone(),
            peers: settings
                .cluster
                .peers
                .iter()
                .map(|p| p.id.clone())
                .collect(),
            timing: Timing {
                heartbeat: settings.cluster.heartbeat_interval,
                down_after: settings.cluster.heartbeat_interval
                    * settings.cluster.missed_heartbeats,
            },
            started,
            witness,
        },
        &registry,
        &tracker,
    )
    .await
    .context("starting the cluster coordinator")?;

    let replicated = replication::start(
        replication::Setup {
            client: client.clone(),
            store: store.clone(),
            view: view.clone(),
            links: Some(broker.peer_links()),
            node: node.clone(),
            members: std::iter::once(node.to_string())
                .chain(settings.cluster.peers.iter().map(|p| p.id.to_string()))
                .collect(),
            topics: topics.clone(),
            tuning: replication::Tuning {
                tombstone_ttl: settings.state.tombstone_ttl,
                anti_entropy_interval: settings.state.anti_entropy_interval,
            },
        },
        &registry,
        &tracker,
        token.child_token(),
    )
    .await
    .context("starting state replication")?;

    let mut all_devices = settings.devices.clone();
    if settings.demo.enabled {
        all_devices.extend(demo::devices());
    }
    let device_count = all_devices.len();
    let devices = Devices::start(
        devices::Setup {
            client: client.clone(),
            state: replicated.clone(),
            topics: topics.clone(),
            node: node.clone(),
            gpio: settings.gpio,
            devices: all_devices,
        },
        &registry,
        &tracker,
        token.child_token(),
    )
    .await
    .context("starting the devices")?;

    let http_listener = TcpListener::bind(settings.http.listen)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", settings.http.listen))?;
    let http_addr = http_listener.local_addr()?;
    let state = AppState::new(http::Inner {
        node: node.to_string(),
        cluster: settings.cluster.name.clone(),
        started,
        view: view.clone(),
        broker: broker.metrics(),
        mqtt_addr: broker.local_addr(),
        store: store.clone(),
        replicated: replicated.clone(),
        devices: devices.clone(),
        telemetry,
        shutdown: token.clone(),
    });
    let (fatal_tx, mut fatal_rx) = tokio::sync::mpsc::channel::<anyhow::Error>(4);
    {
        let token = token.child_token();
        let fatal = fatal_tx.clone();
        tracker.spawn(async move {
            let served = axum::serve(http_listener, http::router(state))
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
            if let Err(e) = served {
                let _ = fatal
                    .send(anyhow::Error::new(e).context("the HTTP server failed"))
                    .await;
            }
        });
    }

    let presence = Presence {
        client: client.clone(),
        topics: topics.clone(),
        view: view.clone(),
        node: node.to_string(),
    };
    presence.announce_online().await?;

    drop(fatal_tx);

    print_banner(
        &settings,
        broker.local_addr(),
        http_addr,
        &topics,
        device_count,
    );

    let outcome = tokio::select! {
        signal = stop_signals.recv() => {
            tracing::info!(signal, "stopping");
            Ok(())
        }
        Some(e) = fatal_rx.recv() => {
            tracing::error!(error = %format!("{e:#}"), "stopping after a fatal error");
            Err(e)
        }
    };

    let stop_by = tokio::time::Instant::now() + SHUTDOWN_BUDGET;
    // A leader hands the lease over before anything else stops.
    if tokio::time::timeout(ANNOUNCE_BUDGET, coordinator.stop())
        .await
        .is_err()
    {
        tracing::warn!("handing the lease over took too long; stopping anyway");
    }
    if tokio::time::timeout(ANNOUNCE_BUDGET, devices.stop())
        .await
        .is_err()
    {
        tracing::warn!("putting the devices in their safe states took too long; stopping anyway");
    }
    match tokio::time::timeout(ANNOUNCE_BUDGET, presence.announce_offline()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "could not announce offline"),
        Err(_) => tracing::warn!("announcing offline took too long; stopping anyway"),
    }
    token.cancel();
    tracker.close();
    if tokio::time::timeout_at(stop_by - FLUSH_RESERVE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop in time");
    }
    if tokio::time::timeout_at(stop_by, broker.close())
        .await
        .is_err()
    {
        tracing::warn!("the retained messages did not flush in time");
    }
    match tokio::time::timeout_at(stop_by, store.close()).await {
        Ok(result) => result.context("flushing the state store")?,
        Err(_) => anyhow::bail!("the state store did not flush in time"),
    }
    tracing::info!("stopped");
    outcome
}

/// The node's presence on MQTT: its retained status topic and its cluster events.
struct Presence {
    client: BrokerClient,
    topics: Topics,
    view: ClusterView,
    node: String,
}

impl Presence {
    async fn announce_online(&self) -> anyhow::Result<()> {
        let status = self.topics.node_status(&self.node_id()?);
        self.client.publish(&status, "online", true).await?;
        self.event("node_up", &self.node, self.view.term()).await?;
        Ok(())
    }

    /// Publishes `offline` and `node_down`, and waits until the broker has routed them.
    async fn announce_offline(&self) -> anyhow::Result<()> {
        let status = self.topics.node_status(&self.node_id()?);
        let mut echo = self.client.subscribe(&status).await?;
        self.event("node_down", &self.node, self.view.term())
            .await?;
        self.client.publish(&status, "offline", true).await?;
        let routed = async {
            while let Some(m) = echo.recv().await {
                if m.payload.as_ref() == b"offline" {
                    return true;
                }
            }
            false
        };
        // The caller bounds the whole announcement in time.
        if routed.await {
            tokio::time::sleep(ANNOUNCE_DRAIN).await;
        } else {
            tracing::warn!("the offline announcement was not confirmed by the broker");
        }
        Ok(())
    }

    async fn event(&self, event: &str, node: &str, term: u64) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(&Event::now(event, node, term))?;
        self.client
            .publish(&self.topics.events(), payload, false)
            .await?;
        Ok(())
    }

    fn node_id(&self) -> anyhow::Result<crate::config::NodeId> {
        crate::config::NodeId::parse(&self.node).map_err(anyhow::Error::msg)
    }
}

/// SIGTERM and SIGINT (Ctrl-C), watched from the first moment of the node's life so that a
/// stop signal arriving while the node starts is never lost to the default action.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let watch = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(error = %e, signal = name, "cannot watch this stop signal");
                None
            }
        };
        Self {
            term: watch(SignalKind::terminate(), "SIGTERM"),
            int: watch(SignalKind::interrupt(), "SIGINT"),
        }
    }

    /// Resolves with the signal's name once either arrives.
    async fn recv(&mut self) -> &'static str {
        async fn next(stream: &mut Option<tokio::signal::unix::Signal>) {
            match stream {
                Some(stream) => {
                    stream.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.term) => "SIGTERM",
            _ = next(&mut self.int) => "SIGINT",
        }
    }
}

/// Tells a person where everything listens. Tests read the `mqtt://` and `http://` lines.
fn print_banner(
    settings: &Settings,
    mqtt: SocketAddr,
    http: SocketAddr,
    topics: &Topics,
    devices: usize,
) {
    let node = &settings.node.id;
    println!(
        "roost {} — node {node} of cluster {}",
        env!("CARGO_PKG_VERSION"),
        settings.cluster.name
    );
    println!("  MQTT       mqtt://{mqtt}   (MQTT 3.1.1 and 5)");
    println!("  Dashboard  http://{http}/");
    println!("  Health     http://{http}/health");
    println!("  Metrics    http://{http}/metrics");
    println!("  Data       {}", settings.node.data_dir.display());
    if devices > 0 {
        println!(
            "  Devices    {devices} on {}",
            topics.entity_state(node, "+", "+")
        );
    }
    if settings.demo.enabled {
        println!(
            "  Demo       ON/OFF to {}",
            topics.entity_command(node, "demo-relay", "relay")
        );
    }
    println!(
        "  Watch      mosquitto_sub -h {} -p {} -t '{}/#' -v",
        mqtt.ip(),
        mqtt.port(),
        settings.mqtt.topic_prefix
    );
    println!("Ready.");
}
