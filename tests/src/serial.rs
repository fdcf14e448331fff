//! Serial device emulators on real pseudo-terminals, for tests of `roost` with serial devices.
//! [`Emulator::plug`] opens a pty pair, points a stable path (a symlink, as
//! `/dev/serial/by-id/...` is) at its device end for the node to open, and speaks a protocol on
//! the other end from a thread of its own; dropping it unplugs the device (the pty goes away,
//! the node's open port fails). Plugging again at the same path is a replug.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use bytes::BytesMut;
use futures_util::StreamExt;
use roost_firmware_bridge::codec::Malformed;
use roost_firmware_bridge::firmata::{self, mode, FromBoard, ToBoard};
use roost_firmware_bridge::jsonl::{self, DeviceMessage, NodeMessage};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Decoder, Encoder, FramedRead};

use crate::EVENT_TIMEOUT;

/// A device on a pseudo-terminal; dropping it unplugs it.
pub struct Emulator<T> {
    /// What the node sent, decoded, in order.
    heard: std_mpsc::Receiver<T>,
    /// Bytes for the device to send.
    say: mpsc::UnboundedSender<Vec<u8>>,
    unplug: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + std::fmt::Debug + 'static> Emulator<T> {
    /// Plugs a device in at `link`: reads the node's frames with `decoder`, and writes what
    /// `answer` returns for each (nothing for an empty answer) before the test sees it.
    pub fn plug<D>(
        link: &Path,
        decoder: D,
        mut answer: impl FnMut(&T) -> Vec<u8> + Send + 'static,
    ) -> Emulator<T>
    where
        D: Decoder<Item = Result<T, Malformed>, Error = std::io::Error> + Send + 'static,
    {
        let (heard_tx, heard) = std_mpsc::channel();
        let (say, mut to_say) = mpsc::unbounded_channel::<Vec<u8>>();
        let (unplug, mut unplugged) = oneshot::channel();
        let (ready_tx, ready) = std_mpsc::channel();
        let link = link.to_owned();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the emulator");
            runtime.block_on(async move {
                // The node's end stays open until the unplug, so that the device end's reads
                // do not fail before the node opens it.
                let (device, held, name) = open_pty();
                repoint(&link, Path::new(&name));
                ready_tx.send(()).expect("the test waits");
                // A pty's master is a stream like a pipe's ends: non-blocking, readable and
                // writable through the runtime.
                let writer = device.try_clone().expect("the pty's device end duplicates");
                let mut write =
                    pipe::Sender::from_file_unchecked(writer).expect("the pty registers");
                let read = pipe::Receiver::from_file_unchecked(device).expect("the pty registers");
                let mut frames = FramedRead::new(read, decoder);
                loop {
                    tokio::select! {
                        _ = &mut unplugged => break,
                        Some(bytes) = to_say.recv() => {
                            write.write_all(&bytes).await.expect("the emulator writes");
                        }
                        frame = frames.next() => match frame {
                            Some(Ok(Ok(item))) => {
                                let reply = answer(&item);
                                if !reply.is_empty() {
                                    write.write_all(&reply).await.expect("the emulator writes");
                                }
                                let _ = heard_tx.send(item);
                            }
                            // Something the emulator cannot read: the test's `expect` calls
                            // miss the frame they wait for, and say what they heard.
                            Some(Ok(Err(_))) => {}
                            Some(Err(_)) | None => break,
                        },
                    }
                }
                drop(held);
            });
        });
        ready
            .recv_timeout(EVENT_TIMEOUT)
            .expect("the emulator's pty is ready");
        Emulator {
            heard,
            say,
            unplug: Some(unplug),
            thread: Some(thread),
        }
    }

    /// Sends `bytes` as the device.
    pub fn say(&self, bytes: Vec<u8>) {
        self.say.send(bytes).expect("the emulator runs");
    }

    /// Waits for a frame from the node matching `want`, skipping others; panics after
    /// [`EVENT_TIMEOUT`] with what was heard.
    pub fn expect(&self, want: impl Fn(&T) -> bool, what: &str) -> T {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            match self
                .heard
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(frame) if want(&frame) => return frame,
                Ok(frame) => seen.push(frame),
                Err(_) => panic!("the emulator never heard {what}; it heard {seen:?}"),
            }
        }
    }
}

impl<T> Drop for Emulator<T> {
    fn drop(&mut self) {
        if let Some(unplug) = self.unplug.take() {
            let _ = unplug.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens a pseudo-terminal: its device end (the master), non-blocking and closed on exec (so
/// that no process the tests start keeps it open after an unplug), its node end set to raw
/// mode, and that end's path.
fn open_pty() -> (std::fs::File, std::fs::File, String) {
    let master = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open("/dev/ptmx")
        .expect("/dev/ptmx opens");
    rustix::pty::grantpt(&master).expect("the pty is granted");
    rustix::pty::unlockpt(&master).expect("the pty unlocks");
    let name = rustix::pty::ptsname(&master, Vec::new())
        .expect("the pty's node end has a path")
        .into_string()
        .expect("a pty path is UTF-8");
    let node_end = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&name)
        .expect("the pty's node end opens");
    let mut termios = rustix::termios::tcgetattr(&node_end).expect("the pty's settings");
    termios.make_raw();
    rustix::termios::tcsetattr(&node_end, rustix::termios::OptionalActions::Now, &termios)
        .expect("raw mode");
    (master, node_end, name)
}

/// Points `link` at `target`, atomically (the node may be opening it at that moment).
fn repoint(link: &Path, target: &Path) {
    let fresh: PathBuf = link.with_extension("new");
    let _ = std::fs::remove_file(&fresh);
    std::os::unix::fs::symlink(target, &fresh).expect("a symlink in the test's dir");
    std::fs::rename(&fresh, link).expect("the link replaced");
}

/// A device speaking line-delimited JSON, silent until the test says something.
pub fn json_device(link: &Path) -> Emulator<NodeMessage> {
    Emulator::plug(link, jsonl::DeviceSide::default(), |_| Vec::new())
}

/// One line-delimited JSON message as the device writes it.
pub fn json_line(message: &DeviceMessage) -> Vec<u8> {
    let mut out = BytesMut::new();
    jsonl::DeviceSide::default()
        .encode(message, &mut out)
        .expect("a device message encodes");
    out.to_vec()
}

/// A board running StandardFirmata, Uno-like: pins 0-19, PWM on 3, 5, 6, 9, 10 and 11, analog
/// inputs A0-A5 on pins 14-19. It answers the node's firmware, capability and analog-mapping
/// queries by itself.
pub fn firmata_board(link: &Path) -> Emulator<ToBoard> {
    Emulator::plug(link, firmata::BoardSide::default(), |frame| match frame {
        ToBoard::QueryFirmware => firmata_bytes(&FromBoard::Firmware {
            major: 2,
            minor: 5,
            name: "StandardFirmata.ino".into(),
        }),
        ToBoard::QueryCapabilities => {
            let pins = (0..20u8)
                .map(|pin| {
                    let mut modes = vec![(mode::INPUT, 1), (mode::OUTPUT, 1)];
                    if [3, 5, 6, 9, 10, 11].contains(&pin) {
                        modes.push((mode::PWM, 8));
                    }
                    if pin >= 14 {
                        modes.push((mode::ANALOG, 10));
                    }
                    modes
                })
                .collect();
            firmata_bytes(&FromBoard::Capabilities(pins))
        }
        ToBoard::QueryAnalogMapping => firmata_bytes(&FromBoard::AnalogMapping(
            (0..20u8).map(|pin| pin.checked_sub(14)).collect(),
        )),
        _ => Vec::new(),
    })
}

/// One Firmata message as the board writes it.
pub fn firmata_bytes(message: &FromBoard) -> Vec<u8> {
    let mut out = BytesMut::new();
    firmata::BoardSide::default()
        .encode(message, &mut out)
        .expect("a board message encodes");
    out.to_vec()
}
