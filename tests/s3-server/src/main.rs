//! `s3-server ROOT ACCESS_KEY SECRET_KEY [PORT]`: a real S3 server for
//! Sluice's tests and benchmarks, in MinIO's place: s3s-fs (objects as
//! files under `ROOT`, SigV4 checked against the one key pair) on a
//! loopback port (`PORT`, or a free one).
//! It prints its URL on the first line of stdout once it accepts
//! connections, and serves until killed.

use std::io::Write;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(access_key), Some(secret_key)) = (args.next(), args.next(), args.next())
    else {
        anyhow::bail!("usage: s3-server ROOT ACCESS_KEY SECRET_KEY [PORT]");
    };
    let port: u16 = match args.next() {
        Some(port) => port.parse().context("PORT must be a port number")?,
        None => 0,
    };
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {root}"))?;
    let fs = s3s_fs::FileSystem::new(&root).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
    let service = builder.build();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "http://{}", listener.local_addr()?)?;
    stdout.flush()?;
    let http = Builder::new(TokioExecutor::new());
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let connection = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}
