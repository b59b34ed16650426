//! The real `keygate` binary in a child process, as an operator runs it.
use super::Admin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running `keygate` process and every stderr line it printed so far.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    pub addr: String,
}

/// `keygate` with nothing of this process's environment: `db_url`, free ports, JSON logs,
/// then `extra_env`.
pub fn command(db_url: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keygate"));
    cmd.env_clear()
        .env("KEYGATE_DATABASE_URL", db_url)
        .env("KEYGATE_LISTEN", "127.0.0.1:0")
        .env("KEYGATE_METRICS__LISTEN", "127.0.0.1:0")
        .env("KEYGATE_LOG__FORMAT", "json")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// Starts `keygate` and waits until it logs "keygate serving" (20 s at most).
pub async fn spawn(db_url: &str, extra_env: &[(&str, &str)], args: &[&str]) -> Proc {
    let mut child = command(db_url, extra_env, args)
        .spawn()
        .expect("spawn keygate");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let addr = lines.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "keygate serving").then(|| v["listen"].as_str().unwrap().to_owned())
        });
        if let Some(addr) = addr {
            return Proc { child, lines, addr };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "keygate exited early ({status}): {:#?}",
                lines.lock().unwrap()
            );
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "keygate did not start: {:#?}",
            lines.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Proc {
    pub async fn admin(&self, token: &str) -> Admin {
        Admin::connect(&self.addr, token).await
    }

    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}
