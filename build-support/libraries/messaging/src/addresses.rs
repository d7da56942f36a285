//! `AMQP_URL`: one broker, or the nodes of a RabbitMQ cluster as a comma-separated list.
//!
//! Every node of the list is the same broker (one cluster, one vhost, one user): a client
//! connects to one that answers, and, when that connection is lost, to the next one of the
//! list. A comma cannot be part of a URL here (in a password it is written `%2C`, as URLs
//! escape it), so the list splits on commas alone.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties, uri::AMQPUri};

/// How long connecting to one node may take before the next one is tried: a node that accepts
/// the TCP connection while it is still starting can otherwise stall the handshake for good.
pub const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An invalid `AMQP_URL`.
#[derive(Debug, thiserror::Error)]
pub enum InvalidBrokerAddresses {
    #[error(
        "AMQP_URL is empty: give amqp://user:password@host:port/vhost, or a comma-separated list of a cluster's nodes"
    )]
    Empty,
    #[error("AMQP_URL: address {position} of {count} is not a valid AMQP URL: {reason}")]
    Url {
        position: usize,
        count: usize,
        reason: String,
    },
    #[error(
        "AMQP_URL: the addresses name different users or vhosts ({first} and {other}): the list \
         is the nodes of one cluster, reached as one user"
    )]
    Mixed { first: String, other: String },
}

/// The broker's nodes, in the order given. Its `Debug` and [`BrokerAddresses::shown`] print no
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerAddresses {
    nodes: Vec<AMQPUri>,
}

impl BrokerAddresses {
    /// Parses one URL, or a comma-separated list of them.
    pub fn parse(raw: &str) -> Result<Self, InvalidBrokerAddresses> {
        let parts: Vec<&str> = raw
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .collect();
        if parts.is_empty() {
            return Err(InvalidBrokerAddresses::Empty);
        }
        let count = parts.len();
        let nodes = parts
            .iter()
            .enumerate()
            .map(|(index, part)| {
                part.parse::<AMQPUri>()
                    .map_err(|reason| InvalidBrokerAddresses::Url {
                        position: index + 1,
                        count,
                        // The parser's message never repeats the URL, so no password leaks.
                        reason,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let login = |uri: &AMQPUri| format!("{}@…/{}", uri.authority.userinfo.username, uri.vhost);
        if let Some(other) = nodes.iter().find(|uri| login(uri) != login(&nodes[0])) {
            return Err(InvalidBrokerAddresses::Mixed {
                first: login(&nodes[0]),
                other: login(other),
            });
        }
        Ok(Self { nodes })
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never: a list holds at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The broker user every node is reached as (the AMQP `user_id` of what it publishes).
    pub fn user(&self) -> &str {
        &self.nodes[0].authority.userinfo.username
    }

    /// Node `node`'s URL, password included.
    pub fn uri(&self, node: usize) -> AMQPUri {
        self.nodes[node % self.nodes.len()].clone()
    }

    /// Node `node` as logs show it: `host:port`.
    pub fn shown(&self, node: usize) -> String {
        let uri = &self.nodes[node % self.nodes.len()];
        format!("{}:{}", uri.authority.host, uri.authority.port)
    }

    /// Where a process starts in the list: a node picked at random, so that the instances of
    /// a service spread their connections over the cluster.
    pub fn first_choice(&self) -> usize {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        usize::try_from(random % self.nodes.len() as u64).unwrap_or(0)
    }

    /// The nodes in the order to try them, starting with `start`.
    pub fn in_turn_from(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).map(move |offset| (start + offset) % self.nodes.len())
    }

    /// Opens a connection to the first node that answers, trying each once from `start`; which
    /// node it is, or the last error.
    pub async fn connect(
        &self,
        start: usize,
        properties: &ConnectionProperties,
    ) -> Result<(Connection, usize), lapin::Error> {
        let mut last = None;
        for node in self.in_turn_from(start) {
            let attempt = Connection::connect_uri(self.uri(node), properties.clone());
            match tokio::time::timeout(NODE_CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(connection)) => return Ok((connection, node)),
                Ok(Err(error)) => last = Some(error),
                Err(_) => {
                    last = Some(lapin::Error::from(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!(
                            "{} did not answer within {NODE_CONNECT_TIMEOUT:?}",
                            self.shown(node)
                        ),
                    )));
                }
            }
        }
        Err(last.expect("a list holds at least one node"))
    }
}

/// The nodes as logs and errors show them: `host:port, host:port`, no credentials.
impl std::fmt::Display for BrokerAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: Vec<String> = (0..self.nodes.len()).map(|node| self.shown(node)).collect();
        f.write_str(&shown.join(", "))
    }
}

impl std::fmt::Debug for BrokerAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries((0..self.nodes.len()).map(|node| self.shown(node)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_a_list_of_one() {
        let addresses =
            BrokerAddresses::parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("valid");
        assert_eq!(addresses.len(), 1);
        assert_eq!(addresses.user(), "guest");
        assert_eq!(addresses.shown(0), "127.0.0.1:5672");
    }

    #[test]
    fn a_list_keeps_its_order_and_tries_every_node_once_from_any_start() {
        let addresses = BrokerAddresses::parse(
            "amqp://svc:pw@10.0.0.1:5672/%2f, amqp://svc:pw@10.0.0.2:5672/%2f,amqp://svc:pw@10.0.0.3:5673/%2f",
        )
        .expect("valid");
        assert_eq!(addresses.len(), 3);
        assert_eq!(addresses.shown(2), "10.0.0.3:5673");
        assert_eq!(addresses.in_turn_from(1).collect::<Vec<_>>(), [1, 2, 0]);
        assert!(addresses.first_choice() < 3);
    }

    #[test]
    fn a_bad_address_is_named_by_its_position_without_the_password() {
        let error = BrokerAddresses::parse("amqp://svc:secret@a:5672/%2f,http://svc:secret@b/")
            .expect_err("invalid");
        let message = error.to_string();
        assert!(message.contains("address 2 of 2"), "{message}");
        assert!(!message.contains("secret"), "{message}");
        assert!(matches!(
            BrokerAddresses::parse(" , "),
            Err(InvalidBrokerAddresses::Empty)
        ));
    }

    #[test]
    fn the_nodes_of_one_list_share_a_user_and_vhost() {
        let error = BrokerAddresses::parse("amqp://a:x@h1:5672/%2f,amqp://b:x@h2:5672/%2f")
            .expect_err("mixed users");
        assert!(matches!(error, InvalidBrokerAddresses::Mixed { .. }));
    }

    #[test]
    fn debug_prints_no_password() {
        let addresses = BrokerAddresses::parse("amqp://svc:secret@h1:5672/%2f").expect("valid");
        assert_eq!(format!("{addresses:?}"), "[\"h1:5672\"]");
        assert_eq!(addresses.to_string(), "h1:5672");
    }
}
