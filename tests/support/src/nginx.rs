//! nginx in front of Sluice replicas for tests: renders the repository's
//! `nginx/nginx.conf` template into a temp dir, runs nginx in the foreground
//! on a free loopback port (another, if that one is taken before nginx
//! binds it), stops it by pid on drop.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx.
pub struct TestNginx {
    child: Child,
    /// Where it listens (plain HTTP).
    pub addr: SocketAddr,
    /// Where it listens with TLS (the production configuration only).
    pub https_addr: Option<SocketAddr>,
    dir: tempfile::TempDir,
}

/// The repository's nginx directory.
fn nginx_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../nginx")
}

/// The repository's template.
pub fn template_path() -> PathBuf {
    nginx_dir().join("nginx.conf")
}

/// The repository's production template (TLS, rate limits).
pub fn production_template_path() -> PathBuf {
    nginx_dir().join("production.conf")
}

/// Fills the template's `${NAME}` placeholders (comments are left as they are).
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    for line in template.lines() {
        let mut line = line.to_owned();
        if !line.trim_start().starts_with('#') {
            for (name, value) in values {
                line = line.replace(&format!("${{{name}}}"), value);
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `server` lines for `upstreams`.
fn servers(upstreams: &[SocketAddr]) -> String {
    upstreams
        .iter()
        .map(|u| format!("server {u};\n        "))
        .collect()
}

/// The production template rendered for loopback: HTTP on `http`, TLS on
/// `https` with the pair in `cert_dir`, files under `prefix`.
pub fn render_production(
    prefix: &Path,
    cert_dir: &Path,
    http: SocketAddr,
    https: SocketAddr,
    upstreams: &[SocketAddr],
) -> String {
    let template =
        std::fs::read_to_string(production_template_path()).expect("read nginx/production.conf");
    let prefix = prefix.to_str().unwrap();
    render(
        &template,
        &[
            ("NGINX_HTTP_LISTEN", &http.to_string()),
            ("NGINX_HTTPS_LISTEN", &format!("{https} ssl http2")),
            ("NGINX_HTTPS_PORT_SUFFIX", &format!(":{}", https.port())),
            ("NGINX_PUBLIC_HOST", "localhost"),
            (
                "NGINX_TLS_CERT",
                cert_dir.join("fullchain.pem").to_str().unwrap(),
            ),
            (
                "NGINX_TLS_KEY",
                cert_dir.join("privkey.pem").to_str().unwrap(),
            ),
            ("NGINX_PREFIX", prefix),
            ("NGINX_ACCESS_LOG", &format!("{prefix}/access.log")),
            ("NGINX_ERROR_LOG", &format!("{prefix}/error.log")),
            ("NGINX_INCLUDE_DIR", nginx_dir().to_str().unwrap()),
            ("NGINX_LOCAL_RESOLVERS", "127.0.0.1"),
            ("SLUICE_UPSTREAM_SERVERS", &servers(upstreams)),
        ],
    )
}

/// `nginx -t` on the configuration at `path` (files under `prefix`): its
/// output when it fails.
pub fn check(prefix: &Path, path: &Path) -> Result<(), String> {
    let out = Command::new(nginx_bin())
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(path)
        .arg("-t")
        .output()
        .expect("run nginx -t (install nginx)");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl TestNginx {
    /// Starts nginx (`nginx/nginx.conf`) balancing over `upstreams`.
    pub fn start(upstreams: &[SocketAddr]) -> Self {
        Self::launch(|dir| {
            let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
            let template = std::fs::read_to_string(template_path()).expect("read nginx/nginx.conf");
            let conf = render(
                &template,
                &[
                    ("NGINX_LISTEN", &addr.to_string()),
                    ("NGINX_PREFIX", dir.to_str().unwrap()),
                    ("NGINX_INCLUDE_DIR", nginx_dir().to_str().unwrap()),
                    ("SLUICE_UPSTREAM_SERVERS", &servers(upstreams)),
                ],
            );
            (conf, addr, None)
        })
    }

    /// Starts nginx as in production (`nginx/production.conf`): TLS with
    /// the certificate in `cert_dir` (scripts/tls-cert), rate limits,
    /// HTTP redirected to HTTPS.
    pub fn start_production(upstreams: &[SocketAddr], cert_dir: &Path) -> Self {
        Self::launch(|dir| {
            let http = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
            let https = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
            let conf = render_production(dir, cert_dir, http, https, upstreams);
            (conf, http, Some(https))
        })
    }

    /// Renders a configuration with `render` (given the temp dir; it
    /// picks the ports) and runs nginx on it, trying other ports if one
    /// is taken before nginx binds it.
    fn launch(render: impl Fn(&Path) -> (String, SocketAddr, Option<SocketAddr>)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // nginx workers run as an unprivileged user when started as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        for _ in 0..crate::PORT_ATTEMPTS {
            let (conf, addr, https_addr) = render(dir.path());
            let unfilled = conf
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains("${"));
            assert!(!unfilled, "a placeholder was left unfilled");
            let conf_path = dir.path().join("nginx.conf");
            std::fs::write(&conf_path, conf).unwrap();
            let mut child = Command::new(nginx_bin())
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start nginx (install nginx)");
            // nginx writes its pid file once it has bound its ports; if a
            // port was taken, it exits instead.
            let pid_file = dir.path().join("nginx.pid");
            let deadline = Instant::now() + Duration::from_secs(30);
            let up = loop {
                let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
                let listening = std::iter::once(addr)
                    .chain(https_addr)
                    .all(|a| std::net::TcpStream::connect(a).is_ok());
                if pid.trim() == child.id().to_string() && listening {
                    break true;
                }
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break false;
                }
                assert!(Instant::now() < deadline, "nginx did not start");
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                return Self {
                    child,
                    addr,
                    https_addr,
                    dir,
                };
            }
        }
        panic!(
            "nginx did not start on any of {} ports",
            crate::PORT_ATTEMPTS
        );
    }

    /// Its access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// `https://localhost:port{path}` (the production configuration).
    pub fn https_url(&self, path: &str) -> String {
        let addr = self.https_addr.expect("a TLS listener");
        format!("https://localhost:{}{path}", addr.port())
    }

    /// `http://addr{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://addr{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

impl Drop for TestNginx {
    fn drop(&mut self) {
        // SIGQUIT would wait for open streams; tests want it gone.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
