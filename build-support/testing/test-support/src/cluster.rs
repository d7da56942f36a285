//! A private RabbitMQ cluster for tests that kill, stop and restart nodes under the services:
//! three nodes started through `build-support/scripts/rabbitmq-cluster.sh` (so every run proves the
//! script), on random ports, from a scratch directory, with a random node name prefix; dropped, it
//! stops every node and removes the directory. The shared broker is never touched.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
};

use uuid::Uuid;

use crate::{broker_url_at, private_servers::scratch_dir, unused_port};

/// The script that starts and runs the cluster.
const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/rabbitmq-cluster.sh"
);

/// How many nodes a [`PrivateCluster`] has.
const NODES: usize = 3;

/// A RabbitMQ cluster of the test's own. Nodes are indexed `0..len()`.
#[derive(Debug)]
pub struct PrivateCluster {
    dir: PathBuf,
    name: String,
    base_port: u16,
    dist_base_port: u16,
    /// Which nodes this harness has left running (none is stopped behind its back).
    up: Vec<bool>,
}

impl PrivateCluster {
    /// Starts three nodes, joins them and waits until every one runs in the cluster.
    pub async fn start() -> Self {
        // Both runs at once, so the distribution ports do not overlap the AMQP ones.
        let (amqp_ports, dist_ports) = (free_run(NODES), free_run(NODES));
        let cluster = Self {
            dir: scratch_dir("private-rabbitmq-cluster"),
            name: format!("test-cluster-{}", Uuid::new_v4().simple()),
            base_port: amqp_ports.0,
            dist_base_port: dist_ports.0,
            up: vec![true; NODES],
        };
        drop((amqp_ports, dist_ports));
        // Built before the start, so a start that fails still cleans up what it started.
        cluster.script(&["start"]).await;
        cluster
    }

    /// How many nodes the cluster has.
    pub fn len(&self) -> usize {
        self.up.len()
    }

    /// Never: a cluster has nodes (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.up.is_empty()
    }

    /// The AMQP URL of `node` (user guest).
    pub fn url(&self, node: usize) -> String {
        broker_url_at(self.port(node))
    }

    /// Every node's AMQP URL, comma-separated in node order: an `AMQP_URL` list.
    pub fn urls(&self) -> String {
        (0..self.len())
            .map(|node| self.url(node))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills `node`'s Erlang VM with SIGKILL, as a crash or a power cut would.
    pub async fn kill_9(&mut self, node: usize) {
        self.script(&["kill-node", &Self::number(node)]).await;
        self.up[node] = false;
    }

    /// Stops `node` gracefully (`rabbitmqctl stop`: the whole node, not only the app).
    pub async fn stop_node(&mut self, node: usize) {
        self.script(&["stop-node", &Self::number(node)]).await;
        self.up[node] = false;
    }

    /// Starts `node` again on its data and ports, and waits until it runs and sees every running
    /// node of the cluster.
    pub async fn start_node(&mut self, node: usize) {
        self.script(&["start-node", &Self::number(node)]).await;
        self.up[node] = true;
    }

    /// Per node, how many quorum queues whose name starts with `prefix` it leads.
    pub async fn queue_leaders(&self, prefix: &str) -> Vec<usize> {
        let listing = self
            .ctl(&[
                "list_queues",
                "-q",
                "--no-table-headers",
                "name",
                "type",
                "leader",
            ])
            .await;
        let mut leaders = vec![0; self.len()];
        for line in listing.lines() {
            let fields: Vec<&str> = line.split('\t').collect();
            if let [name, "quorum", leader] = fields[..]
                && name.starts_with(prefix)
                && let Some(node) = self.node_index(leader)
            {
                leaders[node] += 1;
            }
        }
        leaders
    }

    /// Per node, how many client connections it holds.
    pub async fn connections(&self) -> Vec<usize> {
        let listing = self
            .ctl(&["list_connections", "-q", "--no-table-headers", "port"])
            .await;
        let mut connections = vec![0; self.len()];
        for port in listing
            .lines()
            .filter_map(|line| line.trim().parse::<u16>().ok())
        {
            if let Some(node) = (0..self.len()).find(|&node| self.port(node) == port) {
                connections[node] += 1;
            }
        }
        connections
    }

    /// Where the cluster stands, for a failure message: which nodes the harness left up, the
    /// cluster status, and every queue with its type, leader, members and messages.
    pub async fn state(&self) -> String {
        let up: Vec<String> = (0..self.len())
            .map(|node| format!("{}: {}", self.node_name(node), self.up[node]))
            .collect();
        format!(
            "up (per the harness): {}\n{}\n{}",
            up.join(", "),
            self.ctl(&["cluster_status"]).await,
            self.ctl(&[
                "list_queues",
                "name",
                "type",
                "leader",
                "members",
                "online",
                "messages"
            ])
            .await
        )
    }

    fn port(&self, node: usize) -> u16 {
        self.base_port + u16::try_from(node).expect("a node index")
    }

    /// The script numbers nodes from 1.
    fn number(node: usize) -> String {
        (node + 1).to_string()
    }

    fn node_name(&self, node: usize) -> String {
        format!("{}-{}@localhost", self.name, node + 1)
    }

    fn node_index(&self, node_name: &str) -> Option<usize> {
        (0..self.len()).find(|&node| self.node_name(node) == node_name)
    }

    /// `rabbitmqctl <args>` on the first node that is up; its output (stdout and stderr).
    async fn ctl(&self, args: &[&str]) -> String {
        let Some(node) = self.up.iter().position(|&up| up) else {
            return "(no node is up)".to_owned();
        };
        let output = tokio::process::Command::from(self.command())
            .args(["ctl", &Self::number(node)])
            .args(args)
            .output()
            .await
            .expect("the cluster script runs");
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Runs the script with `args` and passes on what it logs; panics if it fails.
    async fn script(&self, args: &[&str]) {
        let output = tokio::process::Command::from(self.command())
            .args(args)
            .output()
            .await
            .expect("the cluster script runs");
        eprint!("{}", String::from_utf8_lossy(&output.stderr));
        assert!(
            output.status.success(),
            "rabbitmq-cluster.sh {args:?} failed ({})",
            output.status
        );
    }

    /// The script, set to this cluster's directory, names and ports.
    fn command(&self) -> Command {
        let mut command = Command::new(SCRIPT);
        command
            .env("RABBITMQ_CLUSTER_DIR", &self.dir)
            .env("RABBITMQ_CLUSTER_NODES", self.len().to_string())
            .env("RABBITMQ_CLUSTER_NAME", &self.name)
            .env("RABBITMQ_CLUSTER_BASE_PORT", self.base_port.to_string())
            .env(
                "RABBITMQ_CLUSTER_DIST_BASE_PORT",
                self.dist_base_port.to_string(),
            );
        command
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.command().args(["stop", "--reset"]).status();
        // Whatever the script could not stop: the VMs by the pids their nodes wrote.
        for node in 0..self.len() {
            kill_by_pid_file(&self.dir.join(format!("node-{}", node + 1)).join("pid"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn kill_by_pid_file(pid_file: &Path) {
    if let Ok(pid) = std::fs::read_to_string(pid_file) {
        let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
    }
}

/// `count` consecutive ports on 127.0.0.1 that nothing listens on: the first, and listeners that
/// hold them until dropped.
fn free_run(count: usize) -> (u16, Vec<TcpListener>) {
    loop {
        let first = unused_port();
        let held: Vec<TcpListener> = (0..count)
            .map_while(|offset| {
                let port = u16::try_from(usize::from(first) + offset).ok()?;
                TcpListener::bind(("127.0.0.1", port)).ok()
            })
            .collect();
        if held.len() == count {
            return (first, held);
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::{
        BasicProperties, Connection, ConnectionProperties,
        options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
        types::{AMQPValue, FieldTable},
    };

    use super::*;
    use crate::{eventually, eventually_some, queue_depth, take_message};

    async fn connect(url: &str) -> Connection {
        Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the node accepts connections")
    }

    #[tokio::test]
    async fn a_quorum_queue_keeps_a_confirmed_message_when_its_leader_is_killed_and_the_node_rejoins()
     {
        // Arrange: a quorum queue declared through node 0, a message published with confirms
        // through node 1.
        let mut cluster = PrivateCluster::start().await;
        assert_eq!(cluster.len(), 3);
        let queue = format!("cluster-proof-{}", Uuid::new_v4().simple());
        let declaring = connect(&cluster.url(0)).await;
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        declaring
            .create_channel()
            .await
            .expect("a channel")
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .expect("a quorum queue");
        let publishing = connect(&cluster.url(1)).await;
        let channel = publishing.create_channel().await.expect("a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"survives",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("a confirmation");
        assert!(confirmation.is_ack(), "{confirmation:?}");
        assert_eq!(cluster.connections().await.iter().sum::<usize>(), 2);
        let leaders = cluster.queue_leaders(&queue).await;
        let Some(leader) = leaders.iter().position(|&led| led == 1) else {
            panic!("one leader: {leaders:?}\n{}", cluster.state().await);
        };

        // Act: kill the leader's node; a survivor takes over.
        cluster.kill_9(leader).await;
        let (watching, prefix) = (&cluster, queue.as_str());
        let new_leader = eventually_some(|| async move {
            let leaders = watching.queue_leaders(prefix).await;
            leaders
                .iter()
                .position(|&led| led == 1)
                .filter(|&node| node != leader)
        })
        .await;
        let survivor = (0..cluster.len())
            .find(|&node| node != leader && node != new_leader)
            .expect("a node that neither led nor leads");
        let reading = connect(&cluster.url(survivor)).await;
        let message = take_message(&reading, &queue).await;

        // Assert: the message is there, and the killed node comes back into the cluster.
        assert_eq!(
            message.map(|delivery| delivery.data),
            Some(b"survives".to_vec()),
            "{}",
            cluster.state().await
        );
        cluster.start_node(leader).await;
        let rejoined = connect(&cluster.url(leader)).await;
        assert_eq!(
            queue_depth(&rejoined, &queue).await,
            0,
            "taken through a survivor"
        );
        let watching = &cluster;
        eventually(|| async move { watching.connections().await[leader] == 1 }).await;
    }
}
