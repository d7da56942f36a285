//! The stack under test: the three service binaries as processes of the test's own, on a
//! private Postgres cluster and a private RabbitMQ node (behind a proxy that can cut or stall
//! every broker connection), so that each can be killed, stopped or cut without touching the
//! shared servers.

use std::path::Path;

use lapin::{Connection, ConnectionProperties};
use messaging::Topology;
use proto::user::v1::user_service_client::UserServiceClient;
pub use system_tests::processes::{Service, ServiceProcess};
use system_tests::{
    ledger::{
        load::Users,
        stack::{Databases, LogFolder, Stack, service_env},
    },
    processes::binaries,
};
use test_support::{BrokerProxy, PrivateBroker, PrivatePostgres, Sandbox};

/// Everything the ledger runs on. Fields drop in order: the services first, the servers last.
pub struct ChaosStack {
    pub services: Vec<ServiceProcess>,
    databases: Databases,
    amqp: Option<Connection>,
    pub sandbox: Sandbox,
    pub proxy: BrokerProxy,
    pub broker: PrivateBroker,
    pub postgres: PrivatePostgres,
    logs: LogFolder,
}

impl ChaosStack {
    /// Starts the private servers, the proxy and the three services, and waits until every
    /// service is SERVING.
    pub async fn start() -> Self {
        let (postgres, broker) = tokio::join!(PrivatePostgres::start(), PrivateBroker::start());
        let proxy = BrokerProxy::start(&format!("127.0.0.1:{}", broker.port())).await;
        let sandbox = Sandbox::on_postgres(&postgres.url());
        let logs = LogFolder::new("chaos-ledger", &sandbox);
        let bin = binaries();
        let services: Vec<_> = Service::ALL
            .into_iter()
            .map(|service| {
                let env = service_env(&sandbox, service, &proxy.url());
                let log = logs.path().join(format!("{}.log", service.binary()));
                ServiceProcess::spawn(service, &bin, env, log)
            })
            .collect();
        for process in &services {
            process.wait_until_serving().await;
        }
        Self {
            databases: Databases::of(&sandbox),
            services,
            amqp: None,
            sandbox,
            proxy,
            broker,
            postgres,
            logs,
        }
    }

    pub fn service(&mut self, service: Service) -> &mut ServiceProcess {
        self.services
            .iter_mut()
            .find(|process| process.service == service)
            .expect("every service runs")
    }
}

impl Stack for ChaosStack {
    fn users(&self) -> Users {
        vec![UserServiceClient::new(self.services[0].channel())]
    }

    fn databases(&self) -> &Databases {
        &self.databases
    }

    fn topology(&self) -> &Topology {
        &self.sandbox.topology
    }

    /// The test's own connection to the private broker (not through the proxy), opened again
    /// after the broker restarted.
    async fn amqp(&mut self) -> &Connection {
        let alive = self
            .amqp
            .as_ref()
            .is_some_and(|amqp| amqp.status().connected());
        if !alive {
            let connection = test_support::eventually_some(|| async {
                Connection::connect(&self.broker.url(), ConnectionProperties::default())
                    .await
                    .ok()
            })
            .await;
            self.amqp = Some(connection);
        }
        self.amqp.as_ref().expect("connected")
    }

    async fn broker_state(&self) -> String {
        self.broker.state().await
    }

    fn logs(&self) -> &Path {
        self.logs.path()
    }
}
