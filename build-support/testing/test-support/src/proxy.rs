//! A TCP proxy in front of a broker, for network faults without touching the broker: every
//! connection through it can be cut at once, or blackholed (bytes stop flowing both ways while
//! the sockets stay open, as on a stalled network), and the address can answer or refuse.

use std::sync::{Arc, Mutex};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A proxy on 127.0.0.1 forwarding to `upstream`, until dropped.
#[derive(Debug)]
pub struct BrokerProxy {
    port: u16,
    blackholed: watch::Sender<bool>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: JoinHandle<()>,
}

impl BrokerProxy {
    /// Forwards a new port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("a port for the proxy");
        Self::serve(listener, upstream)
    }

    /// Forwards `port` (reserved, still free) to `upstream`.
    pub async fn start_on(port: u16, upstream: &str) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("the reserved port is still free");
        Self::serve(listener, upstream)
    }

    fn serve(listener: TcpListener, upstream: &str) -> Self {
        let port = listener.local_addr().expect("bound").port();
        let (blackholed, watching) = watch::channel(false);
        let connections = Arc::new(Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let upstream = upstream.to_owned();
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let watching = watching.clone();
                let forwarding = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(upstream).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::select! {
                            _ = pump(in_read, out_write, watching.clone()) => {}
                            _ = pump(out_read, in_write, watching) => {}
                        }
                    }
                });
                let mut connections = tracked.lock().expect("not poisoned");
                connections.retain(|c: &JoinHandle<()>| !c.is_finished());
                connections.push(forwarding);
            }
        });
        Self {
            port,
            blackholed,
            connections,
            accepting,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// An AMQP URL for the shared broker's credentials through the proxy.
    pub fn url(&self) -> String {
        crate::broker_url_at(self.port)
    }

    /// How many connections go through the proxy now.
    pub fn connections(&self) -> usize {
        let mut connections = self.connections.lock().expect("not poisoned");
        connections.retain(|connection| !connection.is_finished());
        connections.len()
    }

    /// Closes every connection through the proxy now; new ones are accepted.
    pub fn cut(&self) {
        for connection in self.connections.lock().expect("not poisoned").drain(..) {
            connection.abort();
        }
    }

    /// While `on`, no byte goes through in either direction; the sockets stay open.
    pub fn blackhole(&self, on: bool) {
        self.blackholed.send_replace(on);
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.cut();
    }
}

/// Copies `from` to `to`, holding what it read while the proxy is blackholed.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut blackholed: watch::Receiver<bool>,
) {
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if blackholed.wait_for(|on| !on).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
