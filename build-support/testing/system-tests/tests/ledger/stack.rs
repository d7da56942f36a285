//! The stack under test: the three service binaries as processes of the test's own, on a
//! private Postgres cluster and a private RabbitMQ node (behind a proxy that can cut or stall
//! every broker connection), so that each can be killed, stopped or cut without touching the
//! shared servers.

use proto::user::v1::user_service_client::UserServiceClient;
pub use system_tests::processes::{Service, ServiceProcess};
use system_tests::{
    ledger::{
        load::Users,
        stack::{Base, Stack},
    },
    processes::binaries,
};
use test_support::{BrokerProxy, PrivateBroker, PrivatePostgres};

/// Everything the ledger runs on. Fields drop in order: the services first, the servers last.
pub struct ChaosStack {
    pub services: Vec<ServiceProcess>,
    base: Base,
    pub proxy: BrokerProxy,
    pub broker: PrivateBroker,
    pub postgres: PrivatePostgres,
}

impl ChaosStack {
    /// Starts the private servers, the proxy and the three services, and waits until every
    /// service is SERVING.
    pub async fn start() -> Self {
        let (postgres, broker) = tokio::join!(PrivatePostgres::start(), PrivateBroker::start());
        let proxy = BrokerProxy::start(&format!("127.0.0.1:{}", broker.port())).await;
        let base = Base::new("chaos-ledger", &postgres.url());
        let bin = binaries();
        let services: Vec<_> = Service::ALL
            .into_iter()
            .map(|service| {
                let env = base.service_env(service, &proxy.url());
                ServiceProcess::spawn(service, &bin, env, base.log(service.binary()))
            })
            .collect();
        for process in &services {
            process.wait_until_serving().await;
        }
        Self {
            services,
            base,
            proxy,
            broker,
            postgres,
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

    fn base(&self) -> &Base {
        &self.base
    }

    fn base_mut(&mut self) -> &mut Base {
        &mut self.base
    }

    /// The private broker itself, not through the proxy.
    fn broker_urls(&self) -> Vec<String> {
        vec![self.broker.url()]
    }

    async fn broker_state(&self) -> String {
        self.broker.state().await
    }
}
