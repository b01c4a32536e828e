//! A fault injected in front of a real server: a TCP proxy that holds each
//! answer back for a while — a store slower than its clients' timeouts.
//!
//! Contract: bytes pass unchanged both ways; the first bytes of the
//! server's answer to a request are held for `delay` (HTTP/1.1, one request
//! at a time per connection, as reqwest sends them). The proxy counts the
//! requests it holds at once: those a client sent and has not had the
//! answer to, also when the client gave up and closed its connection (the
//! server went on with them all the same).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy (stops when dropped).
pub struct SlowProxy {
    /// Where clients connect instead of the server.
    pub address: SocketAddr,
    held: Arc<Held>,
    accepting: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Held {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl SlowProxy {
    /// A proxy on a free loopback port to `upstream`, holding each answer
    /// back for `delay`.
    pub async fn start(upstream: SocketAddr, delay: Duration) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let address = listener.local_addr().expect("proxy address");
        let held = Arc::new(Held::default());
        let accepting = tokio::spawn({
            let held = Arc::clone(&held);
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(relay(client, upstream, delay, Arc::clone(&held)));
                }
            }
        });
        SlowProxy {
            address,
            held,
            accepting,
        }
    }

    /// The most requests held at once so far.
    pub fn most_held_at_once(&self) -> usize {
        self.held.most.load(Ordering::SeqCst)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// One client connection, relayed to its own connection to `upstream`.
async fn relay(client: TcpStream, upstream: SocketAddr, delay: Duration, held: Arc<Held>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // A request is out: sent by the client, its answer not yet passed on.
    let out = Arc::new(AtomicBool::new(false));
    let requests = {
        let (out, held) = (Arc::clone(&out), Arc::clone(&held));
        async move {
            let mut buffer = vec![0_u8; 64 * 1024];
            while let Ok(read) = client_read.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                if !out.swap(true, Ordering::SeqCst) {
                    let now = held.now.fetch_add(1, Ordering::SeqCst) + 1;
                    held.most.fetch_max(now, Ordering::SeqCst);
                }
                if server_write.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
            // The client gave up or is done: the server still answers what
            // it was sent (the answers side ends the count).
        }
    };
    let answers = {
        let out = Arc::clone(&out);
        async move {
            let mut buffer = vec![0_u8; 64 * 1024];
            while let Ok(read) = server_read.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                if out.load(Ordering::SeqCst) {
                    tokio::time::sleep(delay).await;
                    out.store(false, Ordering::SeqCst);
                    held.now.fetch_sub(1, Ordering::SeqCst);
                }
                if client_write.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
            if out.swap(false, Ordering::SeqCst) {
                held.now.fetch_sub(1, Ordering::SeqCst);
            }
        }
    };
    let answers = tokio::spawn(answers);
    requests.await;
    let _ = answers.await;
}
