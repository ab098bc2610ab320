//! The destination policy: which addresses ffd may dial.
//!
//! Pure (no I/O, no DNS): rules are CIDRs or range names, `allow` wins over
//! `deny`, and a host is judged by the address it dials. The checks happen
//! in three places: config validation (a destination URL that is a denied
//! address), admission (a send whose URL host is a denied address is
//! refused with `denied_destination`), and the connector
//! (`delivery::connect`), which checks every address a name resolves to
//! and dials only those it checked.

use ipnet::IpNet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The named ranges `deny` and `allow` accept.
const RANGES: &[(&str, &[&str])] = &[
    ("loopback", &["127.0.0.0/8", "::1/128"]),
    (
        "private",
        &[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
        ],
    ),
    ("link-local", &["169.254.0.0/16", "fe80::/10"]),
    ("metadata", &["169.254.169.254/32", "fd00:ec2::254/128"]),
    ("unspecified", &["0.0.0.0/8", "::/128"]),
    ("multicast", &["224.0.0.0/4", "ff00::/8"]),
    (
        "documentation",
        &[
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "2001:db8::/32",
        ],
    ),
    (
        "reserved",
        &[
            "240.0.0.0/4",
            "192.0.0.0/24",
            "198.18.0.0/15",
            "192.0.2.0/24",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "100::/64",
            "2001:db8::/32",
        ],
    ),
];

/// One rule: what the config said, and the networks it stands for.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    nets: Vec<IpNet>,
}

impl Rule {
    fn parse(text: &str) -> Result<Rule, String> {
        let name = text.trim();
        if let Some((_, cidrs)) = RANGES.iter().find(|(n, _)| *n == name) {
            let nets = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
            return Ok(Rule {
                name: name.to_string(),
                nets,
            });
        }
        let net = name
            .parse::<IpNet>()
            .or_else(|_| name.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                let names: Vec<&str> = RANGES.iter().map(|(n, _)| *n).collect();
                format!(
                    "{name:?} is neither a CIDR nor a range name ({})",
                    names.join(", ")
                )
            })?;
        Ok(Rule {
            name: name.to_string(),
            nets: vec![canonical_net(net)],
        })
    }

    /// The longest prefix of this rule that contains `ip`.
    fn matches(&self, ip: IpAddr) -> Option<u8> {
        self.nets
            .iter()
            .filter(|n| n.contains(&ip))
            .map(|n| n.prefix_len())
            .max()
    }
}

/// `::ffff:a.b.c.d/n` written in the config means `a.b.c.d/(n-96)`.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

/// Why an address may not be dialled: the address and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The address (canonical: IPv4-mapped IPv6 shown as IPv4).
    pub addr: IpAddr,
    /// The `deny` entry that matched, as written in the config.
    pub rule: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "address {} is denied by the destination policy (deny rule {:?})",
            self.addr, self.rule
        )
    }
}

impl std::error::Error for Denied {}

/// Every address a name resolved to was denied; nothing was dialled.
#[derive(Debug, Clone)]
pub struct AllDenied {
    /// The name that was resolved.
    pub host: String,
    /// Each address and the rule that refused it.
    pub denied: Vec<Denied>,
}

impl fmt::Display for AllDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resolves only to addresses the destination policy denies: ",
            self.host
        )?;
        for (i, d) in self.denied.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} (deny rule {:?})", d.addr, d.rule)?;
        }
        Ok(())
    }
}

impl std::error::Error for AllDenied {}

/// The rules in force.
#[derive(Debug, Clone)]
pub struct Policy {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
    /// Sends may use `url` (else only named destinations).
    pub raw_urls: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::new(
            &["link-local", "metadata", "unspecified", "multicast"].map(String::from),
            &[],
            true,
        )
        .unwrap_or(Policy {
            deny: Vec::new(),
            allow: Vec::new(),
            raw_urls: true,
        })
    }
}

impl Policy {
    /// Parses the rules; the error starts with the key (`deny[i]`...).
    pub fn new(deny: &[String], allow: &[String], raw_urls: bool) -> Result<Policy, String> {
        let parse = |key: &str, list: &[String]| -> Result<Vec<Rule>, String> {
            list.iter()
                .enumerate()
                .map(|(i, r)| Rule::parse(r).map_err(|e| format!("{key}[{i}]`: {e}")))
                .collect()
        };
        Ok(Policy {
            deny: parse("deny", deny)?,
            allow: parse("allow", allow)?,
            raw_urls,
        })
    }

    /// May `ip` be dialled? IPv4-mapped IPv6 is judged as the IPv4 address.
    pub fn check(&self, ip: IpAddr) -> Result<(), Denied> {
        let ip = ip.to_canonical();
        if self.allow.iter().any(|r| r.matches(ip).is_some()) {
            return Ok(());
        }
        // The most specific deny rule names the reason (metadata before link-local).
        let worst = self
            .deny
            .iter()
            .filter_map(|r| r.matches(ip).map(|len| (len, r)))
            .max_by_key(|(len, _)| *len);
        match worst {
            Some((_, r)) => Err(Denied {
                addr: ip,
                rule: r.name.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Judges a URL's host when it is an address, in any form libc
    /// accepts; a name passes (its addresses are checked when it is
    /// resolved, at dial time).
    pub fn check_host(&self, host: &str) -> Result<(), Denied> {
        match parse_ip(host) {
            Some(ip) => self.check(ip),
            None => Ok(()),
        }
    }

    /// Judges a URL's host by name only, for a request a proxy resolves:
    /// an address is checked, and `localhost` and `*.localhost` are judged
    /// as loopback (RFC 6761); any other name passes, since ffd never
    /// learns what the proxy dials.
    pub fn check_host_by_name(&self, host: &str) -> Result<(), Denied> {
        self.check_host(host)?;
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if h == "localhost" || h.ends_with(".localhost") {
            self.check(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
            self.check(IpAddr::V6(Ipv6Addr::LOCALHOST))?;
        }
        Ok(())
    }
}

/// The address a URL host dials when it is an address: `[v6]`, or IPv4 in
/// any form `inet_aton` accepts (`127.1`, `2130706433`, `0x7f.1`,
/// `0177.0.0.1`: one to four parts, decimal, octal with a leading 0 or hex
/// with 0x, the last part filling the remaining bytes). `None` for a name.
pub fn parse_ip(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    inet_aton(host).map(IpAddr::V4)
}

fn inet_aton(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(parts.len());
    for p in &parts {
        nums.push(aton_part(p)?);
    }
    let (last, head) = nums.split_last()?;
    if head.iter().any(|n| *n > 0xff) {
        return None;
    }
    let tail_bytes = 4 - head.len();
    if tail_bytes < 4 && *last >= 1u64 << (8 * tail_bytes) {
        return None;
    }
    if *last > u32::MAX as u64 {
        return None;
    }
    let mut v: u32 = 0;
    for (i, n) in head.iter().enumerate() {
        v |= (*n as u32) << (24 - 8 * i);
    }
    v |= *last as u32;
    Some(Ipv4Addr::from(v))
}

fn aton_part(p: &str) -> Option<u64> {
    if p.is_empty() {
        return None;
    }
    let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        (h, 16)
    } else if p.len() > 1 && p.starts_with('0') {
        (&p[1..], 8)
    } else {
        (p, 10)
    };
    if digits.is_empty() {
        // `0x` alone is 0 for glibc.
        return (radix == 16).then_some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(deny: &[&str], allow: &[&str]) -> Policy {
        let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Policy::new(&s(deny), &s(allow), true).unwrap()
    }

    #[test]
    fn libc_ipv4_forms_are_the_address_they_dial() {
        for (form, want) in [
            ("127.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0x7F000001", "127.0.0.1"),
            ("10.1.258", "10.1.1.2"),
            ("169.254.43518", "169.254.169.254"),
            ("0", "0.0.0.0"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ] {
            assert_eq!(
                parse_ip(form).map(|a| a.to_string()).as_deref(),
                Some(want),
                "{form}"
            );
        }
        for name in [
            "example.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "08.0.0.1",
            "1.2.65536",
            "0x1.foo",
            "",
            "4294967296",
        ] {
            assert_eq!(parse_ip(name), None, "{name}");
        }
    }

    #[test]
    fn default_denies_metadata_link_local_unspecified_multicast_only() {
        let p = Policy::default();
        for (addr, rule) in [
            ("169.254.169.254", Some("metadata")),
            ("169.254.1.1", Some("link-local")),
            ("fe80::1", Some("link-local")),
            ("fd00:ec2::254", Some("metadata")),
            ("0.0.0.0", Some("unspecified")),
            ("::", Some("unspecified")),
            ("224.0.0.1", Some("multicast")),
            ("::ffff:169.254.169.254", Some("metadata")),
            ("127.0.0.1", None),
            ("::1", None),
            ("10.0.0.1", None),
            ("192.168.1.1", None),
            ("93.184.216.34", None),
        ] {
            let got = p.check(addr.parse().unwrap()).err().map(|d| d.rule);
            assert_eq!(got.as_deref(), rule, "{addr}");
        }
    }

    #[test]
    fn allow_wins_over_deny_and_cidrs_work() {
        let p = policy(&["private", "loopback"], &["10.1.0.0/16"]);
        assert!(p.check("10.1.2.3".parse().unwrap()).is_ok());
        assert_eq!(
            p.check("10.2.0.1".parse().unwrap()).unwrap_err().rule,
            "private"
        );
        assert_eq!(
            p.check("::ffff:127.0.0.1".parse().unwrap())
                .unwrap_err()
                .addr
                .to_string(),
            "127.0.0.1"
        );
        assert!(p.check("100.64.0.1".parse().unwrap()).is_err());
        assert!(p.check("fd12::1".parse().unwrap()).is_err());
        let p = policy(&["::ffff:10.0.0.0/104"], &[]);
        assert!(p.check("10.9.9.9".parse().unwrap()).is_err());
    }

    #[test]
    fn hosts_by_name() {
        let p = policy(&["loopback"], &[]);
        for h in ["127.1", "0x7f.1", "[::1]", "2130706433"] {
            assert!(p.check_host(h).is_err(), "{h}");
            assert!(p.check_host_by_name(h).is_err(), "{h}");
        }
        for h in ["localhost", "api.localhost", "LOCALHOST."] {
            assert!(
                p.check_host(h).is_ok(),
                "{h}: names are checked once resolved"
            );
            assert!(p.check_host_by_name(h).is_err(), "{h}");
        }
        assert!(p.check_host_by_name("example.com").is_ok());
    }

    #[test]
    fn bad_rules_name_the_key() {
        let e = Policy::new(&["loopback".into(), "nope".into()], &[], true).unwrap_err();
        assert!(e.starts_with("deny[1]`"), "{e}");
    }
}
