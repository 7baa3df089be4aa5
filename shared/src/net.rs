//! Which addresses a CRM URL may reach. Unless `CRM_ALLOW_PRIVATE_NETWORKS`
//! is set, ingest refuses a CRM URL whose host is, or resolves to, anything
//! but the public internet when the account is created or updated, and the
//! forwarder refuses to connect to one at delivery (DNS can change).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::LazyLock;

use ipnet::IpNet;

/// IANA's special-purpose ranges (RFC 6890 and later) that are not the
/// public internet, plus the IPv6 ranges that carry an IPv4 address in a way
/// this check cannot follow (IPv4-compatible, local-use NAT64, Teredo).
static NOT_PUBLIC: LazyLock<Vec<IpNet>> = LazyLock::new(|| {
    [
        // IPv4
        "0.0.0.0/8",       // "this network"
        "10.0.0.0/8",      // private
        "100.64.0.0/10",   // carrier-grade NAT
        "127.0.0.0/8",     // loopback
        "169.254.0.0/16",  // link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",   // private
        "192.0.0.0/24",    // IETF protocol assignments
        "192.0.2.0/24",    // documentation
        "192.88.99.0/24",  // 6to4 relay anycast
        "192.168.0.0/16",  // private
        "198.18.0.0/15",   // benchmarking
        "198.51.100.0/24", // documentation
        "203.0.113.0/24",  // documentation
        "224.0.0.0/4",     // multicast
        "240.0.0.0/4",     // reserved, and broadcast
        // IPv6
        "::/96",          // unspecified, loopback, IPv4-compatible (deprecated)
        "64:ff9b:1::/48", // local-use NAT64
        "100::/64",       // discard
        "2001::/23",      // IETF protocol assignments (Teredo included)
        "2001:db8::/32",  // documentation
        "3fff::/20",      // documentation
        "fc00::/7",       // unique local
        "fe80::/10",      // link-local
        "fec0::/10",      // site-local (deprecated)
        "ff00::/8",       // multicast
    ]
    .iter()
    .map(|net| net.parse().expect("a valid range"))
    .collect()
});

/// Whether an address is on the public internet. An IPv6 address that
/// carries an IPv4 one (mapped `::ffff:0:0/96`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) is judged by the IPv4 address it reaches.
pub fn is_public(ip: IpAddr) -> bool {
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = embedded_ipv4(v6)
    {
        return is_public(IpAddr::V4(v4));
    }
    !NOT_PUBLIC.iter().any(|net| net.contains(&ip))
}

fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let last = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(last(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(last(s[1], s[2]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_reserved_and_embedded_private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "192.0.0.8",
            "198.18.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe", // NAT64 of 169.254.169.254
            "64:ff9b::7f00:1",    // NAT64 of 127.0.0.1
            "2002:a00:1::1",      // 6to4 of 10.0.0.1
            "2002:7f00:1::",      // 6to4 of 127.0.0.1
            "64:ff9b:1::1",
            "2001:0:4136:e378::1", // Teredo
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_public_however_they_are_written() {
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808", // NAT64 of 8.8.8.8
            "2002:808:808::1",  // 6to4 of 8.8.8.8
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
