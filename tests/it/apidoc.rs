//! The API reference (`docs/api.md`) is generated from the comments in
//! `proto/keygate/v1/keygate.proto`, through the descriptor set compiled into Keygate (the
//! one reflection serves). This test regenerates it and fails when the committed file is
//! stale (`UPDATE_API_DOC=1 cargo test --test it apidoc` rewrites it), or when a service,
//! method, message, field, enum or enum value has no comment.
use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto};
use std::collections::HashMap;
use std::fmt::Write;

struct Comments(HashMap<Vec<i32>, String>);

impl Comments {
    fn of(file: &FileDescriptorProto) -> Comments {
        let mut map = HashMap::new();
        for loc in file.source_code_info.iter().flat_map(|s| &s.location) {
            let text = loc.leading_comments().trim();
            let text = if text.is_empty() {
                loc.trailing_comments().trim()
            } else {
                text
            };
            if !text.is_empty() {
                let joined: Vec<&str> = text.lines().map(str::trim).collect();
                map.insert(loc.path.clone(), joined.join(" "));
            }
        }
        Comments(map)
    }

    fn get(&self, path: &[i32], what: &str, missing: &mut Vec<String>) -> String {
        match self.0.get(path) {
            Some(c) => c.replace('|', "\\|"),
            None => {
                missing.push(what.to_owned());
                String::new()
            }
        }
    }
}

fn type_name(f: &prost_types::FieldDescriptorProto) -> String {
    use prost_types::field_descriptor_proto::{Label, Type};
    let base = match f.r#type() {
        Type::Message | Type::Enum => f
            .type_name()
            .trim_start_matches('.')
            .replace("keygate.v1.", ""),
        t => format!("{t:?}").to_lowercase(),
    };
    if f.label() == Label::Repeated {
        format!("repeated {base}")
    } else {
        base
    }
}

fn enum_doc(
    out: &mut String,
    c: &Comments,
    e: &EnumDescriptorProto,
    path: Vec<i32>,
    missing: &mut Vec<String>,
) {
    let _ = writeln!(
        out,
        "### enum `{}`\n\n{}\n",
        e.name(),
        c.get(&path, e.name(), missing)
    );
    let _ = writeln!(out, "| value | number | meaning |\n|---|---|---|");
    for (i, v) in e.value.iter().enumerate() {
        let mut p = path.clone();
        p.extend([2, i as i32]);
        let doc = if v.number() == 0 {
            // The proto3 zero value: documented when it means something.
            c.0.get(&p).cloned().unwrap_or_else(|| "unset".into())
        } else {
            c.get(&p, &format!("{}.{}", e.name(), v.name()), missing)
        };
        let _ = writeln!(out, "| `{}` | {} | {} |", v.name(), v.number(), doc);
    }
    out.push('\n');
}

fn message_doc(
    out: &mut String,
    c: &Comments,
    m: &DescriptorProto,
    path: Vec<i32>,
    missing: &mut Vec<String>,
) {
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    let _ = writeln!(
        out,
        "### `{}`\n\n{}\n",
        m.name(),
        c.get(&path, m.name(), missing)
    );
    if !m.field.is_empty() {
        let _ = writeln!(out, "| field | type | meaning |\n|---|---|---|");
        for (i, f) in m.field.iter().enumerate() {
            let mut p = path.clone();
            p.extend([2, i as i32]);
            let doc = c.get(&p, &format!("{}.{}", m.name(), f.name()), missing);
            let _ = writeln!(out, "| `{}` | `{}` | {} |", f.name(), type_name(f), doc);
        }
        out.push('\n');
    }
}

fn render() -> (String, Vec<String>) {
    let set = prost_types::FileDescriptorSet::decode(keygate::grpc::FILE_DESCRIPTOR_SET).unwrap();
    let file = set
        .file
        .iter()
        .find(|f| f.package() == "keygate.v1")
        .expect("keygate.v1 in the descriptor set");
    let c = Comments::of(file);
    let mut missing = Vec::new();
    let mut out = String::from(
        "# keygate.v1 API reference\n\nGenerated from the comments in \
         [`proto/keygate/v1/keygate.proto`](../proto/keygate/v1/keygate.proto) by \
         `tests/it/apidoc.rs` (`UPDATE_API_DOC=1 cargo test --test it apidoc`); do not edit \
         by hand. Server reflection serves the same descriptors: \
         `grpcurl -plaintext 127.0.0.1:50051 describe keygate.v1.KeyAdmin`.\n\n",
    );
    for (si, s) in file.service.iter().enumerate() {
        let _ = writeln!(
            out,
            "## service `{}`\n\n{}\n",
            s.name(),
            c.get(&[6, si as i32], s.name(), &mut missing)
        );
        let _ = writeln!(
            out,
            "| RPC | request → response | what it does |\n|---|---|---|"
        );
        for (mi, m) in s.method.iter().enumerate() {
            let doc = c.get(
                &[6, si as i32, 2, mi as i32],
                &format!("{}.{}", s.name(), m.name()),
                &mut missing,
            );
            let short = |t: &str| t.trim_start_matches('.').replace("keygate.v1.", "");
            let _ = writeln!(
                out,
                "| `{}` | `{}` → `{}` | {} |",
                m.name(),
                short(m.input_type()),
                short(m.output_type()),
                doc
            );
        }
        out.push('\n');
    }
    out.push_str("## Messages\n\n");
    for (i, m) in file.message_type.iter().enumerate() {
        message_doc(&mut out, &c, m, vec![4, i as i32], &mut missing);
    }
    out.push_str("## Enums\n\n");
    for (i, e) in file.enum_type.iter().enumerate() {
        enum_doc(&mut out, &c, e, vec![5, i as i32], &mut missing);
    }
    (out, missing)
}

#[test]
fn api_reference_is_generated_from_proto_comments_and_complete() {
    let (doc, missing) = render();
    assert!(
        missing.is_empty(),
        "proto elements without a comment ({}):\n{}",
        missing.len(),
        missing.join("\n")
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api.md");
    if std::env::var_os("UPDATE_API_DOC").is_some() {
        std::fs::write(&path, &doc).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == doc,
        "docs/api.md is stale: run `UPDATE_API_DOC=1 cargo test --test it apidoc` and commit it"
    );
}
