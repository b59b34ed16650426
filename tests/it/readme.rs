//! The README's grpcurl walkthrough, run verbatim against the real binary with real grpcurl.
use crate::support::{in_ci, spawn, Db, TestDb};
use std::path::{Path, PathBuf};

/// Every ```sh block between readme-test markers (there may be several regions), in order.
fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut regions = String::new();
    let mut rest = readme.as_str();
    while let Some(start) = rest.find("<!-- readme-test:begin") {
        let end = rest[start..]
            .find("<!-- readme-test:end -->")
            .expect("every begin marker has an end marker")
            + start;
        regions.push_str(&rest[start..end]);
        rest = &rest[end + 1..];
    }
    assert!(!regions.is_empty(), "begin marker");
    let mut script = String::new();
    let mut in_block = false;
    for line in regions.lines() {
        match (in_block, line.trim_end()) {
            (false, "```sh") => in_block = true,
            (true, "```") => in_block = false,
            (true, l) => {
                script.push_str(l);
                script.push('\n');
            }
            _ => {}
        }
    }
    assert!(script.contains("grpcurl"), "no sh blocks found");
    script
}

fn find_grpcurl() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(local)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("grpcurl"))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_grpcurl_walkthrough_works_as_written() {
    let Some(grpcurl) = find_grpcurl() else {
        assert!(
            !in_ci(),
            "grpcurl is required under CI=true (scripts/install-tools.sh installs it)"
        );
        eprintln!("\n!!! SKIPPING the README walkthrough: grpcurl not found. Run ./scripts/install-tools.sh\n");
        return;
    };
    let token = "readme-test-admin-token-0123456789";
    let db = TestDb::new(Db::Sqlite).await.unwrap();
    // The webhook walkthrough's receiver listens on 127.0.0.1.
    let env = [
        ("KEYGATE_ADMIN_TOKEN", token),
        ("KEYGATE_EVENTS__ALLOW_PRIVATE_TARGETS", "true"),
    ];
    let p = spawn(&db.url, &env, &[]).await;
    let path = format!(
        "{}:{}",
        grpcurl.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{}", walkthrough()))
        .env("PATH", path)
        .env("KG", &p.addr)
        .env("TOKEN", token)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "walkthrough failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server\n{}",
        p.output()
    );
    // Every key the walkthrough made is nxc_live_… / nxc_test_…: none may reach the server's log.
    let logs = p.output();
    for leak in ["nxc_live_", "nxc_test_", "nnt_", token, "$argon2"] {
        assert!(!logs.contains(leak), "the server logged {leak:?}");
    }
    for want in [
        "keygate.v1.KeyAdmin",
        "\"decision\": \"ALLOW\"",
        "INSUFFICIENT_SCOPE",
        "\"deniedByReason\"",
        "IP_NOT_ALLOWED",
        "TENANT_MISMATCH",
        "MALFORMED_KEY",
        "MISSING_CREDENTIAL",
        "KEY_NOT_FOUND",
        "KEY_EXPIRED",
        "RATE_LIMITED",
        "KEY_DISABLED",
        "KEY_REVOKED",
        "\"name\": \"Warehouse (EU)\"",
        "old_secret_valid_until",
        "rotate_key",
        "disable_key",
        // Plans and quotas.
        "\"id\": \"starter\"",
        "\"reason\":\"QUOTA_EXCEEDED\"",
        "\"httpStatus\":429",
        "\"used\":\"3\"",
        "{\"decision\":\"ALLOW\",\"reason\":\"OK\"}",
        "ticket 4711",
        "adjust_quota",
        // Metered calls.
        "{\"decision\":\"ALLOW\",\"held_remaining\":\"96000\"}",
        "{\"reserved\":\"4000\",\"actual\":\"1250\",\"charged\":\"1250\"}",
        "{\"settled_remaining\":\"98750\"}",
        // Leaked keys.
        "LEAK_FINDING_LEAKED_KEY_FOUND",
        "LEAK_FINDING_NOT_A_KEY",
        "\"action\": \"revoked\"",
        "{\"decision\":\"DENY\",\"reason\":\"KEY_REVOKED\"}",
        "done=revoked; source=gitleaks; url=https://gist.github.com/someone/0123abcd",
        // Events and webhooks: verified by the Standard Webhooks library.
        "verified key.created key_",
        "verified key.revoked key_",
        "{\"eventType\":\"key.revoked\",\"attempts\":1,\"lastStatus\":204}",
    ] {
        assert!(
            stdout.contains(want),
            "walkthrough output lacks {want:?}:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("\"decision\": \"ALLOW\"").count(),
        3,
        "{stdout}"
    );
    assert_eq!(
        stdout
            .matches("{\"reserved\":\"4000\",\"actual\":\"1250\",\"charged\":\"1250\"}")
            .count(),
        2,
        "a second Settle answers the first: {stdout}"
    );
}
