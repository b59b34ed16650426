//! Key hygiene: the shipped secret-scanning rules find real Keygate keys, and
//! `keygate key inspect` confirms a finding offline without printing anything secret.
use keygate::domain::key::ApiKeyFormat;
use secrecy::ExposeSecret;
use std::path::Path;

fn rules() -> Vec<(String, regex::Regex)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/secret-scanning/gitleaks.toml");
    let doc: toml::Value = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_owned();
            // gitleaks uses Go's RE2; these patterns use only syntax Rust's regex shares.
            let re = regex::Regex::new(r["regex"].as_str().unwrap()).unwrap();
            (id, re)
        })
        .collect()
}

fn inspect(key: &str) -> (bool, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(["key", "inspect", "-"])
        .env_clear()
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn scanning_rules_find_generated_keys_and_inspect_confirms_them() {
    let rules = rules();
    let broad = &rules
        .iter()
        .find(|(id, _)| id == "keygate-api-key")
        .unwrap()
        .1;
    let nxc = &rules
        .iter()
        .find(|(id, _)| id == "keygate-api-key-nxc")
        .unwrap()
        .1;
    for _ in 0..50 {
        for head in ["nxc_live_", "nxc_test_", "nes_", "niq_prod_", "fc_"] {
            let k = ApiKeyFormat::generate(head);
            let key = k.full.expose_secret().to_owned();
            let text = format!("config:\n  api_key: \"{key}\" # oops\n");
            let found = broad
                .captures(&text)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str());
            assert_eq!(found, Some(key.as_str()), "broad rule on {head}");
            assert_eq!(
                nxc.is_match(&text),
                head.starts_with("nxc_"),
                "exact rule on {head}"
            );
        }
    }
    assert!(!broad.is_match("a normal_sentence with words"));
    assert!(!nxc.is_match("nxc_live_tooshort"));

    let k = ApiKeyFormat::generate("nxc_live_");
    let key = k.full.expose_secret().to_owned();
    let (ok, out) = inspect(&key);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["well_formed"], true);
    assert_eq!(v["tenant_prefix"], "nxc_");
    assert_eq!(v["environment"], "live");
    assert_eq!(v["display_prefix"], k.display_prefix.as_str());
    assert!(
        !out.contains(&key[key.len() - 30..]),
        "inspect printed the secret part"
    );
    // One changed character: the checksum catches it, exit status 1.
    let mut typo: Vec<char> = key.chars().collect();
    let i = typo.len() - 10;
    typo[i] = if typo[i] == 'a' { 'b' } else { 'a' };
    let (ok, out) = inspect(&typo.into_iter().collect::<String>());
    assert!(!ok);
    assert!(out.contains("checksum"), "{out}");
}
