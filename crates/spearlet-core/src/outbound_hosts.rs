//! `spearlet.http.allowed_hosts`: which hosts a wasm component may reach with outbound HTTP
//! (`wasi:http/outgoing-handler`).
//!
//! The shape follows Spin's `allowed_outbound_hosts`: a comma-separated list of rules, each
//! `[scheme://]host[:port]` where
//! - `scheme` is `http`, `https` or `*` (any; the default when omitted),
//! - `host` is an exact name or address (`api.example.com`, `127.0.0.1`, `[::1]`) or a suffix
//!   pattern `*.example.com` (any subdomain, not the bare domain itself), or `*` (any host),
//! - `port` is a number or `*`; without one the scheme's default port is meant (80 for http,
//!   443 for https; with scheme `*` either).
//!
//! An empty list (the default) allows nothing: outbound HTTP is off until a task opts in.
//! Matching is on the request's scheme, host (lower-case) and port, never on the path.

use crate::{SpearError, SpearResult};

/// The metadata key that holds the rules.
pub const ALLOWED_HOSTS_KEY: &str = "spearlet.http.allowed_hosts";

/// The scheme part of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SchemeRule {
    Http,
    Https,
    Any,
}

/// The host part of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    /// Any host (`*`).
    Any,
    /// Exactly this host, lower-case (brackets of an IPv6 literal removed).
    Exact(String),
    /// Any host ending in `.suffix` (`*.suffix`), lower-case, stored with its leading dot.
    Subdomains(String),
}

/// The port part of a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortRule {
    /// The scheme's default port (80 for http, 443 for https).
    SchemeDefault,
    Exact(u16),
    Any,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct OutboundHostRule {
    scheme: SchemeRule,
    host: HostRule,
    port: PortRule,
}

/// The parsed rules of one task. `Default` allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedOutboundHosts {
    rules: Vec<OutboundHostRule>,
}

impl AllowedOutboundHosts {
    /// Parses the value of [`ALLOWED_HOSTS_KEY`]; an error names the key and the bad rule.
    pub fn parse(value: &str) -> SpearResult<AllowedOutboundHosts> {
        let mut rules = Vec::new();
        for rule_text in value
            .split(',')
            .map(str::trim)
            .filter(|rule| !rule.is_empty())
        {
            rules.push(parse_rule(rule_text).map_err(|reason| {
                SpearError::invalid_argument(format!(
                    "artifact_spec.metadata[\"{ALLOWED_HOSTS_KEY}\"]: rule {rule_text:?} {reason}; \
                     rules look like 127.0.0.1:8080, api.example.com, https://*.example.com, \
                     http://localhost:*"
                ))
            })?);
        }
        Ok(AllowedOutboundHosts { rules })
    }

    /// Whether no host is allowed (outbound HTTP is off).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether a request with this `scheme` (`http`/`https`), `host` and `port` may go out.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let scheme = scheme.to_ascii_lowercase();
        self.rules.iter().any(|rule| {
            let scheme_matches = match rule.scheme {
                SchemeRule::Any => scheme == "http" || scheme == "https",
                SchemeRule::Http => scheme == "http",
                SchemeRule::Https => scheme == "https",
            };
            let host_matches = match &rule.host {
                HostRule::Any => true,
                HostRule::Exact(exact) => *exact == host,
                HostRule::Subdomains(suffix) => host.ends_with(suffix.as_str()),
            };
            let port_matches = match rule.port {
                PortRule::Any => true,
                PortRule::Exact(exact) => exact == port,
                PortRule::SchemeDefault => match scheme.as_str() {
                    "http" => port == 80,
                    "https" => port == 443,
                    _ => false,
                },
            };
            scheme_matches && host_matches && port_matches
        })
    }
}

fn parse_rule(text: &str) -> Result<OutboundHostRule, &'static str> {
    let (scheme, rest) = match text.split_once("://") {
        Some(("http", rest)) => (SchemeRule::Http, rest),
        Some(("https", rest)) => (SchemeRule::Https, rest),
        Some(("*", rest)) => (SchemeRule::Any, rest),
        Some(_) => return Err("has a scheme other than http, https or *"),
        None => (SchemeRule::Any, text),
    };
    if rest.contains('/') {
        return Err("has a path; rules name hosts and ports only");
    }
    // `[::1]:8080`, `[::1]`, `host:port`, `host`.
    let (host_text, port_text) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err("opens an IPv6 literal with [ but never closes it");
        };
        match after {
            "" => (address, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (address, Some(port)),
                None => return Err("has something other than :port after the IPv6 literal"),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    let host_text = host_text.to_ascii_lowercase();
    let host = if host_text == "*" {
        HostRule::Any
    } else if let Some(suffix) = host_text.strip_prefix("*.") {
        if suffix.is_empty() || suffix.contains('*') {
            return Err("has a suffix pattern without a domain after *.");
        }
        HostRule::Subdomains(format!(".{suffix}"))
    } else if host_text.is_empty() {
        return Err("has no host");
    } else if host_text.contains('*') {
        return Err("uses * other than as the whole host or a leading *.");
    } else {
        HostRule::Exact(host_text)
    };
    let port = match port_text {
        None => PortRule::SchemeDefault,
        Some("*") => PortRule::Any,
        Some(number) => match number.parse::<u16>() {
            Ok(port) if port > 0 => PortRule::Exact(port),
            _ => return Err("has a port that is not a number from 1 to 65535 or *"),
        },
    };
    Ok(OutboundHostRule { scheme, host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_allowed_by_default() {
        let rules = AllowedOutboundHosts::default();
        assert!(rules.is_empty());
        assert!(!rules.allows("http", "127.0.0.1", 80));
        assert!(AllowedOutboundHosts::parse(" , ").unwrap().is_empty());
    }

    #[test]
    fn exact_hosts_match_their_port_or_the_scheme_default() {
        let rules = AllowedOutboundHosts::parse("127.0.0.1:8080, api.example.com").unwrap();
        assert!(rules.allows("http", "127.0.0.1", 8080));
        assert!(!rules.allows("http", "127.0.0.1", 8081));
        assert!(rules.allows("https", "API.example.com", 443));
        assert!(rules.allows("http", "api.example.com", 80));
        assert!(!rules.allows("http", "api.example.com", 8080));
        assert!(!rules.allows("http", "evil.example.com", 80));
    }

    #[test]
    fn suffix_patterns_match_subdomains_only() {
        let rules = AllowedOutboundHosts::parse("https://*.example.com").unwrap();
        assert!(rules.allows("https", "a.example.com", 443));
        assert!(rules.allows("https", "a.b.example.com", 443));
        assert!(!rules.allows("https", "example.com", 443));
        assert!(!rules.allows("https", "badexample.com", 443));
        assert!(!rules.allows("http", "a.example.com", 80));
    }

    #[test]
    fn wildcards_and_ipv6_literals() {
        let rules =
            AllowedOutboundHosts::parse("http://localhost:*, [::1]:9000, *://*:8443").unwrap();
        assert!(rules.allows("http", "localhost", 1234));
        assert!(!rules.allows("https", "localhost", 1234));
        assert!(rules.allows("http", "[::1]", 9000));
        assert!(rules.allows("https", "anything.test", 8443));
    }

    #[test]
    fn bad_rules_are_refused_naming_the_key_and_the_rule() {
        for bad in [
            "ftp://host",
            "host/path",
            "host:0",
            "host:99999",
            "*.",
            "a*.example.com",
            "[::1",
            ":80",
        ] {
            let error = AllowedOutboundHosts::parse(bad).unwrap_err();
            assert!(error.message.contains(ALLOWED_HOSTS_KEY), "{bad}: {error}");
            assert!(error.message.contains(bad), "{bad}: {error}");
        }
    }
}
