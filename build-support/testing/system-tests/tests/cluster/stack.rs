//! The stack under test: two instances of each service binary (six processes), all started at
//! the same moment on fresh databases, on a private Postgres cluster and a private three-node
//! RabbitMQ cluster (quorum queues; each instance given every node's URL, connected to one that
//! answers), each instance on gRPC and metrics ports of its own, the two user-service instances
//! sharing the load.

use std::time::Duration;

use proto::user::v1::user_service_client::UserServiceClient;
use system_tests::{
    ledger::{
        load::Users,
        stack::{Base, Stack},
    },
    processes::{Service, ServiceProcess, binaries},
};
use test_support::{PrivateCluster, PrivatePostgres};
use tonic_health::pb::health_check_response::ServingStatus;

/// Instances of each service.
pub const INSTANCES: usize = 2;

/// One instance of a service, and the work it did in its lives before this one.
#[derive(Debug)]
pub struct Instance {
    pub process: ServiceProcess,
    /// `user-service#0`, …
    pub name: String,
    earlier: Work,
}

/// Work an instance did, from its `/metrics`: events its consumers applied, events its
/// consumers found already applied (the inbox's duplicates), events its relay published.
#[derive(Debug, Default, Clone, Copy)]
pub struct Work {
    pub applied: u64,
    pub duplicates: u64,
    pub published: u64,
}

impl Instance {
    /// The work it did so far, in this life and the ones before (counters restart with the
    /// process; a killed life's last few events before its last sample are not counted).
    pub async fn work(&self) -> Work {
        let now = self.sample().await.unwrap_or_default();
        Work {
            applied: self.earlier.applied + now.applied,
            duplicates: self.earlier.duplicates + now.duplicates,
            published: self.earlier.published + now.published,
        }
    }

    /// Sends `signal` and waits until it exited, keeping what it did so far.
    pub async fn signal(&mut self, signal: &str) -> std::process::ExitStatus {
        self.earlier = self.work().await;
        self.process.signal(signal).await
    }

    async fn sample(&self) -> Option<Work> {
        let addr = self.process.metrics_addr();
        let exposition = tokio::time::timeout(
            Duration::from_secs(2),
            test_support::http_get(addr, "/metrics"),
        )
        .await
        .ok()?;
        let sum = |name: &str, outcome: &str| -> u64 {
            let outcome = format!("outcome=\"{outcome}\"");
            exposition
                .lines()
                .filter(|line| line.starts_with(name) && line.contains(&outcome))
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Some(Work {
            applied: sum("events_consumed_total{", "applied"),
            duplicates: sum("events_consumed_total{", "duplicate"),
            published: sum("events_published_total{", "acked"),
        })
    }
}

/// Everything the test runs on. Fields drop in order: the services first, the servers last.
pub struct ClusterStack {
    pub instances: Vec<Instance>,
    base: Base,
    pub cluster: PrivateCluster,
    /// Held for its life: dropping it stops the server.
    _postgres: PrivatePostgres,
    /// How long the six instances took from their common start to all saying SERVING.
    pub started_in: Duration,
    /// What the faults saw on the way (which node, how long), printed under the table.
    pub notes: Vec<String>,
}

impl ClusterStack {
    /// Starts the private servers, then every instance at once on the fresh databases (they race
    /// to create the databases and run the migrations), and waits until all say SERVING.
    pub async fn start() -> Self {
        let (postgres, cluster) = tokio::join!(PrivatePostgres::start(), PrivateCluster::start());
        let base = Base::new("cluster-ledger", &postgres.url());
        let bin = binaries();
        let amqp_url = cluster.urls();
        let started = tokio::time::Instant::now();
        let instances: Vec<Instance> = (0..INSTANCES)
            .flat_map(|n| Service::ALL.map(|service| (n, service)))
            .map(|(n, service)| {
                let name = format!("{}#{n}", service.binary());
                let mut env = base.service_env(service, &amqp_url);
                env.push(("QUEUE_TYPE", "quorum".into()));
                Instance {
                    process: ServiceProcess::spawn(service, &bin, env, base.log(&name)),
                    name,
                    earlier: Work::default(),
                }
            })
            .collect();
        futures_util::future::join_all(
            instances
                .iter()
                .map(|instance| instance.process.wait_until_serving()),
        )
        .await;
        let started_in = started.elapsed();
        let connections = cluster.connections().await;
        Self {
            started_in,
            instances,
            base,
            cluster,
            _postgres: postgres,
            notes: vec![format!(
                "after the start: client connections per node {connections:?}"
            )],
        }
    }

    /// The instances of `service`.
    pub fn instances_of(&mut self, service: Service) -> impl Iterator<Item = &mut Instance> {
        self.instances
            .iter_mut()
            .filter(move |instance| instance.process.service == service)
    }

    /// Waits until every instance says SERVING (`within` at most); how long it took.
    pub async fn all_serving(&self, within: Duration) -> Result<Duration, String> {
        let started = tokio::time::Instant::now();
        loop {
            let mut waiting = Vec::new();
            for instance in &self.instances {
                if instance.process.health().await != Some(ServingStatus::Serving) {
                    waiting.push(instance.name.as_str());
                }
            }
            if waiting.is_empty() {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                return Err(format!(
                    "not SERVING within {within:?}: {}",
                    waiting.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each instance's name and the work it did.
    pub async fn work(&self) -> Vec<(String, Work)> {
        let mut work = Vec::new();
        for instance in &self.instances {
            work.push((instance.name.clone(), instance.work().await));
        }
        work
    }
}

impl Stack for ClusterStack {
    fn users(&self) -> Users {
        self.instances
            .iter()
            .filter(|instance| instance.process.service == Service::User)
            .map(|instance| UserServiceClient::new(instance.process.channel()))
            .collect()
    }

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    fn broker_urls(&self) -> Vec<String> {
        (0..self.cluster.len())
            .map(|node| self.cluster.url(node))
            .collect()
    }

    async fn broker_state(&self) -> String {
        self.cluster.state().await
    }
}
