//! The authorization hook: every PUBLISH, will and SUBSCRIBE filter from a network client is
//! asked about here before it takes effect. The default allows everything; the security
//! issue plugs per-user topic rules in behind the same trait.

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct ClientInfo<'a> {
    /// The client identifier (assigned by the broker when the client sent none).
    pub client_id: &'a str,
    /// The user name from CONNECT, if any.
    pub username: Option<&'a str>,
}

/// Decides what a client may do. Called on the connection's task for every publish and
/// filter, so answers must be quick and must not block.
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `client` may publish on `topic`. A denied publish is acknowledged (MQTT 5 with
    /// reason 0x87, Not authorized) and dropped, and counted. A will is asked about when the
    /// client connects (its client id as sent, empty when the broker assigns one): a denied
    /// will refuses the CONNECT (MQTT 5 0x87, 3.1.1 0x05).
    fn may_publish(&self, client: &ClientInfo<'_>, topic: &str) -> bool;

    /// Whether `client` may subscribe to `filter`. A denied filter gets a failure code in
    /// the SUBACK (MQTT 5: 0x87; 3.1.1: 0x80), and is counted.
    fn may_subscribe(&self, client: &ClientInfo<'_>, filter: &str) -> bool;
}

/// The default: every client may publish and subscribe anywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn may_publish(&self, _: &ClientInfo<'_>, _: &str) -> bool {
        true
    }

    fn may_subscribe(&self, _: &ClientInfo<'_>, _: &str) -> bool {
        true
    }
}
