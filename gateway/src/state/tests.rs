//! Unit tests of the state store against real redb files in temporary directories.
//! They exercise the public API only, plus the metrics the store registers. No test here may
//! depend on timing; the crash test with a real process lives in `tests/tests/store_crash.rs`.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tempfile::TempDir;

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Relay {
    on: bool,
    name: String,
    watts: f64,
}

fn open(dir: &TempDir) -> Store {
    Store::open(dir.path(), &prometheus::Registry::new()).expect("open store")
}

fn key(ns: Namespace, path: &str) -> Key {
    Key::new(ns, path).expect("valid key")
}

#[tokio::test]
async fn put_get_round_trip_typed() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let k = key(Namespace::Devices, "relay-1/state");
    let relay = Relay {
        on: true,
        name: "porch".into(),
        watts: 4.5,
    };
    assert_eq!(store.put(&k, &relay).await.expect("put"), 1);
    let entry: Entry<Relay> = store.get(&k).await.expect("get").expect("present");
    assert_eq!(entry.value, relay);
    assert_eq!(entry.version, 1);
    assert!(
        entry.updated_ms > 1_600_000_000_000,
        "updated_ms is unix ms"
    );

    let missing: Option<Entry<Relay>> = store
        .get(&key(Namespace::Devices, "nope"))
        .await
        .expect("get");
    assert!(missing.is_none());

    // Decoding into the wrong type is a Decode error naming the key.
    match store.get::<u32>(&k).await {
        Err(Error::Decode { key, .. }) => assert_eq!(key, k),
        other => panic!("expected Decode, got {other:?}"),
    }
}

#[tokio::test]
async fn versions_increment_per_key() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let a = key(Namespace::Cluster, "a");
    let b = key(Namespace::Cluster, "b");
    for expected in 1..=5 {
        assert_eq!(store.put(&a, &expected).await.expect("put"), expected);
    }
    assert_eq!(store.put(&b, "x").await.expect("put"), 1);
    let entry: Entry<u64> = store.get(&a).await.expect("get").expect("present");
    assert_eq!((entry.version, entry.value), (5, 5));
    assert_eq!(store.len(), 2);
}

#[tokio::test]
async fn delete_removes_and_reports_existence() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let k = key(Namespace::Node, "boot_count");
    store.put(&k, &1).await.expect("put");
    store.put(&k, &2).await.expect("put");
    assert_eq!(store.len(), 1);
    assert!(store.delete(&k).await.expect("delete"));
    assert!(!store.delete(&k).await.expect("delete again"));
    assert!(store.get::<u32>(&k).await.expect("get").is_none());
    assert_eq!(store.len(), 0);
    assert!(store.is_empty());
    // No tombstone: a new put starts the key's history over.
    assert_eq!(store.put(&k, &3).await.expect("put"), 1);
}

#[tokio::test]
async fn scan_prefix_is_ordered_and_isolated() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    for (ns, path) in [
        (Namespace::Devices, "b"),
        (Namespace::Devices, "ab"),
        (Namespace::Devices, "a/x"),
        (Namespace::Devices, "a"),
        (Namespace::Devices, "a/y"),
        (Namespace::Cluster, "a"),
        (Namespace::Cluster, "a/x"),
        (Namespace::Node, "a"),
    ] {
        store
            .put(&key(ns, path), &format!("{ns}/{path}"))
            .await
            .expect("put");
    }
    let paths = |v: Vec<(Key, Entry<serde_json::Value>)>| -> Vec<String> {
        v.into_iter()
            .map(|(k, e)| {
                assert_eq!(e.value, json!(k.to_string()), "value matches its key");
                k.path
            })
            .collect()
    };
    let all = store
        .scan_prefix(Namespace::Devices, "")
        .await
        .expect("scan");
    assert!(all.iter().all(|(k, _)| k.ns == Namespace::Devices));
    assert_eq!(paths(all), ["a", "a/x", "a/y", "ab", "b"]);
    let a = store
        .scan_prefix(Namespace::Devices, "a")
        .await
        .expect("scan");
    assert_eq!(paths(a), ["a", "a/x", "a/y", "ab"]);
    let a_slash = store
        .scan_prefix(Namespace::Devices, "a/")
        .await
        .expect("scan");
    assert_eq!(paths(a_slash), ["a/x", "a/y"]);
    let cluster = store
        .scan_prefix(Namespace::Cluster, "")
        .await
        .expect("scan");
    assert_eq!(paths(cluster), ["a", "a/x"]);
    let node = store.scan_prefix(Namespace::Node, "a").await.expect("scan");
    assert_eq!(paths(node), ["a"]);
    let none = store
        .scan_prefix(Namespace::Devices, "c")
        .await
        .expect("scan");
    assert!(none.is_empty());
}

#[tokio::test]
async fn values_and_len_survive_close_and_reopen() {
    let dir = TempDir::new().expect("tempdir");
    let registry = prometheus::Registry::new();
    let store = Store::open(dir.path(), &registry).expect("open");
    for i in 0..50u32 {
        store
            .put(
                &key(Namespace::Devices, &format!("d/{i:03}")),
                &json!({ "i": i }),
            )
            .await
            .expect("put");
    }
    store
        .put(
            &key(Namespace::Devices, "d/007"),
            &json!({ "i": 7, "again": true }),
        )
        .await
        .expect("put");
    store
        .delete(&key(Namespace::Devices, "d/049"))
        .await
        .expect("delete");
    // The deleted key stays as a tombstone: a record, not a value.
    assert_eq!((store.len(), store.tombstones()), (50, 1));
    let clone = store.clone();
    store.close().await.expect("close");

    // Every handle is closed now, and close itself reports it the second time.
    let k = key(Namespace::Devices, "d/000");
    assert!(matches!(clone.put(&k, &1).await, Err(Error::Closed)));
    assert!(matches!(clone.delete(&k).await, Err(Error::Closed)));
    assert!(matches!(clone.get::<u32>(&k).await, Err(Error::Closed)));
    assert!(matches!(
        clone.scan_prefix(Namespace::Devices, "").await,
        Err(Error::Closed)
    ));
    assert!(matches!(clone.close().await, Err(Error::Closed)));

    // Reopen on the same registry: the metrics are taken over, not refused.
    let store = Store::open(dir.path(), &registry).expect("reopen");
    assert_eq!((store.len(), store.tombstones()), (50, 1));
    let seven: Entry<serde_json::Value> = store
        .get(&key(Namespace::Devices, "d/007"))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(seven.version, 2);
    assert_eq!(seven.value, json!({ "i": 7, "again": true }));
    let all = store
        .scan_prefix(Namespace::Devices, "d/")
        .await
        .expect("scan");
    assert_eq!(all.len(), 49);
    for (i, (k, e)) in all.iter().enumerate() {
        assert_eq!(k.path, format!("d/{i:03}"));
        assert_eq!(e.value["i"], json!(i));
    }
    let keys = registry
        .gather()
        .into_iter()
        .find(|mf| mf.name() == "roost_state_keys")
        .expect("roost_state_keys registered");
    assert_eq!(keys.get_metric()[0].get_gauge().get_value(), 50.0);
    store.close().await.expect("close");
}

#[tokio::test]
async fn subscribers_see_changes_in_commit_order() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let mut changes = store.subscribe();
    let a = key(Namespace::Devices, "a");
    let b = key(Namespace::Cluster, "b");
    store.put(&a, &1).await.expect("put");
    store.put(&b, &"two").await.expect("put");
    store.put(&a, &3).await.expect("put");
    assert!(store.delete(&a).await.expect("delete"));
    // Deleting a missing key changes nothing and announces nothing.
    assert!(!store.delete(&a).await.expect("delete"));
    store.put(&b, &5).await.expect("put");

    let expected = [
        (a.clone(), 1, Some(json!(1))),
        (b.clone(), 1, Some(json!("two"))),
        (a.clone(), 2, Some(json!(3))),
        // A delete in a replicated namespace is the next version, a tombstone.
        (a.clone(), 3, None),
        (b.clone(), 2, Some(json!(5))),
    ];
    for (key, version, value) in expected {
        // Changes are sent before the write is acknowledged, so they are already queued.
        let change: Change = changes.try_recv().expect("change queued");
        assert_eq!(
            (change.key, change.record.version, change.record.value),
            (key, version, value)
        );
        assert!(!change.remote);
    }
    assert!(changes.try_recv().is_err(), "nothing more");

    store.close().await.expect("close");
    assert!(matches!(
        changes.recv().await,
        Err(broadcast::error::RecvError::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_are_all_acknowledged_and_present() {
    let dir = TempDir::new().expect("tempdir");
    let registry = prometheus::Registry::new();
    let store = Store::open(dir.path(), &registry).expect("open");
    let mut changes = store.subscribe();
    const TASKS: usize = 40;
    const PER_TASK: usize = 25;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            for i in 0..PER_TASK {
                let k = Key::new(Namespace::Devices, format!("t{t:02}/{i:02}"))?;
                let version = store.put(&k, &json!([t, i])).await?;
                assert_eq!(version, 1);
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task ran").expect("all puts acknowledged");
    }
    assert_eq!(store.len(), (TASKS * PER_TASK) as u64);
    let all = store
        .scan_prefix(Namespace::Devices, "t")
        .await
        .expect("scan");
    assert_eq!(all.len(), TASKS * PER_TASK);
    for (k, e) in &all {
        let (t, i) = k.path[1..].split_once('/').expect("t/i");
        assert_eq!(
            e.value,
            json!([
                t.parse::<usize>().expect("t"),
                i.parse::<usize>().expect("i")
            ])
        );
    }

    // Every write was announced exactly once.
    let mut seen = HashSet::new();
    while let Ok(change) = changes.try_recv() {
        assert!(seen.insert(change.key.path), "announced once");
    }
    assert_eq!(seen.len(), TASKS * PER_TASK);

    let families = registry.gather();
    let find = |name: &str| {
        families
            .iter()
            .find(|mf| mf.name() == name)
            .unwrap_or_else(|| panic!("{name} registered"))
    };
    let writes = find("roost_state_writes_total").get_metric()[0]
        .get_counter()
        .get_value();
    assert_eq!(writes, (TASKS * PER_TASK) as f64);
    let latency = find("roost_state_write_seconds").get_metric()[0].get_histogram();
    assert_eq!(latency.get_sample_count(), (TASKS * PER_TASK) as u64);
    let batches = find("roost_state_commit_batch_size").get_metric()[0].get_histogram();
    assert_eq!(batches.get_sample_sum(), (TASKS * PER_TASK) as f64);
    assert!(batches.get_sample_count() <= (TASKS * PER_TASK) as u64);
    let errors = find("roost_state_write_errors_total").get_metric()[0]
        .get_counter()
        .get_value();
    assert_eq!(errors, 0.0);
    store.close().await.expect("close");
}

#[tokio::test]
async fn invalid_keys_are_rejected() {
    assert!(matches!(
        Key::new(Namespace::Devices, ""),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        Key::new(Namespace::Devices, "a\0b"),
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        Key::new(Namespace::Devices, "x".repeat(MAX_PATH_LEN + 1)),
        Err(Error::InvalidKey { .. })
    ));
    assert!(Key::new(Namespace::Devices, "x".repeat(MAX_PATH_LEN)).is_ok());
    let k = key(Namespace::Cluster, "lease/holder");
    assert_eq!(k.to_string(), "cluster/lease/holder");

    // A key built by hand from the public fields is checked again by the store.
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let bad = Key {
        ns: Namespace::Node,
        path: String::new(),
    };
    assert!(matches!(
        store.put(&bad, &1).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        store.get::<u32>(&bad).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        store.scan_prefix(Namespace::Node, "a\0").await,
        Err(Error::InvalidKey { .. })
    ));
    assert_eq!(store.len(), 0);
}

#[test]
fn namespaces_round_trip_their_names() {
    for ns in Namespace::ALL {
        assert_eq!(Namespace::parse(ns.as_str()), Some(ns));
    }
    assert_eq!(Namespace::Node.as_str(), "node");
    assert_eq!(Namespace::Devices.as_str(), "devices");
    assert_eq!(Namespace::Cluster.as_str(), "cluster");
    assert!(!Namespace::Node.is_replicated());
    assert!(Namespace::Devices.is_replicated() && Namespace::Cluster.is_replicated());
    assert_eq!(Namespace::parse("nodes"), None);
}

#[test]
fn second_open_of_the_same_file_fails() {
    let dir = TempDir::new().expect("tempdir");
    let _store = open(&dir);
    let second = Store::open(dir.path(), &prometheus::Registry::new());
    assert!(matches!(second, Err(Error::Open { .. })), "{second:?}");
}

#[tokio::test]
async fn unencodable_value_fails_alone() {
    let dir = TempDir::new().expect("tempdir");
    let registry = prometheus::Registry::new();
    let store = Store::open(dir.path(), &registry).expect("open");
    let k = key(Namespace::Devices, "odd");
    // JSON object keys must be strings; a tuple key cannot be encoded.
    let odd: std::collections::HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
    match store.put(&k, &odd).await {
        Err(Error::Encode { key, .. }) => assert_eq!(key, k),
        other => panic!("expected Encode, got {other:?}"),
    }
    assert_eq!(store.put(&k, &"fine").await.expect("next put"), 1);
    let errors = registry
        .gather()
        .into_iter()
        .find(|mf| mf.name() == "roost_state_write_errors_total")
        .expect("registered");
    assert_eq!(errors.get_metric()[0].get_counter().get_value(), 1.0);
}

fn record(origin: &str, term: u64, version: u64, value: Option<serde_json::Value>) -> Record {
    Record {
        version,
        term,
        origin: origin.into(),
        updated_ms: 1_000,
        value,
    }
}

#[tokio::test]
async fn peers_records_apply_only_when_ahead_and_announce_as_remote() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let mut changes = store.subscribe();
    let k = key(Namespace::Cluster, "runtime/porch");
    let v = |n: i64| Some(json!(n));
    let outcomes = store
        .apply(
            vec![
                (k.clone(), record("node-b", 2, 5, v(1))),
                // Older version of the same term, then an older term with a higher version.
                (k.clone(), record("node-b", 2, 4, v(0))),
                (k.clone(), record("node-c", 1, 99, v(9))),
                (k.clone(), record("node-b", 2, 5, v(1))),
                // Same term and version from another node: the tie-break decides, and says so.
                (k.clone(), record("node-c", 2, 5, v(2))),
            ],
            0,
        )
        .await
        .expect("apply");
    assert_eq!(outcomes[0], Outcome::Applied { conflict: false });
    assert!(matches!(&outcomes[1], Outcome::Stale { stored } if stored.version == 5));
    assert!(matches!(&outcomes[2], Outcome::Stale { stored } if stored.term == 2));
    assert_eq!(outcomes[3], Outcome::Duplicate);
    assert_eq!(outcomes[4], Outcome::Applied { conflict: true });
    let stored = store.record(&k).await.expect("record").expect("present");
    assert_eq!(stored, record("node-c", 2, 5, v(2)));
    let first = changes.try_recv().expect("a change");
    assert!(first.remote);
    assert_eq!(first.record.origin, "node-b");

    // A local write below the stored term is refused: the writer was replaced.
    let refused = store.put_as(&k, &json!(7), 1, &Arc::from("node-a")).await;
    assert!(matches!(
        refused,
        Err(Error::StaleTerm {
            term: 1,
            stored: 2,
            ..
        })
    ));
    assert_eq!(
        store
            .put_as(&k, &json!(7), 3, &Arc::from("node-a"))
            .await
            .expect("put"),
        6
    );
}

#[tokio::test]
async fn tombstones_hide_keys_continue_versions_and_can_be_forgotten() {
    let dir = TempDir::new().expect("tempdir");
    let store = open(&dir);
    let k = key(Namespace::Devices, "node-a/lamp");
    store.put(&k, &json!({"on": true})).await.expect("put");
    assert!(store.delete(&k).await.expect("delete"));
    assert!(store
        .get::<serde_json::Value>(&k)
        .await
        .expect("get")
        .is_none());
    assert!(store
        .scan_prefix(Namespace::Devices, "")
        .await
        .expect("scan")
        .is_empty());
    let tomb = store
        .record(&k)
        .await
        .expect("record")
        .expect("a tombstone");
    assert_eq!((tomb.version, tomb.is_tombstone()), (2, true));
    assert_eq!(store.tombstones(), 1);
    // A put after a delete goes on from the tombstone's version.
    assert_eq!(store.put(&k, &json!({"on": false})).await.expect("put"), 3);
    assert_eq!(store.tombstones(), 0);
    // Forgetting removes only the version asked for.
    assert!(!store.forget(&k, 2).await.expect("forget"));
    assert!(store.forget(&k, 3).await.expect("forget"));
    assert!(store.record(&k).await.expect("record").is_none());
    // Versions never go back: a key written anew starts above what was forgotten, and the
    // floor that says so is the only record left.
    let floor: Entry<u64> = store
        .get(&key(Namespace::Node, "state/version_floor"))
        .await
        .expect("get")
        .expect("the floor is kept");
    assert_eq!(floor.value, 3);
    let other = key(Namespace::Devices, "node-a/new");
    assert_eq!(store.put(&other, &1).await.expect("put"), 4);
    assert!(store.delete(&other).await.expect("delete"));
    assert!(store.forget(&other, 5).await.expect("forget"));
    assert_eq!(store.len(), 1);

    // An old tombstone for a key with no record is not stored.
    let outcomes = store
        .apply(vec![(k.clone(), record("node-a", 0, 9, None))], 5_000)
        .await
        .expect("apply");
    assert_eq!(outcomes, vec![Outcome::Expired]);
    assert_eq!(store.len(), 1);

    // The floor survives a reopen.
    store.close().await.expect("close");
    let store = open(&dir);
    assert_eq!(store.put(&k, &json!(1)).await.expect("put"), 6);
}

#[tokio::test]
async fn keys_with_mqtt_wildcards_are_refused() {
    for path in ["a/+/b", "a/#", "#"] {
        assert!(matches!(
            Key::new(Namespace::Devices, path),
            Err(Error::InvalidKey { .. })
        ));
    }
}
