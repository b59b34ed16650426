//! Redis servers a test owns: local `redis-server` processes on free ports, in a temp dir
//! of their own, killed when dropped. A Redis Cluster of three masters made with
//! `redis-cli --cluster create`; a TLS Redis with a password.
use super::in_ci;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

/// A free port whose cluster bus port (+10000) is free too.
pub fn free_port_pair() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisServer {
    /// `redis-server` with `args` (besides `--bind 127.0.0.1`, no persistence), or `None`
    /// (outside CI, with a loud message) when it cannot run.
    pub fn spawn(port: u16, args: &[&str]) -> Option<RedisServer> {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match child {
            Ok(c) => Some(RedisServer {
                port,
                child: Some(c),
                _dir: dir,
            }),
            Err(e) if !in_ci() => {
                eprintln!(
                    "\n!!! SKIPPING a Redis test: cannot run redis-server ({e}); install it: apt-get install redis-server\n"
                );
                None
            }
            Err(e) => panic!("redis-server is required under CI=true: {e}"),
        }
    }

    /// A plain Redis on `port`.
    pub fn plain(port: u16) -> Option<RedisServer> {
        RedisServer::spawn(port, &["--port", &port.to_string()])
    }

    /// Waits until a plain Redis answers.
    pub async fn wait_up(&self) {
        self.wait_ping(&["-p".to_owned(), self.port.to_string()])
            .await
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Waits until `redis-cli <cli_args> PING` answers PONG.
    pub async fn wait_ping(&self, cli_args: &[String]) {
        for _ in 0..250 {
            let out = Command::new("redis-cli")
                .args(cli_args)
                .arg("PING")
                .output();
            if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server on {} did not answer", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p <port> <args>`'s output.
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of masters only (no replicas).
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub async fn start(masters: usize) -> Option<RedisCluster> {
        let mut nodes = Vec::new();
        for _ in 0..masters {
            let port = free_port_pair();
            let node = RedisServer::spawn(
                port,
                &[
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )?;
            let args = vec!["-p".to_owned(), port.to_string()];
            node.wait_ping(&args).await;
            nodes.push(node);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..250 {
            if nodes
                .iter()
                .all(|n| cli(n.port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return Some(RedisCluster { nodes });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the cluster did not reach cluster_state:ok");
    }

    /// The seed URL (one node; the client discovers the rest).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// How many keys each master holds.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| cli(n.port, &["DBSIZE"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

/// A CA, and a server certificate for 127.0.0.1 it signed, as PEM files in `dir`.
pub fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name
        .push(DnType::CommonName, "keygate test redis CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = p.self_signed(&ca_key).unwrap();
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("server.pem", cert.pem()),
        write("server.key", key.serialize_pem()),
    )
}

/// A Redis speaking only TLS (certificate from [`tls_files`]) and requiring `password`.
pub async fn tls_redis(password: &str) -> Option<(RedisServer, PathBuf)> {
    let port = free_port_pair();
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(dir.path());
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let server = RedisServer::spawn(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &s(&cert),
            "--tls-key-file",
            &s(&key),
            "--tls-ca-cert-file",
            &s(&ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ],
    )?;
    // The CA outlives the temp dir of the certificates: copy it next to the server's data.
    let kept = server.dir().join("ca.pem");
    std::fs::copy(&ca, &kept).unwrap();
    let args: Vec<String> = [
        "--tls",
        "--cacert",
        kept.to_str().unwrap(),
        "-p",
        &port.to_string(),
        "--no-auth-warning",
        "-a",
        password,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    server.wait_ping(&args).await;
    Some((server, kept))
}
