//! `sluice healthcheck`: asks the server on `SLUICE_ADDR` for `/health`,
//! so a container image needs no curl for its `HEALTHCHECK`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::Config;

/// How long the whole check may take.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Succeeds when `/health` answers 200, printing the one line a container
/// runtime shows for the check.
#[allow(clippy::print_stdout)]
pub fn run(config: &Config) -> anyhow::Result<()> {
    let addr = local_addr(config.addr);
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all that matters; 64 bytes hold it.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..])? {
            0 => break,
            n => read += n,
        }
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let status = line.lines().next().unwrap_or_default().trim().to_owned();
    if status.split(' ').nth(1) == Some("200") {
        println!("healthy: {addr} answered {status}");
        Ok(())
    } else {
        anyhow::bail!("unhealthy: {addr} answered {status:?}")
    }
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
