//! The faults the cluster test injects, one at a time under the load, each with its recovery:
//! two of the RabbitMQ nodes (the one leading most of the namespace's quorum queues, the one
//! most service connections are on), and of the service instances.

use std::time::Duration;

use system_tests::{ledger::stack::Stack, processes::Service};

use crate::stack::ClusterStack;

/// How long the killed instances stay down while the others carry the load.
const DOWN_FOR: Duration = Duration::from_secs(2);
/// How long every instance may take to say SERVING again with a node down.
const FAILOVER_WITHIN: Duration = Duration::from_secs(60);

/// One fault and its recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Nothing,
    LeadingNodeKill9,
    BusiestNodeStop,
    OneInstanceOfEachKill9,
    RollingRestart,
}

impl Fault {
    /// Every fault, in the order the test injects them.
    pub const ALL: [Self; 5] = [
        Self::Nothing,
        Self::LeadingNodeKill9,
        Self::BusiestNodeStop,
        Self::OneInstanceOfEachKill9,
        Self::RollingRestart,
    ];

    pub fn name(self) -> String {
        match self {
            Self::Nothing => "none (two instances of each)".into(),
            Self::LeadingNodeKill9 => "kill -9 node leading most queues".into(),
            Self::BusiestNodeStop => "stop node most connections are on".into(),
            Self::OneInstanceOfEachKill9 => "kill -9 one instance of each".into(),
            Self::RollingRestart => "rolling restart, every instance".into(),
        }
    }

    /// Injects the fault and recovers from it. `Err` says what did not behave (a dirty
    /// SIGTERM exit, a SIGKILL that exited cleanly).
    pub async fn inject(self, stack: &mut ClusterStack) -> Result<(), String> {
        match self {
            Self::Nothing => Ok(()),
            Self::LeadingNodeKill9 => kill_leading_node(stack).await,
            Self::BusiestNodeStop => stop_busiest_node(stack).await,
            Self::OneInstanceOfEachKill9 => kill_one_of_each(stack).await,
            Self::RollingRestart => rolling_restart(stack).await,
        }
    }
}

/// kill -9 the node that leads most of the namespace's quorum queues; every instance must say
/// SERVING again while it is down (on the other nodes); then it is started again and rejoins.
async fn kill_leading_node(stack: &mut ClusterStack) -> Result<(), String> {
    let prefix = format!("{}.", stack.topology().namespace().as_str());
    let before = Spread::of(stack, &prefix).await;
    let node = most(&before.leaders);
    stack.cluster.kill_9(node).await;
    let failover = failover(stack).await;
    let during = Spread::of(stack, &prefix).await;
    stack.cluster.start_node(node).await;
    note(
        stack,
        format!("kill -9 node {node}"),
        before,
        during,
        &failover,
    );
    failover.map(|_| ())
}

/// Stops (gracefully, the whole node) the node most service connections are on; every instance
/// must say SERVING again while it is down; then it is started again, so that the next fault has
/// three nodes.
async fn stop_busiest_node(stack: &mut ClusterStack) -> Result<(), String> {
    let prefix = format!("{}.", stack.topology().namespace().as_str());
    let before = Spread::of(stack, &prefix).await;
    let node = most(&before.connections);
    stack.cluster.stop_node(node).await;
    let failover = failover(stack).await;
    let during = Spread::of(stack, &prefix).await;
    stack.cluster.start_node(node).await;
    note(
        stack,
        format!("stop node {node}"),
        before,
        during,
        &failover,
    );
    failover.map(|_| ())
}

/// Per node: the namespace's quorum queues it leads, the client connections it holds.
#[derive(Debug)]
struct Spread {
    leaders: Vec<usize>,
    connections: Vec<usize>,
}

impl Spread {
    async fn of(stack: &ClusterStack, prefix: &str) -> Self {
        Self {
            leaders: stack.cluster.queue_leaders(prefix).await,
            connections: stack.cluster.connections().await,
        }
    }
}

/// What a node fault saw, for the notes under the table.
fn note(
    stack: &mut ClusterStack,
    fault: String,
    before: Spread,
    during: Spread,
    failover: &Result<Duration, String>,
) {
    let failover = failover.as_ref().map_or_else(Clone::clone, |took| {
        format!(
            "every instance SERVING again after {:.1} s",
            took.as_secs_f64()
        )
    });
    stack.notes.push(format!(
        "{fault}: queue leaders per node {:?} -> {:?} with it down, client connections {:?} -> \
         {:?}; {failover}",
        before.leaders, during.leaders, before.connections, during.connections
    ));
}

/// With a node just gone: how long until every instance says SERVING again (on the others),
/// counted from the node's end; at least [`DOWN_FOR`], so that a lost connection was noticed.
async fn failover(stack: &ClusterStack) -> Result<Duration, String> {
    tokio::time::sleep(DOWN_FOR).await;
    let took = stack.all_serving(FAILOVER_WITHIN).await?;
    Ok(DOWN_FOR + took)
}

/// The node with the most (the first of equals).
fn most(per_node: &[usize]) -> usize {
    (0..per_node.len())
        .max_by_key(|&node| (per_node[node], std::cmp::Reverse(node)))
        .expect("a cluster has nodes")
}

/// kill -9 the first instance of each service at once, leaves them down for [`DOWN_FOR`] while
/// the second ones carry on, then starts them again.
async fn kill_one_of_each(stack: &mut ClusterStack) -> Result<(), String> {
    let mut problems = Vec::new();
    for service in Service::ALL {
        let instance = stack.instances_of(service).next().expect("an instance");
        if instance.signal("-KILL").await.success() {
            problems.push(format!("{} exited cleanly after SIGKILL", instance.name));
        }
    }
    tokio::time::sleep(DOWN_FOR).await;
    for service in Service::ALL {
        let instance = stack.instances_of(service).next().expect("an instance");
        instance.process.restart().await;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Every instance in turn: SIGTERM, wait for its exit (it must be clean), start it again, wait
/// until it says SERVING, then the next.
async fn rolling_restart(stack: &mut ClusterStack) -> Result<(), String> {
    let mut problems = Vec::new();
    for instance in &mut stack.instances {
        let status = instance.signal("-TERM").await;
        if !status.success() {
            problems.push(format!(
                "{} did not stop cleanly on SIGTERM ({status}):\n{}",
                instance.name,
                instance.process.log_tail(10)
            ));
        }
        instance.process.restart().await;
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
