//! The Helm chart's rendered `keygate.toml` is accepted by the real binary, for the default
//! and the HA values (scripts/check-deploy.sh checks the manifests themselves).
use crate::support::in_ci;
use std::path::{Path, PathBuf};

fn helm() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/helm");
    p.is_file().then_some(p)
}

/// The `keygate.toml` of the rendered ConfigMap.
fn rendered_config(helm: &Path, extra: &[&str]) -> String {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/keygate");
    let out = std::process::Command::new(helm)
        .args(["template", "kg"])
        .arg(&chart)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let start = text
        .find("keygate.toml: |")
        .expect("the ConfigMap holds keygate.toml");
    text[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

fn check_config(toml: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.toml");
    std::fs::write(&file, toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .env_clear()
        .env("KEYGATE_CONFIG", &file)
        .envs(env.iter().copied())
        .arg("check-config")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_chart_renders_a_configuration_keygate_accepts() {
    let Some(helm) = helm() else {
        assert!(
            !in_ci(),
            "helm is required under CI=true (scripts/install-tools.sh installs it)"
        );
        eprintln!("\n!!! SKIPPING the chart config test: helm not found. Run ./scripts/install-tools.sh\n");
        return;
    };
    let default = rendered_config(&helm, &[]);
    assert!(
        default.contains("database_url = \"sqlite:///data/keygate.db\""),
        "{default}"
    );
    let (ok, err) = check_config(&default, &[]);
    assert!(ok, "default values: {err}\n{default}");

    let ha_values = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/keygate/values-ha.yaml");
    let ha = rendered_config(&helm, &["-f", ha_values.to_str().unwrap()]);
    assert!(
        !ha.contains("database_url"),
        "the HA URL comes from a Secret"
    );
    let (ok, err) = check_config(
        &ha,
        &[
            ("KEYGATE_DATABASE_URL", "postgres://keygate@db/keygate"),
            ("KEYGATE_REDIS__URL", "redis://redis:6379"),
        ],
    );
    assert!(ok, "HA values: {err}\n{ha}");

    // A setting Keygate does not know is caught before deploying.
    let (ok, err) = check_config(&format!("{default}\nno_such_setting = 1\n"), &[]);
    assert!(!ok && err.contains("no_such_setting"), "{err}");
}
