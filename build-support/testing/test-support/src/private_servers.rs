//! Private RabbitMQ nodes and Postgres clusters for tests that stop, restart or kill a broker or
//! a database: each runs on ports of its own, from a directory of its own, and is stopped (by
//! its node name or its pid, never anything else) and removed when dropped. The shared servers
//! are never touched.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use uuid::Uuid;

use crate::unused_port;

/// How long a private server gets to start.
/// How long a private server may take to start: a RabbitMQ node boots in seconds alone, but
/// far slower on two cores busy with the other tests.
const STARTUP: Duration = Duration::from_secs(120);

/// A new, empty directory under the system's temp directory, named `prefix-<random>`.
pub(crate) fn scratch_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

async fn wait_for_port(port: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + STARTUP;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not open port {port} within {STARTUP:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A RabbitMQ node of the test's own.
#[derive(Debug)]
pub struct PrivateBroker {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
    process: Child,
}

impl PrivateBroker {
    /// Starts a node and waits until it accepts AMQP connections.
    pub async fn start() -> Self {
        let dir = scratch_dir("private-rabbitmq");
        let port = unused_port();
        let dist_port = unused_port();
        let node = format!("test-{}@localhost", Uuid::new_v4().simple());
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        )
        .expect("config file");
        let process = spawn_node(&dir, &node, port, dist_port);
        let broker = Self {
            dir,
            node,
            port,
            dist_port,
            process,
        };
        wait_for_port(port, "the private RabbitMQ node").await;
        broker.wait_until_serving().await;
        broker
    }

    /// Kills the node's Erlang VM with SIGKILL (its pid from the node's pid file), as a crash
    /// or a power cut would: nothing is flushed or closed.
    pub async fn kill_9(&mut self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the node's pid file");
        let status = Command::new("kill")
            .args(["-KILL", pid.trim()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -9 of the node's VM ({pid})");
        let _ = self.process.wait();
    }

    /// Starts the node again after [`PrivateBroker::kill_9`], on the same ports and data, and
    /// waits until it serves.
    pub async fn start_again(&mut self) {
        self.process = spawn_node(&self.dir, &self.node, self.port, self.dist_port);
        wait_for_port(self.port, "the private RabbitMQ node").await;
        self.wait_until_serving().await;
    }

    /// The node's AMQP URL.
    pub fn url(&self) -> String {
        crate::broker_url_at(self.port)
    }

    /// The node's AMQP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rabbitmqctl stop_app`: the broker stops, the node stays; every connection drops.
    pub async fn stop_app(&self) {
        self.ctl(&["stop_app"]).await;
    }

    /// `rabbitmqctl start_app`, then waits until it accepts connections again.
    pub async fn start_app(&self) {
        self.ctl(&["start_app"]).await;
        self.wait_until_serving().await;
    }

    async fn wait_until_serving(&self) {
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            // One attempt's handshake can stall against a node still booting: bound it.
            let connected = tokio::time::timeout(
                Duration::from_secs(5),
                lapin::Connection::connect(&self.url(), lapin::ConnectionProperties::default()),
            )
            .await;
            let last_error = match connected {
                Ok(Ok(connection)) => {
                    let _ = connection.close(200, "ready".into()).await;
                    return;
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => "the handshake took over 5 s".to_owned(),
            };
            if tokio::time::Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "the private RabbitMQ node did not serve within {STARTUP:?} ({last_error}); \
                     the end of its output:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What `rabbitmqctl <args>` prints about this node, e.g. `list_queues` while debugging.
    pub async fn report(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .env("HOME", &self.dir)
            .args(["-n", &self.node])
            .args(args)
            .output()
            .await
            .expect("rabbitmqctl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Where the node's queues (ready, unacked, consumers), connections and channels stand: what
    /// to print when flows did not complete.
    pub async fn state(&self) -> String {
        let mut state = String::new();
        for args in [
            &[
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ][..],
            &["list_connections", "name", "state", "channels"][..],
            &[
                "list_channels",
                "connection",
                "number",
                "consumer_count",
                "messages_unacknowledged",
            ][..],
        ] {
            state.push_str(&self.report(args).await);
        }
        state
    }

    async fn ctl(&self, args: &[&str]) {
        let status = tokio::process::Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .env("HOME", &self.dir)
            .args(["-n", &self.node])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl {args:?} failed");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
            .env("HOME", &self.dir)
            .args(["-n", &self.node, "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // The node is the process we started; make sure it is gone.
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts `rabbitmq-server` for the node of `dir`.
/// The stack's broker settings beyond `rabbitmq.conf`, as every broker of the stack gets them:
/// the at-least-once dead-letter worker re-sends an unconfirmed dead letter after 10 s, not
/// RabbitMQ's 3 minutes (a retry moving back to its queue across a broker restart waits that
/// long otherwise).
const ADVANCED_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docker/rabbitmq/advanced.config"
);

fn spawn_node(dir: &Path, node: &str, port: u16, dist_port: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .expect("log file");
    Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
        .current_dir(dir)
        .env("HOME", dir)
        .env("RABBITMQ_CONF_ENV_FILE", "/dev/null")
        .env("RABBITMQ_NODENAME", node)
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
        .env("RABBITMQ_ADVANCED_CONFIG_FILE", ADVANCED_CONFIG)
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_PID_FILE", dir.join("pid"))
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("rabbitmq-server starts (Debian package rabbitmq-server)")
}

/// A Postgres cluster of the test's own (trust auth, user `postgres`), run as the `postgres`
/// system user, since Postgres refuses to run as root.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    process: Option<Child>,
}

fn postgres_bin(name: &str) -> PathBuf {
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL is installed");
    let newest = versions
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .max()
        .expect("a PostgreSQL version");
    newest.join("bin").join(name)
}

/// Runs `program` as the `postgres` user when we are root (`setpriv` execs, so the pid we hold is
/// the server's own).
fn as_postgres(program: &Path) -> Command {
    // /proc/self belongs to our effective user.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if root {
        let mut command = Command::new("setpriv");
        command
            .args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PrivatePostgres {
    /// Creates a cluster and starts it.
    pub async fn start() -> Self {
        let dir = scratch_dir("private-postgres");
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .status();
        let initdb = as_postgres(&postgres_bin("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(initdb.success(), "initdb failed");
        let mut postgres = Self {
            dir,
            port: unused_port(),
            process: None,
        };
        postgres.start_server().await;
        postgres
    }

    /// `postgres://postgres@127.0.0.1:<port>`, without a database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut) and starts it again on the same port.
    pub async fn restart(&mut self, down_for: Duration) {
        self.stop_server();
        tokio::time::sleep(down_for).await;
        self.start_server().await;
    }

    /// Stops the server (fast shutdown: connections are cut).
    pub fn stop(&mut self) {
        self.stop_server();
    }

    /// Stops the server with an immediate shutdown (SIGQUIT): every backend quits at once,
    /// nothing is checkpointed, and the next start recovers from the write-ahead log, as
    /// after a crash.
    pub fn stop_immediately(&mut self) {
        self.stop_with("-QUIT");
    }

    /// Starts the stopped server again on the same port.
    pub async fn start_again(&mut self) {
        self.start_server().await;
    }

    async fn start_server(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log file");
        let process = as_postgres(&postgres_bin("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("postgres starts");
        self.process = Some(process);
        wait_for_port(self.port, "the private Postgres").await;
        // The port opens before the server accepts sessions ("the database system is starting up").
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            use sqlx::Connection as _;
            match sqlx::PgConnection::connect(&format!("{}/postgres", self.url())).await {
                Ok(connection) => {
                    let _ = connection.close().await;
                    return;
                }
                Err(error) => assert!(
                    tokio::time::Instant::now() < deadline,
                    "the private Postgres did not accept sessions within {STARTUP:?}: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop_server(&mut self) {
        // SIGINT is Postgres' fast shutdown.
        self.stop_with("-INT");
    }

    fn stop_with(&mut self, signal: &str) {
        if let Some(mut process) = self.process.take() {
            let _ = Command::new("kill")
                .args([signal, &process.id().to_string()])
                .status();
            let _ = process.wait();
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
