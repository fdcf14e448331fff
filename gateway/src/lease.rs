//! The leader lease as a pure state machine: heartbeats, votes and hand-overs go in with the
//! time they arrived, and what to persist, publish and announce comes out. No I/O and no
//! clock of its own, so every rule is tested here with made-up times; `coordinator.rs`
//! carries the messages over MQTT and keeps the term and vote on disk.
//!
//! The protocol (docs/cluster.md has the argument):
//! - terms only grow; a node votes at most once per term, and its vote is on disk before it
//!   is sent; a candidate needs a majority of the configured members: at most one leader
//!   per term;
//! - a node only stands when it sees a majority, and only votes when it has not heard a
//!   leader for `down_after` (a live leader is not deposed);
//! - a leader stays leader only while a majority (itself included) acknowledged it within
//!   `0.4 × down_after`, and a follower acknowledges a leader only while it heard it within
//!   `0.4 × down_after`: an old leader has stepped down before any node votes for a new one.
//!
//! An optional witness (an outside MQTT broker, `witness.rs`) counts as one more member
//! that cannot act: its vote in a term goes to the first claim the broker orders, its
//! acknowledgement of a leader is the leader's own heartbeat coming back through it, and a
//! claim of a higher term by another node withdraws that acknowledgement.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The protocol's timings, from `cluster.heartbeat_interval` and `cluster.missed_heartbeats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often every node says it is alive.
    pub heartbeat: Duration,
    /// A member not heard for this long is down (`missed × heartbeat`).
    pub down_after: Duration,
}

impl Timing {
    /// How long a follower keeps acknowledging a leader it stopped hearing, and how long a
    /// leader counts an acknowledgement.
    fn ack_window(&self) -> Duration {
        self.down_after.mul_f64(0.4)
    }

    /// How long a node waits, with no leader heard, before it stands: `down_after`, one
    /// heartbeat more (so voters that heard the leader a little later are past their own
    /// `down_after` too), and up to a quarter of `down_after` of jitter against split votes.
    fn election_timeout(&self, jitter: f64) -> Duration {
        self.down_after + self.heartbeat + self.down_after.mul_f64(0.25 * jitter)
    }

    /// How long a candidate waits for a majority before it stands again in a new term:
    /// one heartbeat and up to half of `down_after`, spread so two candidates that split
    /// the vote do not split it again.
    fn retry(&self, jitter: f64) -> Duration {
        self.heartbeat + self.down_after.mul_f64(0.5 * jitter)
    }
}

/// A node's role in the current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Follows the leader, if any.
    Follower,
    /// Asks for votes.
    Candidate,
    /// Holds the lease.
    Leader,
}

/// What a node says about itself every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender.
    pub node: String,
    /// The sender's process start (random): a different one for the same id is another
    /// process with that id, or a restart.
    pub incarnation: u64,
    /// The sender's term.
    pub term: u64,
    /// The leader it follows (itself when it leads), acknowledged this term.
    pub leader: Option<String>,
    /// The sender's uptime in seconds.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// The sender's version.
    #[serde(default)]
    pub version: String,
}

/// Lease messages other than heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// A candidate asks for votes in `term`.
    VoteRequest {
        /// The candidate's new term.
        term: u64,
        /// The candidate.
        candidate: String,
    },
    /// A vote, or a refusal.
    Vote {
        /// The term voted in (the voter's term when refused).
        term: u64,
        /// The voter.
        voter: String,
        /// The candidate.
        candidate: String,
        /// Whether the vote was given.
        granted: bool,
    },
    /// A leader that stops (clean shutdown) gives up the lease of `term` and names who
    /// should stand first.
    Resign {
        /// The term it led.
        term: u64,
        /// The leader.
        leader: String,
        /// The member that stands at once.
        successor: Option<String>,
    },
}

/// What the state machine asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Keep the term and vote on disk before anything after it is sent.
    Persist {
        /// The term.
        term: u64,
        /// The vote of this term.
        voted_for: Option<String>,
    },
    /// Publish this message.
    Send(Message),
    /// This node was elected for `term`.
    Elected(u64),
    /// This node stopped leading `term` (no majority acknowledged it).
    SteppedDown(u64),
    /// Claim the witness's vote for `term` (a candidate with a witness in sight).
    ClaimWitness(u64),
}

/// The witness broker as the lease counts it.
#[derive(Debug, Default)]
struct Witness {
    /// Since when the witness connection has been up and subscribed, unbroken.
    up_since: Option<Instant>,
    /// When this node's heartbeat as leader of the term came back through the witness.
    echo: Option<(Instant, u64)>,
    /// The highest term another node claimed at the witness.
    highest_claim: u64,
    /// Whether the witness's vote in this term is this node's (a candidate).
    vote: bool,
}

/// What this node knows of one member.
#[derive(Debug, Clone)]
pub struct Seen {
    /// When its last heartbeat arrived.
    pub at: Instant,
    /// Its last heartbeat.
    pub heartbeat: Heartbeat,
}

/// One node's side of the lease.
#[derive(Debug)]
pub struct Lease {
    me: String,
    /// Every configured member, this node included.
    members: BTreeSet<String>,
    timing: Timing,
    term: u64,
    voted_for: Option<String>,
    role: Role,
    /// The leader of `term`, once known.
    leader: Option<String>,
    /// When the leader was last heard (a follower), or elected (the leader itself).
    leader_heard: Option<Instant>,
    /// Votes for this node in `term` (a candidate).
    votes: BTreeSet<String>,
    /// When this node stands next (a follower or candidate).
    stand_at: Instant,
    /// Members' last heartbeats, this node's own excluded.
    seen: BTreeMap<String, Seen>,
    /// The witness, when one is configured.
    witness: Option<Witness>,
}

impl Lease {
    /// A node that starts as a follower of no one, with the term and vote it had on disk.
    /// A node alone in its cluster may stand at once; others first listen for a leader.
    pub fn new(
        me: &str,
        members: impl IntoIterator<Item = String>,
        timing: Timing,
        term: u64,
        voted_for: Option<String>,
        now: Instant,
        jitter: f64,
    ) -> Lease {
        let mut members: BTreeSet<String> = members.into_iter().collect();
        members.insert(me.to_owned());
        let stand_at = if members.len() == 1 {
            now
        } else {
            now + timing.election_timeout(jitter)
        };
        Lease {
            me: me.to_owned(),
            members,
            timing,
            term,
            voted_for,
            role: Role::Follower,
            leader: None,
            leader_heard: None,
            votes: BTreeSet::new(),
            stand_at,
            seen: BTreeMap::new(),
            witness: None,
        }
    }

    /// Counts a witness as one more member (`cluster.witness`).
    pub fn with_witness(mut self) -> Lease {
        self.witness = Some(Witness::default());
        self
    }

    /// Votes needed: a majority of the configured members, the witness included.
    fn quorum(&self) -> usize {
        (self.members.len() + usize::from(self.witness.is_some())) / 2 + 1
    }

    /// Whether the witness may vote: up and subscribed for `down_after`, so that it has
    /// passed on every heartbeat a live leader sent through it in that time.
    fn witness_ready(&self, now: Instant) -> bool {
        self.witness
            .as_ref()
            .and_then(|w| w.up_since)
            .is_some_and(|since| now.duration_since(since) >= self.timing.down_after)
    }

    /// Whether the witness acknowledges this node as leader of the current term.
    fn witness_acks(&self, now: Instant) -> bool {
        self.witness.as_ref().is_some_and(|w| {
            w.highest_claim <= self.term
                && w.echo.is_some_and(|(at, term)| {
                    term == self.term && now.duration_since(at) < self.timing.ack_window()
                })
        })
    }

    /// Whether the witness connection is up and subscribed now.
    pub fn witness_connected(&self) -> bool {
        self.witness.as_ref().is_some_and(|w| w.up_since.is_some())
    }

    /// The witness connection came up and its subscriptions are in place.
    pub fn witness_up(&mut self, now: Instant) {
        if let Some(w) = &mut self.witness {
            w.up_since.get_or_insert(now);
        }
    }

    /// The witness connection broke: it neither votes nor acknowledges until it is back
    /// for `down_after`.
    pub fn witness_down(&mut self) {
        if let Some(w) = &mut self.witness {
            w.up_since = None;
            w.echo = None;
        }
    }

    /// This node's own heartbeat came back through the witness (over a connection that is
    /// up: a late echo from a broken one is not an acknowledgement).
    pub fn on_witness_echo(&mut self, hb: &Heartbeat, now: Instant) {
        let leads = self.role == Role::Leader
            && hb.term == self.term
            && hb.leader.as_deref() == Some(self.me.as_str());
        if let Some(w) = &mut self.witness {
            if leads && w.up_since.is_some() {
                w.echo = Some((now, hb.term));
            }
        }
    }

    /// Another node claimed the witness's vote for `term`: as good as its vote request, and
    /// a leader of a lower term loses the witness's acknowledgement.
    pub fn on_witness_claim(
        &mut self,
        candidate: &str,
        term: u64,
        now: Instant,
        jitter: f64,
    ) -> Vec<Action> {
        if candidate == self.me || !self.members.contains(candidate) {
            return Vec::new();
        }
        if let Some(w) = &mut self.witness {
            w.highest_claim = w.highest_claim.max(term);
        }
        if term <= self.term {
            return Vec::new();
        }
        self.on_message(
            Message::VoteRequest {
                term,
                candidate: candidate.to_owned(),
            },
            now,
            jitter,
        )
    }

    /// The witness ordered this node's claim for `term`: `won` when no other node had
    /// claimed `term` or a higher one before it; `highest_other` is the highest term another
    /// node had claimed. A result that arrives while the witness is not ready (its connection
    /// broke since the claim) counts for nothing; a lost claim teaches the term to beat.
    pub fn on_witness_vote(
        &mut self,
        term: u64,
        won: bool,
        highest_other: u64,
        now: Instant,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.witness_ready(now) {
            return actions;
        }
        if !won {
            if highest_other > self.term {
                // The next stand goes past it, instead of climbing one term at a time.
                self.adopt(highest_other, &mut actions);
            }
            return actions;
        }
        if term != self.term || self.role != Role::Candidate {
            return actions;
        }
        if let Some(w) = &mut self.witness {
            w.vote = true;
        }
        if self.votes_won() >= self.quorum() {
            self.become_leader(now, &mut actions);
        }
        actions
    }

    /// Votes a candidate holds in its term, the witness's included.
    fn votes_won(&self) -> usize {
        self.votes.len() + usize::from(self.witness.as_ref().is_some_and(|w| w.vote))
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node acknowledges now, if any.
    pub fn leader(&self, now: Instant) -> Option<&str> {
        match self.role {
            Role::Leader => Some(&self.me),
            _ if self.leader_alive(now, self.timing.ack_window()) => self.leader.as_deref(),
            _ => None,
        }
    }

    /// Whether `member` (not this node) was heard within `down_after`.
    pub fn is_up(&self, member: &str, now: Instant) -> bool {
        member == self.me
            || self
                .seen
                .get(member)
                .is_some_and(|s| now.duration_since(s.at) < self.timing.down_after)
    }

    /// What this node knows of `member`.
    pub fn seen(&self, member: &str) -> Option<&Seen> {
        self.seen.get(member)
    }

    /// This node's heartbeat now.
    pub fn heartbeat(&self, incarnation: u64, now: Instant) -> Heartbeat {
        Heartbeat {
            node: self.me.clone(),
            incarnation,
            term: self.term,
            leader: self.leader(now).map(str::to_owned),
            uptime_seconds: 0,
            version: String::new(),
        }
    }

    fn leader_alive(&self, now: Instant, within: Duration) -> bool {
        self.leader_heard
            .is_some_and(|at| now.duration_since(at) < within)
    }

    /// Moves to `term` as a follower with no vote and no leader.
    fn adopt(&mut self, term: u64, actions: &mut Vec<Action>) {
        if self.role == Role::Leader {
            actions.push(Action::SteppedDown(self.term));
        }
        self.term = term;
        self.voted_for = None;
        self.role = Role::Follower;
        self.leader = None;
        self.leader_heard = None;
        self.votes.clear();
        if let Some(w) = &mut self.witness {
            w.vote = false;
        }
        actions.push(Action::Persist {
            term,
            voted_for: None,
        });
    }

    /// A member's heartbeat arrived.
    pub fn on_heartbeat(&mut self, hb: Heartbeat, now: Instant, jitter: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        if hb.node == self.me || !self.members.contains(&hb.node) {
            return actions;
        }
        if hb.term > self.term {
            self.adopt(hb.term, &mut actions);
        }
        let claims_lead = hb.leader.as_deref() == Some(hb.node.as_str());
        if hb.term == self.term && claims_lead && self.role != Role::Leader {
            self.role = Role::Follower;
            self.votes.clear();
            self.leader = Some(hb.node.clone());
            self.leader_heard = Some(now);
            self.stand_at = now + self.timing.election_timeout(jitter);
        }
        self.seen.insert(
            hb.node.clone(),
            Seen {
                at: now,
                heartbeat: hb,
            },
        );
        actions
    }

    /// A lease message arrived.
    pub fn on_message(&mut self, message: Message, now: Instant, jitter: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        match message {
            Message::VoteRequest { term, candidate } => {
                if candidate == self.me || !self.members.contains(&candidate) {
                    return actions;
                }
                // A live leader is not deposed: no vote, and no term taken from the request.
                let leader_alive = match self.role {
                    Role::Leader => true,
                    _ => self.leader_alive(now, self.timing.down_after),
                };
                if term > self.term && !leader_alive {
                    self.adopt(term, &mut actions);
                }
                let granted = term == self.term
                    && !leader_alive
                    && self.voted_for.as_ref().is_none_or(|v| *v == candidate);
                if granted && self.voted_for.is_none() {
                    self.voted_for = Some(candidate.clone());
                    actions.push(Action::Persist {
                        term,
                        voted_for: Some(candidate.clone()),
                    });
                }
                if granted {
                    // The candidate may lead from now: no other vote for `down_after`, and
                    // time for it to win before standing against it.
                    self.leader_heard = Some(now);
                    self.stand_at = now + self.timing.election_timeout(jitter);
                }
                actions.push(Action::Send(Message::Vote {
                    term: self.term,
                    voter: self.me.clone(),
                    candidate,
                    granted,
                }));
            }
            Message::Vote {
                term,
                voter,
                candidate,
                granted,
            } => {
                if term > self.term {
                    self.adopt(term, &mut actions);
                    return actions;
                }
                if granted
                    && term == self.term
                    && candidate == self.me
                    && self.role == Role::Candidate
                    && self.members.contains(&voter)
                {
                    self.votes.insert(voter);
                    if self.votes_won() >= self.quorum() {
                        self.become_leader(now, &mut actions);
                    }
                }
            }
            Message::Resign {
                term,
                leader,
                successor,
            } => {
                if term == self.term && self.leader.as_deref() == Some(leader.as_str()) {
                    self.leader = None;
                    self.leader_heard = None;
                    self.stand_at = if successor.as_deref() == Some(self.me.as_str()) {
                        now
                    } else {
                        now + self.timing.election_timeout(jitter)
                    };
                }
                if let Some(seen) = self.seen.get_mut(&leader) {
                    // It is leaving: not a member to count on any more.
                    seen.at = now.checked_sub(self.timing.down_after).unwrap_or(seen.at);
                }
            }
        }
        actions
    }

    fn become_leader(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.role = Role::Leader;
        self.leader = Some(self.me.clone());
        self.leader_heard = Some(now);
        self.votes.clear();
        actions.push(Action::Elected(self.term));
    }

    /// Members heard within `down_after`, this node and a ready witness included.
    fn visible(&self, now: Instant) -> usize {
        self.members.iter().filter(|m| self.is_up(m, now)).count()
            + usize::from(self.witness_ready(now))
    }

    /// Time passes: a leader checks its lease, a follower or candidate may stand.
    pub fn on_tick(&mut self, now: Instant, jitter: f64) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.role {
            Role::Leader => {
                let window = self.timing.ack_window();
                // Acknowledgements: members whose heartbeat in this term, recent enough,
                // names this node; and this node itself. Just after the election the
                // votes stand in for them (`leader_heard` is the election).
                let acks = 1
                    + self
                        .seen
                        .values()
                        .filter(|s| {
                            now.duration_since(s.at) < window
                                && s.heartbeat.term == self.term
                                && s.heartbeat.leader.as_deref() == Some(self.me.as_str())
                        })
                        .count()
                    + usize::from(self.witness_acks(now));
                let fresh = self.leader_alive(now, window);
                if acks < self.quorum() && !fresh {
                    self.role = Role::Follower;
                    self.leader = None;
                    self.leader_heard = None;
                    self.stand_at = now + self.timing.election_timeout(jitter);
                    actions.push(Action::SteppedDown(self.term));
                }
            }
            Role::Follower | Role::Candidate => {
                if self.leader_alive(now, self.timing.down_after) || now < self.stand_at {
                    return actions;
                }
                self.stand_at = now + self.timing.election_timeout(jitter);
                // Standing without a majority in sight only inflates the term.
                if self.visible(now) < self.quorum() {
                    return actions;
                }
                self.term += 1;
                // A split vote is retried soon, at spread-out times.
                self.stand_at = now + self.timing.retry(jitter);
                self.role = Role::Candidate;
                self.leader = None;
                self.leader_heard = None;
                self.voted_for = Some(self.me.clone());
                self.votes = BTreeSet::from([self.me.clone()]);
                let claim = self.witness_ready(now);
                if let Some(w) = &mut self.witness {
                    w.vote = false;
                }
                actions.push(Action::Persist {
                    term: self.term,
                    voted_for: Some(self.me.clone()),
                });
                if self.votes_won() >= self.quorum() {
                    self.become_leader(now, &mut actions);
                } else {
                    actions.push(Action::Send(Message::VoteRequest {
                        term: self.term,
                        candidate: self.me.clone(),
                    }));
                    if claim {
                        actions.push(Action::ClaimWitness(self.term));
                    }
                }
            }
        }
        actions
    }

    /// This node stops: a leader gives the lease up at once and names a successor (the
    /// first live member by id), so the others need not wait for it to expire.
    pub fn resign(&mut self, now: Instant) -> Option<Message> {
        if self.role != Role::Leader {
            return None;
        }
        self.role = Role::Follower;
        self.leader = None;
        self.leader_heard = None;
        let successor = self
            .members
            .iter()
            .find(|m| **m != self.me && self.is_up(m, now))
            .cloned();
        Some(Message::Resign {
            term: self.term,
            leader: self.me.clone(),
            successor,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        heartbeat: Duration::from_millis(200),
        down_after: Duration::from_millis(1000),
    };

    fn lease(me: &str, now: Instant) -> Lease {
        Lease::new(
            me,
            ["a", "b", "c"].map(String::from),
            TIMING,
            0,
            None,
            now,
            0.0,
        )
    }

    fn hb(node: &str, term: u64, leader: Option<&str>) -> Heartbeat {
        Heartbeat {
            node: node.into(),
            incarnation: 1,
            term,
            leader: leader.map(String::from),
            uptime_seconds: 0,
            version: String::new(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Delivers every Send of `from`'s actions to each of `to`, returning their actions.
    fn deliver(actions: &[Action], to: &mut [&mut Lease], now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        for a in actions {
            if let Action::Send(m) = a {
                for l in to.iter_mut() {
                    out.extend(l.on_message(m.clone(), now, 0.0));
                }
            }
        }
        out
    }

    #[test]
    fn alone_a_node_leads_at_once_with_a_new_term() {
        let t0 = Instant::now();
        let mut solo = Lease::new("a", [], TIMING, 4, None, t0, 0.0);
        let actions = solo.on_tick(t0, 0.0);
        assert_eq!(
            actions,
            [
                Action::Persist {
                    term: 5,
                    voted_for: Some("a".into())
                },
                Action::Elected(5)
            ]
        );
        assert_eq!(solo.leader(t0), Some("a"));
        // And it stays leader: it is its own majority.
        assert!(solo.on_tick(t0 + ms(10_000), 0.0).is_empty());
    }

    #[test]
    fn no_one_stands_without_a_majority_in_sight() {
        let t0 = Instant::now();
        let mut a = lease("a", t0);
        assert!(a.on_tick(t0 + ms(5_000), 0.0).is_empty());
        assert_eq!(a.term(), 0);
    }

    #[test]
    fn three_nodes_elect_one_leader_and_replace_it_when_it_dies() {
        let t0 = Instant::now();
        let (mut a, mut b, mut c) = (lease("a", t0), lease("b", t0), lease("c", t0));
        for l in [&mut a, &mut b, &mut c] {
            for other in ["a", "b", "c"] {
                l.on_heartbeat(hb(other, 0, None), t0 + ms(1_100), 0.0);
            }
        }
        // a stands first (1.2 s with no jitter), b and c vote for it.
        let t1 = t0 + ms(1_250);
        let stand = a.on_tick(t1, 0.0);
        assert!(stand.contains(&Action::Send(Message::VoteRequest {
            term: 1,
            candidate: "a".into()
        })));
        // b and c heard heartbeats recently, but no leader: they vote.
        for l in [&mut b, &mut c] {
            l.on_heartbeat(hb("a", 0, None), t1 - ms(50), 0.0);
        }
        let votes = deliver(&stand, &mut [&mut b, &mut c], t1);
        assert!(votes.contains(&Action::Persist {
            term: 1,
            voted_for: Some("a".into())
        }));
        let elected = deliver(&votes, &mut [&mut a], t1);
        assert_eq!(elected, [Action::Elected(1)]);
        assert_eq!(a.role(), Role::Leader);
        // A second vote request in term 1 (from c) is refused: b already voted, and the
        // leader's heartbeat makes b a follower of a.
        b.on_heartbeat(hb("a", 1, Some("a")), t1 + ms(10), 0.0);
        let refused = b.on_message(
            Message::VoteRequest {
                term: 2,
                candidate: "c".into(),
            },
            t1 + ms(20),
            0.0,
        );
        assert!(matches!(
            &refused[..],
            [Action::Send(Message::Vote {
                granted: false,
                term: 1,
                ..
            })]
        ));
        assert_eq!(b.leader(t1 + ms(20)), Some("a"));
        // a dies after its heartbeat at t1 + 10 ms. b and c stop acknowledging it after
        // 0.4 s, and stand only after 1.2 s, when no majority can still acknowledge a.
        let t2 = t1 + ms(10);
        c.on_heartbeat(hb("a", 1, Some("a")), t2, 0.0);
        for l in [&mut b, &mut c] {
            l.on_heartbeat(
                hb(if l.me == "b" { "c" } else { "b" }, 1, Some("a")),
                t2 + ms(1_100),
                0.0,
            );
        }
        assert_eq!(b.leader(t2 + ms(500)), None, "no longer acknowledged");
        assert!(
            b.on_tick(t2 + ms(900), 0.0).is_empty(),
            "too early to stand"
        );
        let stand = b.on_tick(t2 + ms(1_250), 0.0);
        let votes = deliver(&stand, &mut [&mut c], t2 + ms(1_250));
        assert_eq!(
            deliver(&votes, &mut [&mut b], t2 + ms(1_250)),
            [Action::Elected(2)]
        );
    }

    #[test]
    fn a_leader_without_a_majority_steps_down_before_anyone_votes_anew() {
        let t0 = Instant::now();
        let mut a = lease("a", t0);
        for other in ["b", "c"] {
            a.on_heartbeat(hb(other, 0, None), t0 + ms(1_200), 0.0);
        }
        let stand = a.on_tick(t0 + ms(1_250), 0.0);
        let mut b = lease("b", t0);
        b.on_heartbeat(hb("c", 0, None), t0 + ms(1_200), 0.0);
        let votes = deliver(&stand, &mut [&mut b], t0 + ms(1_250));
        deliver(&votes, &mut [&mut a], t0 + ms(1_250));
        assert_eq!(a.role(), Role::Leader);
        // b acknowledges a at 1.3 s; then a is cut off.
        let last_ack = t0 + ms(1_300);
        a.on_heartbeat(hb("b", 1, Some("a")), last_ack, 0.0);
        assert!(a.on_tick(last_ack + ms(300), 0.0).is_empty());
        assert_eq!(a.on_tick(last_ack + ms(400), 0.0), [Action::SteppedDown(1)]);
        assert_eq!(a.leader(last_ack + ms(400)), None);
        // b heard a last at 1.3 s and votes for no one before 2.3 s, after a stepped down.
        b.on_heartbeat(hb("a", 1, Some("a")), last_ack, 0.0);
        let early = b.on_message(
            Message::VoteRequest {
                term: 2,
                candidate: "c".into(),
            },
            last_ack + ms(900),
            0.0,
        );
        assert!(matches!(
            &early[..],
            [Action::Send(Message::Vote { granted: false, .. })]
        ));
        let late = b.on_message(
            Message::VoteRequest {
                term: 2,
                candidate: "c".into(),
            },
            last_ack + ms(1_000),
            0.0,
        );
        assert!(late.contains(&Action::Send(Message::Vote {
            term: 2,
            voter: "b".into(),
            candidate: "c".into(),
            granted: true
        })));
    }

    #[test]
    fn a_vote_is_given_once_per_term() {
        let t0 = Instant::now();
        let mut b = lease("b", t0);
        let ask = |c: &str| Message::VoteRequest {
            term: 3,
            candidate: c.into(),
        };
        let first = b.on_message(ask("a"), t0, 0.0);
        assert!(first.contains(&Action::Send(Message::Vote {
            term: 3,
            voter: "b".into(),
            candidate: "a".into(),
            granted: true
        })));
        let second = b.on_message(ask("c"), t0, 0.0);
        assert!(matches!(
            &second[..],
            [Action::Send(Message::Vote { granted: false, .. })]
        ));
        // A restart with the vote on disk refuses too.
        let mut again = Lease::new(
            "b",
            ["a", "b", "c"].map(String::from),
            TIMING,
            3,
            Some("a".into()),
            t0,
            0.0,
        );
        let third = again.on_message(ask("c"), t0, 0.0);
        assert!(matches!(
            &third[..],
            [Action::Send(Message::Vote { granted: false, .. })]
        ));
    }

    #[test]
    fn a_resigning_leader_names_a_successor_who_stands_at_once() {
        let t0 = Instant::now();
        let mut a = lease("a", t0);
        let mut b = lease("b", t0);
        for l in [&mut a, &mut b] {
            l.on_heartbeat(hb("c", 0, None), t0 + ms(1_200), 0.0);
        }
        a.on_heartbeat(hb("b", 0, None), t0 + ms(1_200), 0.0);
        let stand = a.on_tick(t0 + ms(1_250), 0.0);
        let votes = deliver(&stand, &mut [&mut b], t0 + ms(1_250));
        deliver(&votes, &mut [&mut a], t0 + ms(1_250));
        let t1 = t0 + ms(1_300);
        b.on_heartbeat(hb("a", 1, Some("a")), t1, 0.0);
        b.on_heartbeat(hb("c", 1, Some("a")), t1, 0.0);
        a.on_heartbeat(hb("b", 1, Some("a")), t1, 0.0);
        let resign = a.resign(t1).unwrap();
        assert_eq!(
            resign,
            Message::Resign {
                term: 1,
                leader: "a".into(),
                successor: Some("b".into())
            }
        );
        assert_eq!(a.role(), Role::Follower);
        b.on_message(resign, t1 + ms(5), 0.0);
        let stand = b.on_tick(t1 + ms(5), 0.0);
        assert!(stand.contains(&Action::Send(Message::VoteRequest {
            term: 2,
            candidate: "b".into()
        })));
    }

    #[test]
    fn a_higher_term_deposes_a_leader() {
        let t0 = Instant::now();
        let mut solo_like = lease("a", t0);
        for other in ["b", "c"] {
            solo_like.on_heartbeat(hb(other, 0, None), t0 + ms(1_200), 0.0);
        }
        let stand = solo_like.on_tick(t0 + ms(1_250), 0.0);
        assert!(matches!(stand.last(), Some(Action::Send(_))));
        let actions = solo_like.on_heartbeat(hb("b", 7, Some("b")), t0 + ms(1_260), 0.0);
        assert_eq!(
            actions,
            [Action::Persist {
                term: 7,
                voted_for: None
            }]
        );
        assert_eq!(solo_like.leader(t0 + ms(1_260)), Some("b"));
    }

    fn pair_with_witness(me: &str, now: Instant) -> Lease {
        Lease::new(me, ["a", "b"].map(String::from), TIMING, 0, None, now, 0.0).with_witness()
    }

    #[test]
    fn with_a_witness_one_of_two_nodes_elects_itself() {
        let t0 = Instant::now();
        let mut b = pair_with_witness("b", t0);
        // Alone, without the witness in sight, b does not stand.
        assert!(b.on_tick(t0 + ms(5_000), 0.0).is_empty());
        // A witness connection only counts once it has been up for `down_after`.
        b.witness_up(t0 + ms(5_000));
        assert!(b.on_tick(t0 + ms(5_900), 0.0).is_empty());
        let stand = b.on_tick(t0 + ms(6_300), 0.0);
        assert!(stand.contains(&Action::ClaimWitness(1)), "{stand:?}");
        // A claim the witness ordered behind another node's is no vote.
        assert!(b.on_witness_vote(1, false, 1, t0 + ms(6_310)).is_empty());
        assert_eq!(b.role(), Role::Candidate);
        // A vote for an older term counts for nothing either.
        let retry = b.on_tick(t0 + ms(6_600), 0.0);
        assert!(retry.contains(&Action::ClaimWitness(2)), "{retry:?}");
        assert!(b.on_witness_vote(1, true, 0, t0 + ms(6_610)).is_empty());
        assert_eq!(
            b.on_witness_vote(2, true, 0, t0 + ms(6_620)),
            [Action::Elected(2)]
        );
    }

    #[test]
    fn a_leader_held_by_the_witness_alone_keeps_the_lease_only_while_it_echoes() {
        let t0 = Instant::now();
        let mut a = pair_with_witness("a", t0);
        a.witness_up(t0);
        a.on_tick(t0 + ms(1_250), 0.0);
        assert_eq!(
            a.on_witness_vote(1, true, 0, t0 + ms(1_260)),
            [Action::Elected(1)]
        );
        // Its heartbeats come back through the witness: the lease holds with b dead.
        for step in 0..20 {
            let at = t0 + ms(1_300 + step * 200);
            a.on_witness_echo(&hb("a", 1, Some("a")), at);
            assert!(a.on_tick(at + ms(100), 0.0).is_empty());
        }
        // The echoes stop (the witness is cut off): a steps down within 0.4 × down_after.
        let last = t0 + ms(1_300 + 19 * 200);
        assert!(a.on_tick(last + ms(390), 0.0).is_empty());
        assert_eq!(a.on_tick(last + ms(400), 0.0), [Action::SteppedDown(1)]);
    }

    #[test]
    fn a_higher_claim_at_the_witness_withdraws_its_acknowledgement() {
        let t0 = Instant::now();
        let mut a = pair_with_witness("a", t0);
        a.witness_up(t0);
        a.on_tick(t0 + ms(1_250), 0.0);
        a.on_witness_vote(1, true, 0, t0 + ms(1_260));
        // Past the fresh election's grace, the witness's echo is its only acknowledgement.
        let t1 = t0 + ms(1_700);
        a.on_witness_echo(&hb("a", 1, Some("a")), t1);
        assert!(a.on_tick(t1 + ms(10), 0.0).is_empty());
        // b claimed term 2 at the witness: the witness's vote went to b, so it no longer
        // stands behind a, which gives the lease up at its next check.
        a.on_witness_claim("b", 2, t1 + ms(20), 0.0);
        assert_eq!(a.on_tick(t1 + ms(30), 0.0), [Action::SteppedDown(1)]);
        // Claims of this node itself or of strangers are not votes requests.
        assert!(a.on_witness_claim("a", 9, t1, 0.0).is_empty());
        assert!(a.on_witness_claim("z", 9, t1, 0.0).is_empty());
    }

    #[test]
    fn a_broken_witness_connection_counts_for_nothing_until_it_is_up_again_for_down_after() {
        let t0 = Instant::now();
        let mut b = pair_with_witness("b", t0);
        b.witness_up(t0);
        b.witness_down();
        b.witness_up(t0 + ms(4_500));
        assert!(b.witness_connected());
        assert!(b.on_tick(t0 + ms(5_000), 0.0).is_empty());
        // Its next chance to stand (1.2 s on) finds the witness up for 1.7 s.
        assert!(b
            .on_tick(t0 + ms(6_200), 0.0)
            .contains(&Action::ClaimWitness(1)));
    }

    #[test]
    fn a_result_after_the_witness_connection_broke_counts_for_nothing() {
        let t0 = Instant::now();
        let mut b = pair_with_witness("b", t0);
        b.witness_up(t0);
        let stand = b.on_tick(t0 + ms(1_250), 0.0);
        assert!(stand.contains(&Action::ClaimWitness(1)), "{stand:?}");
        // The connection breaks before the echo; a stale echo handed out after it is ignored.
        b.witness_down();
        b.witness_up(t0 + ms(1_300));
        assert!(b.on_witness_vote(1, true, 0, t0 + ms(1_310)).is_empty());
        assert_eq!(b.role(), Role::Candidate);
        // Nor does a late echo of its heartbeat acknowledge a leader over a broken link.
        let mut a = pair_with_witness("a", t0);
        a.witness_up(t0);
        a.on_tick(t0 + ms(1_250), 0.0);
        a.on_witness_vote(1, true, 0, t0 + ms(1_260));
        a.witness_down();
        a.on_witness_echo(&hb("a", 1, Some("a")), t0 + ms(1_600));
        assert_eq!(a.on_tick(t0 + ms(1_700), 0.0), [Action::SteppedDown(1)]);
    }

    #[test]
    fn a_lost_claim_teaches_the_term_to_beat() {
        let t0 = Instant::now();
        let mut b = pair_with_witness("b", t0);
        b.witness_up(t0);
        b.on_tick(t0 + ms(1_250), 0.0);
        // A claim of the dead node at term 500 is on the witness: b jumps past it.
        let lost = b.on_witness_vote(1, false, 500, t0 + ms(1_260));
        assert_eq!(
            lost,
            [Action::Persist {
                term: 500,
                voted_for: None
            }]
        );
        let again = b.on_tick(t0 + ms(1_260) + ms(1_500), 0.0);
        assert!(again.contains(&Action::ClaimWitness(501)), "{again:?}");
    }
}
