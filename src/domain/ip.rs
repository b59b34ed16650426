//! IP allowlists: addresses and CIDR ranges, IPv4 and IPv6.
use crate::error::{Error, Result};
use ipnet::IpNet;
use std::net::IpAddr;

pub const MAX_ENTRIES: usize = 256;

/// A key's allowlist; empty means any address. Entries are canonical: the host bits of a
/// range are cleared and IPv4-mapped IPv6 entries are stored as IPv4.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IpAllowlist(Vec<IpNet>);

/// `::ffff:1.2.3.4` is the IPv4 address 1.2.3.4 seen through an IPv6 socket.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_entry(field: &str, raw: &str) -> Result<IpNet> {
    let raw = raw.trim();
    let net = if let Ok(ip) = raw.parse::<IpAddr>() {
        IpNet::from(unmap(ip))
    } else {
        let net: IpNet = raw.parse().map_err(|_| {
            Error::invalid(
                field,
                format!("{raw:?} is not an IPv4/IPv6 address or CIDR range"),
            )
        })?;
        match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96)
                    .map_err(|_| Error::invalid(field, "bad mapped range"))?,
                None => net,
            },
            _ => net,
        }
    };
    Ok(net.trunc())
}

impl IpAllowlist {
    pub fn parse<S: AsRef<str>>(field: &str, raw: &[S]) -> Result<Self> {
        if raw.len() > MAX_ENTRIES {
            return Err(Error::invalid(
                field,
                format!(
                    "has {} entries; at most {MAX_ENTRIES} are allowed",
                    raw.len()
                ),
            ));
        }
        let mut nets = raw
            .iter()
            .enumerate()
            .map(|(i, r)| parse_entry(&format!("{field}[{i}]"), r.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        nets.sort();
        nets.dedup();
        Ok(IpAllowlist(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Canonical text of each entry: a bare address for a single host, else CIDR.
    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|n| {
                if n.prefix_len() == n.max_prefix_len() {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect()
    }

    /// Whether `ip` may use the key. An empty list admits every address; a non-empty one
    /// admits only listed ones, comparing IPv4-mapped IPv6 addresses as IPv4.
    pub fn admits(&self, ip: Option<IpAddr>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        match ip {
            // Unknown caller address with a restricted key: fail closed.
            None => false,
            Some(ip) => {
                let ip = unmap(ip);
                self.0.iter().any(|n| n.contains(&ip))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(xs: &[&str]) -> IpAllowlist {
        IpAllowlist::parse("ip_allowlist", xs).unwrap()
    }

    #[test]
    fn canonicalises() {
        assert_eq!(
            list(&[
                "10.1.2.3/8",
                "::ffff:192.0.2.7",
                "2001:db8::1/32",
                " 198.51.100.1 "
            ])
            .to_strings(),
            vec!["10.0.0.0/8", "192.0.2.7", "198.51.100.1", "2001:db8::/32"]
        );
        assert_eq!(
            list(&["::ffff:10.0.0.0/104"]).to_strings(),
            vec!["10.0.0.0/8"]
        );
    }

    #[test]
    fn rejects_with_the_entry_named() {
        let e = IpAllowlist::parse("ip_allowlist", &["10.0.0.1", "10.0.0.300"])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ip_allowlist[1]:"), "{e}");
        assert!(IpAllowlist::parse("f", &["10.0.0.0/33"]).is_err());
    }

    #[test]
    fn admits() {
        let l = list(&["10.0.0.0/8", "2001:db8::/32", "203.0.113.9"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(l.admits(ip("10.200.0.1")));
        assert!(l.admits(ip("::ffff:10.1.1.1")));
        assert!(l.admits(ip("2001:db8:1::5")));
        assert!(l.admits(ip("203.0.113.9")));
        assert!(!l.admits(ip("203.0.113.10")));
        assert!(!l.admits(ip("11.0.0.1")));
        assert!(!l.admits(None));
        assert!(IpAllowlist::default().admits(None));
    }
}
