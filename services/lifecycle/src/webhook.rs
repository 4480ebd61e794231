//! Where a tenant's webhook may point. A webhook URL is a tenant admin's
//! input that lifecycle calls from inside the deployment, so by default it
//! may reach only public addresses: a URL naming loopback, a private
//! network or a cloud metadata endpoint (169.254.169.254) would let any
//! tenant admin probe the cluster's network through the answers' errors.
//! An operator who delivers to an in-cluster receiver allows private
//! addresses (`[webhook] allow_private_addresses`).
//!
//! Checked twice: when the URL is written (an address written as an IP, or
//! `localhost`, is refused at once), and on every call, where the client
//! resolves names itself and connects only to the public addresses a name
//! has ([`PublicResolver`]), so a name that resolves to a private address,
//! at once or after the check (DNS rebinding), reaches nothing. Redirects
//! are not followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// The key of the Standard Webhooks signature: a `whsec_<base64>` secret
/// (the scheme's format, what its libraries take) decoded, any other secret
/// as its bytes. A `whsec_` secret whose rest is not base64 is an error: the
/// receiver's library would decode it, or fail to, and never verify.
pub fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    match secret.strip_prefix("whsec_") {
        None => Ok(secret.as_bytes().to_vec()),
        Some(encoded) => match base64::engine::general_purpose::STANDARD.decode(encoded) {
            // An empty key would let anyone sign.
            Ok(key) if key.is_empty() => {
                Err("a whsec_ secret needs a key after whsec_ (base64)".to_owned())
            }
            Ok(key) => Ok(key),
            Err(e) => Err(format!(
                "a whsec_ secret is whsec_ then base64 (the Standard Webhooks format): {e}"
            )),
        },
    }
}

/// Whether `ip` is an address on the public internet: not loopback,
/// private (RFC 1918, unique local), link-local (the metadata endpoints),
/// carrier-grade NAT, unspecified, broadcast, multicast, documentation or
/// reserved. An IPv6 address that carries an IPv4 one (mapped, compatible,
/// NAT64's 64:ff9b::/96, 6to4) is judged by the IPv4 address it leads to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 one leads to, where it carries one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    match s {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, deprecated;
        // not :: or ::1, which are IPv6's own).
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(v4(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if !ip.is_unspecified() && !ip.is_loopback() => Some(v4(hi, lo)),
        // NAT64's well-known prefix (DNS64 answers public hosts with it).
        [0x0064, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(v4(hi, lo)),
        // 6to4: 2002:a.b.c.d::/48.
        [0x2002, hi, lo, ..] => Some(v4(hi, lo)),
        _ => None,
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        // Site-local (deprecated, fec0::/10).
        || (s[0] & 0xffc0) == 0xfec0
        // Documentation, and Teredo's tunnels (2001::/32).
        || (s[0] == 0x2001 && (s[1] == 0x0db8 || s[1] == 0))
        // NAT64 for local use (64:ff9b:1::/48), whatever it leads to.
        || (s[0] == 0x0064 && s[1] == 0xff9b))
}

/// Why `url` may not be called when only public addresses are allowed, for
/// the hosts that tell without a lookup: an IP address, or `localhost`.
pub fn refusal(url: &reqwest::Url) -> Option<String> {
    let host = url.host_str()?;
    // An IPv6 address is written in brackets in a URL.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return (!is_public(ip)).then(|| format!("{bare} is not a public address"));
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    (name == "localhost" || name.ends_with(".localhost")).then(|| format!("{host} is this host"))
}

/// Resolves a webhook's host to its public addresses only; a name with
/// none is an error the delivery records (`last_error`).
#[derive(Debug, Default)]
pub struct PublicResolver;

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            // One answer whether the name does not exist or leads inside:
            // telling them apart would let a tenant admin find out which
            // internal names exist.
            let public: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), 0)).await {
                Ok(addrs) => addrs.filter(|addr| is_public(addr.ip())).collect(),
                Err(_) => Vec::new(),
            };
            if public.is_empty() {
                return Err(format!(
                    "{host} has no public address (lifecycle's webhook.allow_private_addresses allows private ones)"
                )
                .into());
            }
            let addrs: Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
            "64:ff9b:1::808:808",
            "fec0::1",
            "2001::1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
        ] {
            let ip: IpAddr = private.parse().expect("an address");
            assert!(!is_public(ip), "{private} taken for public");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "151.101.1.69",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = public.parse().expect("an address");
            assert!(is_public(ip), "{public} taken for private");
        }
    }

    #[test]
    fn a_url_naming_an_inside_address_is_refused_without_a_lookup() {
        for (url, refused) in [
            ("http://127.0.0.1:8080/hook", true),
            ("http://[::1]/hook", true),
            ("http://169.254.169.254/latest/meta-data", true),
            ("http://LOCALHOST:9000/", true),
            ("http://api.localhost/", true),
            ("http://localhost./", true),
            ("http://2130706433/", true),
            ("http://0x7f.1/", true),
            ("https://8.8.8.8/hook", false),
            ("https://hooks.example.com/x", false),
        ] {
            let url = reqwest::Url::parse(url).expect("a URL");
            assert_eq!(refusal(&url).is_some(), refused, "{url}");
        }
    }

    #[tokio::test]
    async fn a_name_of_this_host_resolves_to_nothing() {
        let name: Name = "localhost".parse().expect("a name");
        let error = PublicResolver
            .resolve(name)
            .await
            .err()
            .expect("localhost has no public address");
        assert!(
            error.to_string().contains("has no public address"),
            "{error}"
        );
        // A name that does not exist answers the same.
        let name: Name = "no-such-host.invalid".parse().expect("a name");
        let error = PublicResolver
            .resolve(name)
            .await
            .err()
            .expect("no such host");
        assert!(
            error.to_string().contains("has no public address"),
            "{error}"
        );
    }
}
