//! A TCP proxy a test controls, to cut one process off from a server (a
//! network partition) while others still reach it.
//!
//! It listens on a free loopback port and forwards each connection to the
//! target. [`TcpProxy::cut`] breaks every forwarded connection and turns
//! new ones away (accepted and closed at once) until [`TcpProxy::restore`].
//! Plain threads, so it works whatever runtime the test uses.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy; it stops accepting when dropped.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    cut: AtomicBool,
    stopped: AtomicBool,
    /// Both ends of every forwarded connection, to break them on a cut.
    open: Mutex<Vec<TcpStream>>,
}

impl State {
    fn break_all(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl TcpProxy {
    /// Forwards a free loopback port to `target`.
    pub fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if shared.cut.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let streams = [&client, &server].map(|s| s.try_clone().unwrap());
                shared.open.lock().unwrap().extend(streams);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Self { addr, state }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Breaks every connection through the proxy and turns new ones away.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::SeqCst);
        self.state.break_all();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }
}

/// Copies `from` into `to` on a thread of its own until either ends.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        self.state.break_all();
        // Wake the accepting thread so it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_then_cuts_then_forwards_again() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in echo.incoming().flatten() {
                let mut reader = stream.try_clone().unwrap();
                let mut writer = stream;
                std::thread::spawn(move || std::io::copy(&mut reader, &mut writer));
            }
        });
        let proxy = TcpProxy::start(target);
        let roundtrip = |stream: &mut TcpStream| -> bool {
            if stream.write_all(b"ping").is_err() {
                return false;
            }
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).is_ok() && &buf == b"ping"
        };
        let mut first = TcpStream::connect(proxy.addr()).unwrap();
        assert!(roundtrip(&mut first));
        proxy.cut();
        assert!(!roundtrip(&mut first), "a cut breaks open connections");
        let mut during = TcpStream::connect(proxy.addr()).unwrap();
        assert!(!roundtrip(&mut during), "and turns new ones away");
        proxy.restore();
        let mut after = TcpStream::connect(proxy.addr()).unwrap();
        assert!(roundtrip(&mut after));
    }
}
