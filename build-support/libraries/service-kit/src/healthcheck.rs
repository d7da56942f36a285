//! The `healthcheck` subcommand every service binary has: asks the running service's gRPC health
//! endpoint and succeeds only when it says SERVING, for container healthchecks.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Subcommands of every service binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum ServiceCommand {
    /// Exit 0 if the service listening on GRPC_ADDR reports SERVING, 1 otherwise.
    Healthcheck,
}

/// How long the check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Checks the service at `grpc_addr` (a wildcard address is checked on loopback).
pub async fn check(grpc_addr: SocketAddr) -> anyhow::Result<()> {
    let mut addr = grpc_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let status = tokio::time::timeout(TIMEOUT, async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("nothing answers on {addr}"))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .context("the health check failed")?;
        anyhow::Ok(response.into_inner().status())
    })
    .await
    .with_context(|| format!("no answer from {addr} within {TIMEOUT:?}"))??;
    anyhow::ensure!(
        status == ServingStatus::Serving,
        "{addr} reports {}",
        status.as_str_name()
    );
    println!("SERVING");
    Ok(())
}
