//! `sluice healthcheck`: asks the server on `SLUICE_ADDR` for `/health`,
//! so a container image needs no curl for its `HEALTHCHECK`.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::config::Config;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Succeeds when `/health` answers 200 within [`TIMEOUT`] in all, printing
/// the one line a container runtime shows for the check.
#[allow(clippy::print_stdout)]
pub fn run(config: &Config) -> anyhow::Result<()> {
    let addr = local_addr(config.addr);
    let status = status_line(addr).map_err(|e| anyhow::anyhow!("unhealthy: {addr}: {e}"))?;
    let mut parts = status.split(' ');
    let version = parts.next().unwrap_or_default();
    if matches!(version, "HTTP/1.0" | "HTTP/1.1") && parts.next() == Some("200") {
        println!("healthy: {addr} answered {status}");
        Ok(())
    } else {
        anyhow::bail!("unhealthy: {addr} answered {status:?}")
    }
}

/// The first line of the answer to `GET /health`, read within [`TIMEOUT`]
/// in all (a server that trickles bytes does not hold the check longer).
fn status_line(addr: SocketAddr) -> std::io::Result<String> {
    let deadline = Instant::now() + TIMEOUT;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                std::io::Error::new(ErrorKind::TimedOut, format!("no answer within {TIMEOUT:?}"))
            })
    };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_write_timeout(Some(left()?))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all that matters; 64 bytes hold it.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() && !head[..read].contains(&b'\n') {
        stream.set_read_timeout(Some(left()?))?;
        match stream.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    format!("no answer within {TIMEOUT:?}"),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    let text = String::from_utf8_lossy(&head[..read]);
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

/// Where to reach a server listening on `addr`: the loopback address of
/// its family when it listens on every interface.
fn local_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_address_is_reached_on_loopback() {
        assert_eq!(
            local_addr("0.0.0.0:8080".parse().unwrap()).to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            local_addr("[::]:8080".parse().unwrap()).to_string(),
            "[::1]:8080"
        );
        assert_eq!(
            local_addr("10.1.2.3:80".parse().unwrap()).to_string(),
            "10.1.2.3:80"
        );
    }
}
