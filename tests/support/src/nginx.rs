//! nginx in front of Sluice replicas for tests: renders the repository's
//! `nginx/nginx.conf` template into a temp dir, runs nginx in the foreground
//! on a free loopback port (another, if that one is taken before nginx
//! binds it), stops it by pid on drop.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running nginx.
pub struct TestNginx {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// The repository's template.
pub fn template_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../nginx/nginx.conf")
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

impl TestNginx {
    /// Starts nginx balancing over `upstreams`.
    pub fn start(upstreams: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // nginx workers run as an unprivileged user when started as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("server {u};\n        "))
            .collect();
        let template = std::fs::read_to_string(template_path()).expect("read nginx/nginx.conf");
        for _ in 0..crate::PORT_ATTEMPTS {
            let addr = SocketAddr::from(([127, 0, 0, 1], crate::free_port()));
            let conf = render(
                &template,
                &[
                    ("NGINX_LISTEN", &addr.to_string()),
                    ("NGINX_PREFIX", dir.path().to_str().unwrap()),
                    ("SLUICE_UPSTREAM_SERVERS", &servers),
                ],
            );
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
            // nginx writes its pid file once it has bound its port; if the
            // port was taken, it exits instead.
            let pid_file = dir.path().join("nginx.pid");
            let deadline = Instant::now() + Duration::from_secs(30);
            let up = loop {
                let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
                if pid.trim() == child.id().to_string()
                    && std::net::TcpStream::connect(addr).is_ok()
                {
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
                    _dir: dir,
                };
            }
        }
        panic!(
            "nginx did not start on any of {} ports",
            crate::PORT_ATTEMPTS
        );
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
