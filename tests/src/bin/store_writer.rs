//! A helper process for the state store crash test (`tests/tests/store_crash.rs`): it writes a
//! burst of keys through the real [`Store`] so the test can SIGKILL it mid-burst and check what
//! survived. Not shipped; not part of the `roost` binary.
//!
//! Usage: `store_writer <data_dir> <count>`. Writes `devices/burst/{i:06}` = `{"i": i}` for
//! `i` in `0..count` with up to 64 puts in flight, prints `ack <i>` once every put with index
//! `<= i` is acknowledged (one line per index, flushed), then `done`, then closes the store.

use std::error::Error as StdError;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use roost_gateway::state::{Error, Key, Namespace, Store};
use serde_json::json;
use tokio::task::JoinSet;

/// Puts in flight at once: enough for the writer to group several into one commit.
const IN_FLIGHT: usize = 64;

// One thread on purpose: tasks are first polled in the order they are spawned and the store's
// bounded queue hands out slots first come, first served, so puts enter the store in index
// order. The store promises a prefix in queue order; this makes that a prefix of indices,
// which is what the crash test checks.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("store_writer: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn StdError>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(count), None) = (args.next(), args.next(), args.next()) else {
        return Err("usage: store_writer <data_dir> <count>".into());
    };
    let count: usize = count.parse()?;
    let registry = prometheus::Registry::new();
    let store = Store::open(Path::new(&dir), &registry)?;

    let mut in_flight = JoinSet::new();
    let mut acked = vec![false; count];
    // Every put below `prefix` has been acknowledged and printed.
    let mut prefix = 0;
    let mut next = 0;
    // Printing blocks this task when the reader falls behind; that is the point: the burst
    // cannot run far ahead of what the test has seen.
    let mut out = std::io::stdout().lock();
    while prefix < count {
        while next < count && in_flight.len() < IN_FLIGHT {
            let store = store.clone();
            let i = next;
            in_flight.spawn(async move {
                let key = Key::new(Namespace::Devices, format!("burst/{i:06}"))?;
                store.put(&key, &json!({ "i": i })).await?;
                Ok::<usize, Error>(i)
            });
            next += 1;
        }
        let Some(joined) = in_flight.join_next().await else {
            break;
        };
        acked[joined??] = true;
        let before = prefix;
        while prefix < count && acked[prefix] {
            writeln!(out, "ack {prefix}")?;
            prefix += 1;
        }
        if prefix > before {
            out.flush()?;
        }
    }
    writeln!(out, "done")?;
    out.flush()?;
    store.close().await?;
    report_commits(&registry, count);
    Ok(())
}

/// Tells stderr how many commits (fsyncs) the burst took, for whoever reads the test log.
fn report_commits(registry: &prometheus::Registry, count: usize) {
    let commits = registry
        .gather()
        .iter()
        .find(|mf| mf.name() == "roost_state_commit_batch_size")
        .and_then(|mf| mf.get_metric().first())
        .map(|m| m.get_histogram().get_sample_count());
    if let Some(commits) = commits {
        eprintln!("store_writer: {count} writes in {commits} commits");
    }
}
