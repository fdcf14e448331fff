//! Property tests of the serial codecs, the bounded stand-in for fuzzing in the test command:
//! random bytes, fed in random pieces, never panic a decoder, and every call either waits for
//! more or consumes input (so a reader can never spin); and what one side encodes, the other
//! reads back unchanged, however the bytes are split.

use bytes::BytesMut;
use proptest::prelude::*;
use roost_firmware_bridge::firmata::{self, FromBoard, ToBoard};
use roost_firmware_bridge::jsonl::{self, DeviceMessage, NodeMessage, Value};
use tokio_util::codec::{Decoder, Encoder};

/// Feeds `bytes` to `decoder` in pieces of the given sizes, draining after each, and checks
/// that each `Some` consumed bytes; returns how many items came out.
fn feed<D: Decoder>(decoder: &mut D, bytes: &[u8], pieces: &[usize]) -> usize
where
    D::Error: std::fmt::Debug,
{
    let mut buf = BytesMut::new();
    let mut rest = bytes;
    let mut items = 0;
    let mut sizes = pieces.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            let before = buf.len();
            match decoder
                .decode(&mut buf)
                .expect("no I/O error from bytes in memory")
            {
                Some(_) => {
                    items += 1;
                    assert!(
                        buf.len() < before || before == 0,
                        "an item without consuming input"
                    );
                }
                None => break,
            }
        }
    }
    items
}

fn small_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('Z'),
            Just('é'),
            Just('°'),
            Just('.'),
            Just(' ')
        ],
        0..20,
    )
    .prop_map(|c| c.into_iter().collect())
}

fn from_board() -> impl Strategy<Value = FromBoard> {
    prop_oneof![
        (0u8..16, any::<u8>()).prop_map(|(port, pins)| FromBoard::DigitalPort { port, pins }),
        (0u8..16, 0u16..1 << 14).prop_map(|(channel, value)| FromBoard::Analog { channel, value }),
        (0u8..128, 0u8..128).prop_map(|(major, minor)| FromBoard::Version { major, minor }),
        (0u8..128, 0u8..128, small_text()).prop_map(|(major, minor, name)| FromBoard::Firmware {
            major,
            minor,
            name
        }),
        proptest::collection::vec(
            proptest::collection::vec((0u8..0x7F, 0u8..128), 0..5),
            0..10
        )
        .prop_map(FromBoard::Capabilities),
        proptest::collection::vec(proptest::option::of(0u8..0x7F), 0..20)
            .prop_map(FromBoard::AnalogMapping),
        (0u8..128, 0u8..128, 0u32..1 << 28).prop_map(|(pin, mode, state)| FromBoard::PinState {
            pin,
            mode,
            state
        }),
        small_text().prop_map(FromBoard::Text),
    ]
}

fn to_board() -> impl Strategy<Value = ToBoard> {
    prop_oneof![
        Just(ToBoard::QueryVersion),
        Just(ToBoard::QueryFirmware),
        Just(ToBoard::QueryCapabilities),
        Just(ToBoard::QueryAnalogMapping),
        Just(ToBoard::Reset),
        (0u8..128).prop_map(|pin| ToBoard::QueryPinState { pin }),
        (0u8..128, 0u8..128).prop_map(|(pin, mode)| ToBoard::SetPinMode { pin, mode }),
        (0u8..128, any::<bool>()).prop_map(|(pin, high)| ToBoard::SetDigital { pin, high }),
        (0u8..128, 0u32..1 << 28).prop_map(|(pin, value)| ToBoard::AnalogWrite { pin, value }),
        (0u8..16, any::<bool>())
            .prop_map(|(channel, enable)| ToBoard::ReportAnalog { channel, enable }),
        (0u8..16, any::<bool>()).prop_map(|(port, enable)| ToBoard::ReportDigital { port, enable }),
        (0u16..1 << 14).prop_map(|ms| ToBoard::SamplingInterval { ms }),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        (-1.0e6f64..1.0e6).prop_map(|n| Value::Number((n * 100.0).round() / 100.0)),
    ]
}

fn device_message() -> impl Strategy<Value = DeviceMessage> {
    prop_oneof![
        small_text().prop_map(|firmware| DeviceMessage::Hello { firmware }),
        (small_text(), value())
            .prop_map(|(channel, value)| DeviceMessage::State { channel, value }),
        small_text().prop_map(|message| DeviceMessage::Error { message }),
    ]
}

fn node_message() -> impl Strategy<Value = NodeMessage> {
    prop_oneof![
        Just(NodeMessage::Query),
        (small_text(), value()).prop_map(|(channel, value)| NodeMessage::Set { channel, value }),
        (small_text(), any::<u32>()).prop_map(|(channel, ms)| NodeMessage::Press { channel, ms }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_any_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        pieces in proptest::collection::vec(1usize..300, 1..8),
    ) {
        feed(&mut firmata::HostSide::default(), &bytes, &pieces);
        feed(&mut firmata::BoardSide::default(), &bytes, &pieces);
        feed(&mut jsonl::NodeSide::default(), &bytes, &pieces);
        feed(&mut jsonl::DeviceSide::default(), &bytes, &pieces);
    }

    #[test]
    fn firmata_board_messages_read_back(
        said in proptest::collection::vec(from_board(), 1..10),
        pieces in proptest::collection::vec(1usize..64, 1..6),
    ) {
        let mut wire = BytesMut::new();
        let mut board = firmata::BoardSide::default();
        for m in &said {
            board.encode(m, &mut wire).expect("encodes");
        }
        let mut host = firmata::HostSide::default();
        let mut read = Vec::new();
        let mut buf = BytesMut::new();
        let mut sizes = pieces.iter().cycle();
        while !wire.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).min(wire.len());
            buf.extend_from_slice(&wire.split_to(n));
            while let Some(item) = host.decode(&mut buf).expect("no I/O error") {
                read.push(item);
            }
        }
        prop_assert_eq!(read, said.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn firmata_host_messages_read_back(said in proptest::collection::vec(to_board(), 1..10)) {
        let mut wire = BytesMut::new();
        let mut host = firmata::HostSide::default();
        for m in &said {
            host.encode(m, &mut wire).expect("encodes");
        }
        let mut board = firmata::BoardSide::default();
        let mut read = Vec::new();
        while let Some(item) = board.decode(&mut wire).expect("no I/O error") {
            read.push(item);
        }
        prop_assert_eq!(read, said.into_iter().map(Ok).collect::<Vec<_>>());
    }

    #[test]
    fn json_lines_read_back_both_ways(
        up in proptest::collection::vec(device_message(), 1..10),
        down in proptest::collection::vec(node_message(), 1..10),
    ) {
        let mut wire = BytesMut::new();
        let mut device = jsonl::DeviceSide::default();
        let mut node = jsonl::NodeSide::default();
        for m in &up {
            device.encode(m, &mut wire).expect("encodes");
        }
        let mut read = Vec::new();
        while let Some(item) = node.decode(&mut wire).expect("no I/O error") {
            read.push(item);
        }
        prop_assert_eq!(read, up.into_iter().map(Ok).collect::<Vec<_>>());
        for m in &down {
            node.encode(m, &mut wire).expect("encodes");
        }
        let mut read = Vec::new();
        while let Some(item) = device.decode(&mut wire).expect("no I/O error") {
            read.push(item);
        }
        prop_assert_eq!(read, down.into_iter().map(Ok).collect::<Vec<_>>());
    }
}
