//! IP addresses and CIDRs as upstream's validation reads them. Fields that predate the strict
//! rules (`IsValidIPForLegacyField`, with the `StrictIPCIDRValidation` gate off as in v1.33)
//! parse the way Go's old `net.ParseIP` did (`netutils.ParseIPSloppy`): an IPv4 octet may carry
//! leading zeros and is read as decimal. Newer fields (ServiceCIDR, IPAddress) take only the
//! canonical form ([`ip_problems`], [`cidr_problems`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::status::Cause;
use crate::validation::{invalid, q};

/// The message of `IsValidIP` for a value that is no address at all.
pub(crate) const IP_INVALID: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
/// The message of `IsValidCIDR` for a value that is no CIDR at all.
pub(crate) const CIDR_INVALID: &str =
    "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

/// `netutils.ParseIPSloppy`: IPv4 octets may have leading zeros (any number, read as decimal,
/// at most 255). An IPv4-mapped IPv6 address stays IPv6 here (see [`to4`]).
pub(crate) fn parse_sloppy(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        return s.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 4 {
        return None;
    }
    let mut octets = [0u8; 4];
    for (o, part) in octets.iter_mut().zip(parts) {
        if part.is_empty() || !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let digits = part.trim_start_matches('0');
        *o = if digits.is_empty() {
            0
        } else if digits.len() > 3 {
            return None;
        } else {
            digits.parse().ok()?
        };
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// `netutils.ParseCIDRSloppy`: the address (not masked) and the prefix length, which may also
/// carry leading zeros.
pub(crate) fn parse_cidr_sloppy(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let ip = parse_sloppy(addr)?;
    if len.is_empty() || !len.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let digits = len.trim_start_matches('0');
    let prefix: u8 = if digits.is_empty() {
        0
    } else if digits.len() > 3 {
        return None;
    } else {
        digits.parse().ok()?
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

/// Go's `IP.To4`: the IPv4 address of an IPv4 or IPv4-mapped IPv6 address.
pub(crate) fn to4(ip: IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// The network of `ip/bits`.
pub(crate) fn masked(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// `IsValidIPForLegacyField` (lenient): `Invalid` unless `ip` parses sloppily.
pub(crate) fn legacy_ip_causes(path: &str, ip: &str) -> Vec<Cause> {
    match parse_sloppy(ip) {
        Some(_) => Vec::new(),
        None => vec![invalid(path, &q(ip), IP_INVALID)],
    }
}

/// The problems apimachinery's `IsValidIP` finds (strict: no leading zeros, no IPv4-mapped
/// IPv6, canonical form).
pub(crate) fn ip_problems(s: &str) -> Vec<String> {
    let Some(ip) = parse_sloppy(s) else {
        return vec![IP_INVALID.into()];
    };
    if s.parse::<IpAddr>().is_err() {
        return vec!["must not have leading 0s".into()];
    }
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return vec!["must not be an IPv4-mapped IPv6 address".into()];
    }
    let canonical = ip.to_string();
    if canonical != s {
        return vec![format!("must be in canonical form ({})", q(&canonical))];
    }
    Vec::new()
}

/// The problems apimachinery's `IsValidCIDR` finds (strict parsing, then canonical form).
pub(crate) fn cidr_problems(s: &str) -> Vec<String> {
    let Some((ip, bits)) = parse_cidr_sloppy(s) else {
        return vec![CIDR_INVALID.into()];
    };
    let (ip_part, bits_part) = s.split_once('/').unwrap_or((s, ""));
    if ip_part.parse::<IpAddr>().is_err() || (bits_part.len() > 1 && bits_part.starts_with('0')) {
        return vec!["must not have leading 0s in IP or prefix length".into()];
    }
    if let IpAddr::V6(v6) = ip
        && v6.to_ipv4_mapped().is_some()
    {
        return vec!["must not have an IPv4-mapped IPv6 address".into()];
    }
    let network = masked(ip, bits);
    if network != ip {
        return vec!["must not have bits set beyond the prefix length".into()];
    }
    let canonical = format!("{network}/{bits}");
    if canonical != s {
        return vec![format!("must be in canonical form ({})", q(&canonical))];
    }
    Vec::new()
}

/// `ValidateNonSpecialIP`: no unspecified, loopback (unless `allow_loopback`), link-local or
/// link-local multicast address. An IPv4-mapped IPv6 address counts as IPv4, as in Go.
pub(crate) fn non_special_ip(path: &str, ip: &str, allow_loopback: bool) -> Vec<Cause> {
    let Some(addr) = parse_sloppy(ip) else {
        return vec![invalid(path, &q(ip), "must be a valid IP address")];
    };
    let addr = to4(addr).map_or(addr, IpAddr::V4);
    let (unspecified, loopback, link_local, link_local_multicast) = match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            (
                a.is_unspecified(),
                a.is_loopback(),
                o[0] == 169 && o[1] == 254,
                o[0] == 224 && o[1] == 0 && o[2] == 0,
            )
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            (
                a.is_unspecified(),
                a.is_loopback(),
                s[0] & 0xffc0 == 0xfe80,
                s[0] & 0xff0f == 0xff02,
            )
        }
    };
    let mut causes = Vec::new();
    let mut refuse = |detail: &str| causes.push(invalid(path, &q(ip), detail));
    if unspecified {
        refuse(&format!("may not be unspecified ({ip})"));
    }
    if loopback && !allow_loopback {
        refuse("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    if link_local {
        refuse("may not be in the link-local range (169.254.0.0/16, fe80::/10)");
    }
    if link_local_multicast {
        refuse("may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)");
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_parsing_reads_leading_zeros_as_decimal() {
        assert_eq!(
            parse_sloppy("010.001.0000.9"),
            Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9)))
        );
        for bad in [
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "a.b.c.d",
            "",
            "1.2.3.4 ",
        ] {
            assert_eq!(parse_sloppy(bad), None, "{bad}");
        }
        assert!(parse_sloppy("::ffff:1.2.3.4").is_some_and(|ip| to4(ip).is_some()));
        assert_eq!(
            parse_cidr_sloppy("10.0.0.0/008"),
            Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8))
        );
        assert_eq!(parse_cidr_sloppy("10.0.0.0/33"), None);
        assert_eq!(parse_cidr_sloppy("10.0.0.0"), None);
    }

    #[test]
    fn strict_forms() {
        assert!(ip_problems("10.0.0.1").is_empty());
        assert_eq!(ip_problems("010.0.0.1"), ["must not have leading 0s"]);
        assert_eq!(
            ip_problems("2001:DB8::1"),
            [r#"must be in canonical form ("2001:db8::1")"#]
        );
        assert!(cidr_problems("10.0.0.0/8").is_empty());
        assert_eq!(
            cidr_problems("10.0.0.1/8"),
            ["must not have bits set beyond the prefix length"]
        );
        assert_eq!(cidr_problems("x"), [CIDR_INVALID]);
    }

    #[test]
    fn special_addresses() {
        let messages = |ip: &str, allow| -> Vec<String> {
            non_special_ip("f", ip, allow)
                .into_iter()
                .map(|c| c.message)
                .collect()
        };
        assert!(messages("10.1.2.3", false).is_empty());
        assert!(messages("127.0.0.1", true).is_empty());
        assert_eq!(
            messages("::ffff:127.0.0.1", false),
            [
                r#"Invalid value: "::ffff:127.0.0.1": may not be in the loopback range (127.0.0.0/8, ::1/128)"#
            ]
        );
        assert_eq!(messages("169.254.1.1", false).len(), 1);
        assert_eq!(messages("224.0.0.5", false).len(), 1);
        assert_eq!(messages("ff02::1", false).len(), 1);
        assert_eq!(messages("0.0.0.0", false).len(), 1);
    }
}
