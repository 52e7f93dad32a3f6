//! Outbound HTTP grants: the endpoints a job may reach (issue 14), deny by default.
//!
//! An operator grants endpoints as URLs, `scheme://host[:port][/path-prefix]`, as Spin's
//! `allowed_outbound_hosts` does, and optionally the addresses the host's name may resolve
//! to. A request is allowed when one grant has its scheme, host and port and its path lies
//! under the grant's prefix; the connection is then made only to an address the grant
//! allows ([`Endpoint::usable_addresses`]), resolved once by the host and pinned, so a
//! granted name cannot be pointed at another host (DNS rebinding), and loopback or private
//! addresses are reached only when the operator named them.
//!
//! This module is the policy alone (pure, tested here); `crate::outbound` applies it to
//! every `wasi:http` request, and a manifest's `[[outbound]]` tables grant it.

use std::fmt;
use std::net::IpAddr;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        match s.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// A host as granted or asked for: a name (lower case, without a trailing dot) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// `host` from a URL's authority: `[v6]`, v4, or a DNS name.
    fn parse(host: &str) -> Result<Host, String> {
        if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return v6.parse().map(Host::Ip).map_err(|_| format!("{host:?} is not an IPv6 address"));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!("{host:?} is not a host name"));
        }
        Ok(Host::Name(name))
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Where a request goes: what the policy looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
    /// The path, without the query.
    pub path: String,
}

impl Target {
    /// A request's scheme, authority (`host[:port]`, no user info) and path with query.
    pub fn parse(scheme: &str, authority: &str, path_with_query: &str) -> Result<Target, String> {
        let scheme = Scheme::parse(scheme).ok_or_else(|| format!("the scheme {scheme:?}: only http and https"))?;
        let (host, port) = split_authority(authority, scheme)?;
        let path = path_with_query.split(['?', '#']).next().unwrap_or("");
        let path = if path.is_empty() { "/".to_owned() } else { path.to_owned() };
        if !path.starts_with('/') {
            return Err(format!("the path {path:?} does not start with /"));
        }
        Ok(Target { scheme, host, port, path })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}{}", self.scheme, self.host, self.port, self.path)
    }
}

fn split_authority(authority: &str, scheme: Scheme) -> Result<(Host, u16), String> {
    if authority.contains('@') {
        return Err(format!("{authority:?}: user info in a URL is not taken (grant secrets instead)"));
    }
    // A port follows the last `:` after a bracketed v6 address, or the only `:` otherwise.
    let (host, port) = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') && (authority.starts_with('[') || authority.matches(':').count() == 1) => {
            let port = &authority[at + 1..];
            let port: u16 = port.parse().map_err(|_| format!("{authority:?}: the port {port:?} is not a number up to 65535"))?;
            (&authority[..at], port)
        }
        _ => (authority, scheme.default_port()),
    };
    if port == 0 {
        return Err(format!("{authority:?}: port 0"));
    }
    Ok((Host::parse(host)?, port))
}

/// One granted endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
    /// Requests' paths must lie under it: `/` for any; `/bucket/` for the keys under
    /// `bucket/` (and `/bucket` itself).
    pub path_prefix: String,
    /// The addresses the host's name may resolve to, if the operator named them.
    pub addresses: Option<Vec<IpAddr>>,
    /// CA certificates (DER) trusted for this endpoint's TLS besides the public roots: a
    /// private gateway's own CA (a manifest's `ca_file`).
    pub ca_certificates: Vec<Vec<u8>>,
}

/// Why a request is refused; says what was asked and what is granted, never a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No grant names the scheme, host and port (the job's grants listed by their URL).
    NotGranted { target: String },
    /// A grant names the endpoint, but the path is not under its prefix, or could leave it.
    Path { target: String, prefix: String },
    /// The name resolves to no address the grant allows.
    Address { target: String, resolved: Vec<IpAddr> },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::NotGranted { target } => write!(f, "{target}: no outbound grant names this scheme, host and port"),
            Denied::Path { target, prefix } => write!(f, "{target}: the path is not under the granted prefix {prefix}"),
            Denied::Address { target, resolved } => {
                write!(f, "{target}: resolves to {resolved:?}, none of them an address the grant allows")
            }
        }
    }
}

impl Endpoint {
    /// A grant from its URL (`scheme://host[:port][/prefix]`, no user info, query or
    /// fragment) and the addresses its name may resolve to (none: any public address).
    pub fn parse(url: &str, addresses: &[String]) -> Result<Endpoint, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not a URL (scheme://host[:port][/prefix])"))?;
        let scheme = Scheme::parse(scheme).ok_or_else(|| format!("{url:?}: only http and https"))?;
        if rest.contains(['?', '#']) {
            return Err(format!("{url:?}: a grant takes no query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        let (host, port) = split_authority(authority, scheme)?;
        if leaves_its_prefix(path) {
            return Err(format!("{url:?}: the path prefix has dot segments or encoded separators"));
        }
        let addresses = match addresses {
            [] => None,
            list => Some(
                list.iter()
                    .map(|a| a.parse::<IpAddr>().map_err(|_| format!("{url:?}: {a:?} is not an IP address")))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Endpoint { scheme, host, port, path_prefix: path.to_owned(), addresses, ca_certificates: Vec::new() })
    }

    fn names(&self, t: &Target) -> bool {
        self.scheme == t.scheme && self.host == t.host && self.port == t.port
    }

    /// Whether `path` is under the prefix: equal to it, or below it at a segment boundary.
    fn covers(&self, path: &str) -> bool {
        let prefix = self.path_prefix.as_str();
        if prefix == "/" {
            return true;
        }
        let bare = prefix.strip_suffix('/').unwrap_or(prefix);
        path == bare || path.strip_prefix(bare).is_some_and(|rest| rest.starts_with('/'))
    }

    /// Of the addresses the host resolved the target's name to, those a connection may use:
    /// with `addresses` granted, those among them; for a granted IP, that IP; for a name
    /// without addresses, the public ones only (a name that resolves to loopback or a
    /// private network is reached only if the operator grants that address).
    pub fn usable_addresses(&self, target: &Target, resolved: &[IpAddr]) -> Result<Vec<IpAddr>, Denied> {
        let usable: Vec<IpAddr> = match (&self.host, &self.addresses) {
            (_, Some(granted)) => resolved.iter().copied().filter(|a| granted.contains(a)).collect(),
            (Host::Ip(ip), None) => resolved.iter().copied().filter(|a| a == ip).collect(),
            (Host::Name(_), None) => resolved.iter().copied().filter(is_public).collect(),
        };
        if usable.is_empty() {
            return Err(Denied::Address { target: target.to_string(), resolved: resolved.to_vec() });
        }
        Ok(usable)
    }
}

/// Whether a path could reach outside a prefix it starts with: `.`/`..` segments, encoded
/// dots or separators, backslashes (servers that normalise them would).
fn leaves_its_prefix(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.contains("%2e") || lower.contains("%2f") || lower.contains("%5c") || path.contains('\\')
        || path.split('/').any(|seg| seg == "." || seg == "..")
}

/// Not loopback, unspecified, private, link-local, shared (CGNAT), documentation,
/// benchmarking, multicast or broadcast; for IPv6 also not unique-local, and a v4-mapped
/// address counts as its v4 address.
fn is_public(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || (a == 192 && b == 0 && c == 0)
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(&IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// A job's outbound grants; none: no network at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints(pub Vec<Endpoint>);

impl Endpoints {
    /// The grant a request falls under, or why none does.
    pub fn grant_for(&self, target: &Target) -> Result<&Endpoint, Denied> {
        let named: Vec<&Endpoint> = self.0.iter().filter(|e| e.names(target)).collect();
        if named.is_empty() {
            return Err(Denied::NotGranted { target: target.to_string() });
        }
        if leaves_its_prefix(&target.path) {
            return Err(Denied::Path { target: target.to_string(), prefix: named[0].path_prefix.clone() });
        }
        named
            .iter()
            .find(|e| e.covers(&target.path))
            .copied()
            .ok_or_else(|| Denied::Path { target: target.to_string(), prefix: named[0].path_prefix.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(list: &[(&str, &[&str])]) -> Endpoints {
        Endpoints(
            list.iter()
                .map(|(url, addrs)| Endpoint::parse(url, &addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>()).unwrap())
                .collect(),
        )
    }

    fn target(url: &str) -> Target {
        let (scheme, rest) = url.split_once("://").unwrap();
        let at = rest.find('/').unwrap_or(rest.len());
        Target::parse(scheme, &rest[..at], &rest[at..]).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_request_needs_a_grant_of_its_scheme_host_port_and_path() {
        let g = grants(&[("http://127.0.0.1:7480/rbd-wasm-test/", &[]), ("https://S3.Example.com./", &[])]);
        assert!(g.grant_for(&target("http://127.0.0.1:7480/rbd-wasm-test/1.rbddiff?uploads")).is_ok());
        assert!(g.grant_for(&target("http://127.0.0.1:7480/rbd-wasm-test")).is_ok(), "the bucket itself");
        assert!(g.grant_for(&target("https://s3.example.com/any/key")).is_ok(), "names compare without case and trailing dot");
        assert!(g.grant_for(&target("https://s3.example.com:443/k")).is_ok(), "the scheme's default port");
        for (url, kind) in [
            ("http://127.0.0.1:6789/rbd-wasm-test/x", "not-granted"),
            ("http://127.0.0.1/rbd-wasm-test/x", "not-granted"),
            ("https://127.0.0.1:7480/rbd-wasm-test/x", "not-granted"),
            ("http://localhost:7480/rbd-wasm-test/x", "not-granted"),
            ("http://s3.example.com/k", "not-granted"),
            ("https://s3.example.com.evil.net/k", "not-granted"),
            ("http://127.0.0.1:7480/rbd-wasm-test-2/x", "path"),
            ("http://127.0.0.1:7480/other/x", "path"),
            ("http://127.0.0.1:7480/rbd-wasm-test/../other/x", "path"),
            ("http://127.0.0.1:7480/rbd-wasm-test/%2e%2e/other", "path"),
            ("http://127.0.0.1:7480/rbd-wasm-test%2Fx", "path"),
            ("http://127.0.0.1:7480/rbd-wasm-test/..\\x", "path"),
        ] {
            let got = match g.grant_for(&target(url)) {
                Ok(_) => "allowed",
                Err(Denied::NotGranted { .. }) => "not-granted",
                Err(Denied::Path { .. }) => "path",
                Err(Denied::Address { .. }) => "address",
            };
            assert_eq!(got, kind, "{url}");
        }
        assert_eq!(Endpoints::default().grant_for(&target("http://example.com/")).map(drop), Err(Denied::NotGranted { target: "http://example.com:80/".into() }));
    }

    #[test]
    fn the_connection_goes_only_to_an_address_the_grant_allows() {
        let name = Endpoint::parse("https://s3.example.com", &[]).unwrap();
        let t = target("https://s3.example.com/k");
        assert_eq!(name.usable_addresses(&t, &[ip("10.0.0.5"), ip("93.184.216.34")]), Ok(vec![ip("93.184.216.34")]), "public only");
        for internal in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1"] {
            assert!(name.usable_addresses(&t, &[ip(internal)]).is_err(), "{internal}: a granted name resolving to it");
        }
        let pinned = Endpoint::parse("http://rgw.internal:7480/", &["127.0.0.2".into()]).unwrap();
        let t = target("http://rgw.internal:7480/b");
        assert!(pinned.usable_addresses(&t, &[ip("127.0.0.1")]).is_err(), "resolving elsewhere than granted");
        assert_eq!(pinned.usable_addresses(&t, &[ip("127.0.0.1"), ip("127.0.0.2")]), Ok(vec![ip("127.0.0.2")]));
        let literal = Endpoint::parse("http://127.0.0.1:7480", &[]).unwrap();
        let t = target("http://127.0.0.1:7480/");
        assert_eq!(literal.usable_addresses(&t, &[ip("127.0.0.1")]), Ok(vec![ip("127.0.0.1")]), "an address the operator wrote");
        let v6 = Endpoint::parse("http://[::1]:8080/x/", &[]).unwrap();
        assert_eq!((v6.host.clone(), v6.port), (Host::Ip(ip("::1")), 8080));
    }

    #[test]
    fn bad_grants_are_refused_with_a_reason() {
        for (url, addrs) in [
            ("ftp://host/", &[][..]),
            ("host:80", &[]),
            ("http://user:pw@host/", &[]),
            ("http://host:99999/", &[]),
            ("http://host:0/", &[]),
            ("http://host/?q", &[]),
            ("http://ho_st/", &[]),
            ("http://host/a/../b", &[]),
            ("http://host/", &["not-an-ip"]),
        ] {
            let addrs: Vec<String> = addrs.iter().map(|a: &&str| a.to_string()).collect();
            assert!(Endpoint::parse(url, &addrs).is_err(), "{url}");
        }
    }
}
