//! Writes one node's share of the replication tests' write stream through its state API
//! (`roost_tests::state::write_stream`), for tests that must write from inside a network
//! namespace (`ip netns exec <ns> state_load ...`). Prints what it wrote last to each key as
//! one JSON object (`{"devices/<node>/k001": 41, "devices/<node>/k006": null, ...}`).
//!
//! Usage: `state_load <http address> <node id> <first op> <end op>`.

use std::net::SocketAddr;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, node, first, end] = args.as_slice() else {
        eprintln!("usage: state_load <http address> <node id> <first op> <end op>");
        std::process::exit(2);
    };
    let parsed = (
        addr.parse::<SocketAddr>(),
        first.parse::<u64>(),
        end.parse::<u64>(),
    );
    let (Ok(addr), Ok(first), Ok(end)) = parsed else {
        eprintln!("state_load: the address must be ip:port and the ops numbers");
        std::process::exit(2);
    };
    let expected = roost_tests::state::write_stream(addr, node, first..end);
    println!(
        "{}",
        serde_json::to_string(&expected).unwrap_or_else(|_| "{}".to_owned())
    );
}
