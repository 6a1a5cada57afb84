//! Kubernetes' CEL libraries (`k8s.io/apiserver/pkg/cel/library`) as `cel` crate overloads:
//! `quantity` (parse, `isQuantity`, `sign`, `isInteger`, `asInteger`, `asApproximateFloat`,
//! `add`/`sub` of a quantity or an int, `isGreaterThan`, `isLessThan`, `compareTo`), `ip`
//! (`isIP`, `ip.isCanonical`, `family`, `isUnspecified`, `isLoopback`, `isLinkLocalMulticast`,
//! `isLinkLocalUnicast`, `isGlobalUnicast`, `string`), `cidr` (`isCIDR`, `containsIP`,
//! `containsCIDR` of a value or a string, `ip`, `masked`, `prefixLength`, `string`), the
//! lists library (`isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf`), `sets.contains`,
//! `sets.equivalent`, `sets.intersects`, the regex library (`find`, `findAll`) and `semver`
//! (`isSemver`, `semver`, `major`, `minor`, `patch`, `compareTo`, `isGreaterThan`,
//! `isLessThan`; strict semver 2.0, with the optional `normalize` argument). `url` is in
//! [`super::url`].
//!
//! Errors carry upstream's words as the `FunctionError` message (what
//! [`super::error_text`] shows). Not here: the quantity `mul`/`div`/`divInt` of later
//! Kubernetes releases; IPv6 parse errors are `unable to parse IP` (Go's `netip` has a
//! dozen finer messages), IPv4 ones are Go's.

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelString, DYN_TYPE, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{DeclarationError, Env, ExecutionError};

use crate::quantity::Quantity;
use crate::validation::q;

/// Implements `Val` for an application type compared with `PartialEq` (a CEL type named
/// `$name`, its `Type` in the static `$ty`). Also the admission policies' authorizer types.
macro_rules! opaque_val {
    ($t:ty, $ty:ident, $name:literal) => {
        static $ty: ::cel::common::types::Type =
            ::cel::common::types::Type::new_unspecified_type($name);
        impl ::cel::common::value::Val for $t {
            fn get_type(&self) -> &::cel::common::types::Type {
                &$ty
            }
            fn cel_type() -> &'static ::cel::common::types::Type {
                &$ty
            }
            fn equals(&self, other: &dyn ::cel::common::value::Val) -> bool {
                other.downcast_ref::<$t>().is_some_and(|o| o == self)
            }
            fn clone_as_boxed<'v>(&self) -> Box<dyn ::cel::common::value::Val + 'v> {
                Box::new(self.clone())
            }
            fn as_any(&self) -> Option<&dyn std::any::Any> {
                Some(self)
            }
        }
        impl ::cel::common::value::StaticVal for $t {}
    };
}
pub(crate) use opaque_val;

/// A `kubernetes.Quantity`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CelQuantity(Quantity);
opaque_val!(CelQuantity, QUANTITY_TYPE, "kubernetes.Quantity");

/// A `net.IP`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CelIp(IpAddr);
opaque_val!(CelIp, IP_TYPE, "net.IP");

/// A `net.CIDR`: the address as written and the prefix length.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CelCidr(IpAddr, u8);
opaque_val!(CelCidr, CIDR_TYPE, "net.CIDR");

/// A `kubernetes.Semver`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CelSemver(Semver);
opaque_val!(CelSemver, SEMVER_TYPE, "kubernetes.Semver");

pub(super) fn fail(function: &str, message: impl ToString) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn no_overload(function: &str, args: &[&dyn Val]) -> ExecutionError {
    ExecutionError::no_such_overload(
        function,
        args.iter()
            .map(|a| a.get_type().name().to_string())
            .collect(),
    )
}

fn string(s: String) -> CelString<'static> {
    CelString::from(s)
}

/// Registers every library of this module on `env`.
pub(super) fn register(env: &mut Env) -> Result<(), DeclarationError> {
    quantity(env)?;
    ip(env)?;
    cidr(env)?;
    lists(env)?;
    regex(env)?;
    semver(env)
}

// ---------------------------------------------------------------------------------------
// quantity

fn quantity(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn to_quantity: (CelString) -> Result<CelQuantity>, name = "quantity")?;
    cel::add_overload!(env, fn is_quantity: (CelString) -> CelBool)?;
    cel::add_overload!(env, fn quantity_sign: (CelQuantity) -> CelInt, name = "sign")?;
    cel::add_member_overload!(env, fn quantity_sign: (CelQuantity) -> CelInt, name = "sign")?;
    cel::add_member_overload!(env, fn is_integer: (CelQuantity) -> CelBool)?;
    cel::add_member_overload!(env, fn as_integer: (CelQuantity) -> Result<CelInt>)?;
    cel::add_member_overload!(env, fn as_approximate_float: (CelQuantity) -> CelDouble)?;
    cel::add_member_overload!(env, fn quantity_add: (CelQuantity, CelQuantity) -> CelQuantity, name = "add")?;
    cel::add_member_overload!(env, fn quantity_add_int: (CelQuantity, CelInt) -> Result<CelQuantity>, name = "add")?;
    cel::add_member_overload!(env, fn quantity_sub: (CelQuantity, CelQuantity) -> CelQuantity, name = "sub")?;
    cel::add_member_overload!(env, fn quantity_sub_int: (CelQuantity, CelInt) -> Result<CelQuantity>, name = "sub")?;
    cel::add_member_overload!(env, fn quantity_greater: (CelQuantity, CelQuantity) -> CelBool, name = "isGreaterThan")?;
    cel::add_member_overload!(env, fn quantity_less: (CelQuantity, CelQuantity) -> CelBool, name = "isLessThan")?;
    cel::add_member_overload!(env, fn quantity_compare: (CelQuantity, CelQuantity) -> CelInt, name = "compareTo")?;
    Ok(())
}

fn to_quantity(s: &CelString<'_>) -> Result<CelQuantity, ExecutionError> {
    Quantity::parse(s.inner())
        .map(CelQuantity)
        .map_err(|e| fail("quantity", e))
}

fn is_quantity(s: &CelString<'_>) -> CelBool {
    Quantity::parse(s.inner()).is_ok().into()
}

fn ordering_int(o: Ordering) -> CelInt {
    CelInt::from(o as i64)
}

fn quantity_sign(q: &CelQuantity) -> CelInt {
    ordering_int(q.0.cmp(&Quantity::default()))
}

/// The quantity as an `i64`, when it is a whole number that fits (upstream's `AsInt64`).
fn whole(q: &Quantity) -> Option<i64> {
    q.to_text(false).parse().ok()
}

fn is_integer(q: &CelQuantity) -> CelBool {
    whole(&q.0).is_some().into()
}

fn as_integer(q: &CelQuantity) -> Result<CelInt, ExecutionError> {
    whole(&q.0)
        .map(CelInt::from)
        .ok_or_else(|| fail("asInteger", "cannot convert value to integer"))
}

fn as_approximate_float(q: &CelQuantity) -> CelDouble {
    q.0.ratio(Quantity::ONE).into()
}

fn int_quantity(function: &str, i: &CelInt) -> Result<Quantity, ExecutionError> {
    Quantity::parse(&i.inner().to_string()).map_err(|e| fail(function, e))
}

fn quantity_add(a: &CelQuantity, b: &CelQuantity) -> CelQuantity {
    CelQuantity(a.0 + b.0)
}

fn quantity_add_int(a: &CelQuantity, b: &CelInt) -> Result<CelQuantity, ExecutionError> {
    Ok(CelQuantity(a.0 + int_quantity("add", b)?))
}

fn quantity_sub(a: &CelQuantity, b: &CelQuantity) -> CelQuantity {
    CelQuantity(a.0 - b.0)
}

fn quantity_sub_int(a: &CelQuantity, b: &CelInt) -> Result<CelQuantity, ExecutionError> {
    Ok(CelQuantity(a.0 - int_quantity("sub", b)?))
}

fn quantity_greater(a: &CelQuantity, b: &CelQuantity) -> CelBool {
    (a.0 > b.0).into()
}

fn quantity_less(a: &CelQuantity, b: &CelQuantity) -> CelBool {
    (a.0 < b.0).into()
}

fn quantity_compare(a: &CelQuantity, b: &CelQuantity) -> CelInt {
    ordering_int(a.0.cmp(&b.0))
}

// ---------------------------------------------------------------------------------------
// ip

fn ip(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn to_ip: (CelString) -> Result<CelIp>, name = "ip")?;
    cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP")?;
    cel::add_overload!(env, fn ip_is_canonical: (CelString) -> Result<CelBool>, name = "ip.isCanonical")?;
    cel::add_overload!(env, fn ip_string: (CelIp) -> CelString, name = "string")?;
    cel::add_member_overload!(env, fn family: (CelIp) -> CelInt)?;
    cel::add_member_overload!(env, fn is_unspecified: (CelIp) -> CelBool)?;
    cel::add_member_overload!(env, fn is_loopback: (CelIp) -> CelBool)?;
    cel::add_member_overload!(env, fn is_link_local_multicast: (CelIp) -> CelBool)?;
    cel::add_member_overload!(env, fn is_link_local_unicast: (CelIp) -> CelBool)?;
    cel::add_member_overload!(env, fn is_global_unicast: (CelIp) -> CelBool)?;
    Ok(())
}

/// Go's `netip.ParseAddr` error for `s`, or the address and whether it had a zone.
fn parse_addr(s: &str) -> Result<(IpAddr, bool), String> {
    let err = |msg: &str, at: Option<&str>| match at {
        Some(at) => format!("ParseAddr({}): {msg} (at {})", q(s), q(at)),
        None => format!("ParseAddr({}): {msg}", q(s)),
    };
    for (i, c) in s.char_indices() {
        match c {
            '.' => return parse_v4(s).map(|a| (IpAddr::V4(a), false)),
            ':' => {
                let (addr, zone) = match s.split_once('%') {
                    Some((a, z)) if !z.is_empty() => (a, true),
                    Some(_) => return Err(err("zone must be a non-empty string", None)),
                    None => (s, false),
                };
                return addr
                    .parse::<Ipv6Addr>()
                    .map(|a| (IpAddr::V6(a), zone))
                    .map_err(|_| err("unable to parse IP", None));
            }
            '%' => return Err(err("missing IPv6 address", Some(&s[i..]))),
            _ => {}
        }
    }
    Err(err("unable to parse IP", None))
}

fn parse_v4(s: &str) -> Result<Ipv4Addr, String> {
    let err = |msg: &str, at: Option<&str>| match at {
        Some(at) => format!("ParseAddr({}): {msg} (at {})", q(s), q(at)),
        None => format!("ParseAddr({}): {msg}", q(s)),
    };
    let b = s.as_bytes();
    let mut fields = [0u8; 4];
    let (mut val, mut pos, mut digits) = (0u32, 0usize, 0);
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'0'..=b'9' => {
                if digits == 1 && val == 0 {
                    return Err(err("IPv4 field has octet with leading zero", None));
                }
                val = val * 10 + u32::from(c - b'0');
                digits += 1;
                if val > 255 {
                    return Err(err("IPv4 field has value >255", None));
                }
            }
            b'.' => {
                if i == 0 || i == b.len() - 1 || b[i - 1] == b'.' {
                    return Err(err(
                        "IPv4 field must have at least one digit",
                        Some(&s[i..]),
                    ));
                }
                if pos == 3 {
                    return Err(err("IPv4 address too long", None));
                }
                fields[pos] = val as u8;
                pos += 1;
                val = 0;
                digits = 0;
            }
            _ => return Err(err("unexpected character", s.get(i..))),
        }
    }
    if pos < 3 {
        return Err(err("IPv4 address too short", None));
    }
    fields[3] = val as u8;
    Ok(Ipv4Addr::from(fields))
}

fn is_4in6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some())
}

/// Upstream's `parseIPAddr`: no zones, no IPv4-mapped IPv6 addresses.
fn parse_ip(s: &str) -> Result<IpAddr, String> {
    let (addr, zone) = parse_addr(s).map_err(|e| {
        format!(
            "IP Address {} parse error during conversion from string: {e}",
            q(s)
        )
    })?;
    if zone {
        return Err(format!(
            "IP address {} with zone value is not allowed",
            q(s)
        ));
    }
    if is_4in6(&addr) {
        return Err(format!("IPv4-mapped IPv6 address {} is not allowed", q(s)));
    }
    Ok(addr)
}

fn to_ip(s: &CelString<'_>) -> Result<CelIp, ExecutionError> {
    parse_ip(s.inner()).map(CelIp).map_err(|e| fail("ip", e))
}

fn is_ip(s: &CelString<'_>) -> CelBool {
    parse_ip(s.inner()).is_ok().into()
}

fn ip_is_canonical(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let addr = parse_ip(s.inner()).map_err(|e| fail("ip.isCanonical", e))?;
    Ok((addr.to_string() == s.inner()).into())
}

fn ip_string(ip: &CelIp) -> CelString<'static> {
    string(ip.0.to_string())
}

fn family(ip: &CelIp) -> CelInt {
    CelInt::from(if ip.0.is_ipv4() { 4 } else { 6 })
}

fn is_unspecified(ip: &CelIp) -> CelBool {
    ip.0.is_unspecified().into()
}

fn is_loopback(ip: &CelIp) -> CelBool {
    ip.0.is_loopback().into()
}

fn link_local_multicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => a.segments()[0] & 0xff0f == 0xff02,
    }
}

fn link_local_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

fn is_link_local_multicast(ip: &CelIp) -> CelBool {
    link_local_multicast(&ip.0).into()
}

fn is_link_local_unicast(ip: &CelIp) -> CelBool {
    link_local_unicast(&ip.0).into()
}

/// Go's `netip.Addr.IsGlobalUnicast`: private and ULA addresses included.
fn is_global_unicast(ip: &CelIp) -> CelBool {
    let a = &ip.0;
    let broadcast = matches!(a, IpAddr::V4(v4) if v4.is_broadcast());
    (!a.is_unspecified()
        && !broadcast
        && !a.is_loopback()
        && !a.is_multicast()
        && !link_local_unicast(a))
    .into()
}

// ---------------------------------------------------------------------------------------
// cidr

fn cidr(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn to_cidr: (CelString) -> Result<CelCidr>, name = "cidr")?;
    cel::add_overload!(env, fn is_cidr: (CelString) -> CelBool, name = "isCIDR")?;
    cel::add_overload!(env, fn cidr_string: (CelCidr) -> CelString, name = "string")?;
    cel::add_member_overload!(env, fn contains_ip: (CelCidr, CelIp) -> CelBool, name = "containsIP")?;
    cel::add_member_overload!(env, fn contains_ip_string: (CelCidr, CelString) -> Result<CelBool>, name = "containsIP")?;
    cel::add_member_overload!(env, fn contains_cidr: (CelCidr, CelCidr) -> CelBool, name = "containsCIDR")?;
    cel::add_member_overload!(env, fn contains_cidr_string: (CelCidr, CelString) -> Result<CelBool>, name = "containsCIDR")?;
    cel::add_member_overload!(env, fn cidr_ip: (CelCidr) -> CelIp, name = "ip")?;
    cel::add_member_overload!(env, fn masked: (CelCidr) -> CelCidr)?;
    cel::add_member_overload!(env, fn prefix_length: (CelCidr) -> CelInt)?;
    Ok(())
}

/// Go's `netip.ParsePrefix`, and upstream's refusal of IPv4-mapped addresses.
fn parse_cidr(s: &str) -> Result<CelCidr, String> {
    let wrap = |msg: String| {
        format!(
            "network address parse error during conversion from string: netip.ParsePrefix({}): {msg}",
            q(s)
        )
    };
    let Some((addr, bits)) = s.rsplit_once('/') else {
        return Err(wrap("no '/'".into()));
    };
    let (ip, zone) = parse_addr(addr).map_err(wrap)?;
    if zone {
        return Err(wrap("IPv6 zones cannot be present in a prefix".into()));
    }
    let bad_bits = || wrap(format!("bad bits after slash: {}", q(bits)));
    if bits.len() > 1 && !bits.starts_with(|c: char| ('1'..='9').contains(&c)) {
        return Err(bad_bits());
    }
    let n: i64 = bits.parse().map_err(|_| bad_bits())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if !(0..=max).contains(&n) {
        return Err(wrap("prefix length out of range".into()));
    }
    if is_4in6(&ip) {
        return Err(format!("IPv4-mapped IPv6 address {} is not allowed", q(s)));
    }
    Ok(CelCidr(ip, n as u8))
}

fn cidr_error(e: String) -> ExecutionError {
    fail(
        "cidr",
        format!("network address parse error during conversion from string: {e}"),
    )
}

fn to_cidr(s: &CelString<'_>) -> Result<CelCidr, ExecutionError> {
    parse_cidr(s.inner()).map_err(cidr_error)
}

fn is_cidr(s: &CelString<'_>) -> CelBool {
    parse_cidr(s.inner()).is_ok().into()
}

fn cidr_string(c: &CelCidr) -> CelString<'static> {
    string(format!("{}/{}", c.0, c.1))
}

fn mask(ip: &IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(*a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(*a) & m))
        }
    }
}

fn contains(c: &CelCidr, ip: &IpAddr) -> bool {
    c.0.is_ipv4() == ip.is_ipv4() && mask(&c.0, c.1) == mask(ip, c.1)
}

fn contains_ip(c: &CelCidr, ip: &CelIp) -> CelBool {
    contains(c, &ip.0).into()
}

fn contains_ip_string(c: &CelCidr, s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let ip = parse_ip(s.inner()).map_err(|e| fail("containsIP", e))?;
    Ok(contains(c, &ip).into())
}

fn contains_cidr(c: &CelCidr, other: &CelCidr) -> CelBool {
    (contains(c, &other.0) && c.1 <= other.1).into()
}

fn contains_cidr_string(c: &CelCidr, s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let other = parse_cidr(s.inner()).map_err(cidr_error)?;
    Ok(contains_cidr(c, &other))
}

fn cidr_ip(c: &CelCidr) -> CelIp {
    CelIp(c.0)
}

fn masked(c: &CelCidr) -> CelCidr {
    CelCidr(mask(&c.0, c.1), c.1)
}

fn prefix_length(c: &CelCidr) -> CelInt {
    CelInt::from(i64::from(c.1))
}

// ---------------------------------------------------------------------------------------
// lists and sets

fn lists(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_member_overload("isSorted", "list_is_sorted", LIST_TYPE, vec![], is_sorted)?;
    env.add_member_overload("sum", "list_sum", LIST_TYPE, vec![], sum)?;
    env.add_member_overload("min", "list_min", LIST_TYPE, vec![], min)?;
    env.add_member_overload("max", "list_max", LIST_TYPE, vec![], max)?;
    env.add_member_overload(
        "indexOf",
        "list_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        index_of,
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list_last_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        last_index_of,
    )?;
    for (name, f) in [
        (
            "sets.contains",
            sets_contains as cel::common::functions::Function,
        ),
        ("sets.equivalent", sets_equivalent),
        ("sets.intersects", sets_intersects),
    ] {
        env.add_overload(name, name, vec![LIST_TYPE, LIST_TYPE], f)?;
    }
    Ok(())
}

fn elements<'b, 'v>(list: &'b (dyn Val + 'v)) -> Result<Vec<&'b (dyn Val + 'v)>, ExecutionError> {
    let iterable = list
        .as_iterable()
        .ok_or_else(|| no_overload("list", &[list]))?;
    let mut items = iterable.iter();
    let mut out = Vec::new();
    while let Some(item) = items.next() {
        out.push(item);
    }
    Ok(out)
}

fn compare(function: &str, a: &dyn Val, b: &dyn Val) -> Result<Ordering, ExecutionError> {
    a.as_comparer()
        .ok_or_else(|| no_overload(function, &[a, b]))?
        .compare(b)
}

fn is_sorted<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let list = args.first().ok_or_else(|| no_overload("isSorted", &[]))?;
    let items = elements(list.as_ref())?;
    for pair in items.windows(2) {
        if compare("isSorted", pair[0], pair[1])? == Ordering::Greater {
            return Ok(CowVal::owned(CelBool::from(false)));
        }
    }
    Ok(CowVal::owned(CelBool::from(true)))
}

fn sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let list = args.first().ok_or_else(|| no_overload("sum", &[]))?;
    let items = elements(list.as_ref())?;
    let Some((first, rest)) = items.split_first() else {
        return Ok(CowVal::owned(CelInt::from(0)));
    };
    let mut acc: Box<dyn Val + 'v> = first.clone_as_boxed();
    for next in rest {
        let added = acc
            .as_adder()
            .ok_or_else(|| no_overload("sum", &[acc.as_ref(), *next]))?
            .add(*next)?
            .into_owned();
        acc = added;
    }
    Ok(CowVal::Owned(acc))
}

fn extreme<'b, 'v>(
    name: &str,
    args: Vec<CowVal<'b, 'v>>,
    prefer: Ordering,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let list = args.first().ok_or_else(|| no_overload(name, &[]))?;
    let items = elements(list.as_ref())?;
    let mut best: Option<&(dyn Val + 'v)> = None;
    for item in items {
        best = match best {
            Some(b) if compare(name, b, item)? != prefer => Some(b),
            _ => Some(item),
        };
    }
    best.map(|b| CowVal::Owned(b.clone_as_boxed()))
        .ok_or_else(|| fail(name, format!("{name} called on empty list")))
}

fn min<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("min", args, Ordering::Greater)
}

fn max<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("max", args, Ordering::Less)
}

fn position<'b, 'v>(
    name: &str,
    args: Vec<CowVal<'b, 'v>>,
    last: bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let [list, item] = args.as_slice() else {
        return Err(no_overload(name, &[]));
    };
    let items = elements(list.as_ref())?;
    let found = if last {
        items.iter().rposition(|x| x.equals(item.as_ref()))
    } else {
        items.iter().position(|x| x.equals(item.as_ref()))
    };
    Ok(CowVal::owned(CelInt::from(found.map_or(-1, |i| i as i64))))
}

fn index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position("indexOf", args, false)
}

fn last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position("lastIndexOf", args, true)
}

/// Whether every element of `sub` is in `list`.
fn includes_all(list: &[&dyn Val], sub: &[&dyn Val]) -> bool {
    sub.iter().all(|x| list.iter().any(|y| y.equals(*x)))
}

fn two_lists<'b, 'v, R>(
    name: &str,
    args: &[CowVal<'b, 'v>],
    f: impl FnOnce(&[&dyn Val], &[&dyn Val]) -> R,
) -> Result<R, ExecutionError> {
    let [a, b] = args else {
        return Err(no_overload(name, &[]));
    };
    let (a, b) = (elements(a.as_ref())?, elements(b.as_ref())?);
    let a: Vec<&dyn Val> = a.into_iter().map(|x| x as &dyn Val).collect();
    let b: Vec<&dyn Val> = b.into_iter().map(|x| x as &dyn Val).collect();
    Ok(f(&a, &b))
}

fn sets_contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let r = two_lists("sets.contains", &args, includes_all)?;
    Ok(CowVal::owned(CelBool::from(r)))
}

fn sets_equivalent<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let r = two_lists("sets.equivalent", &args, |a, b| {
        includes_all(a, b) && includes_all(b, a)
    })?;
    Ok(CowVal::owned(CelBool::from(r)))
}

fn sets_intersects<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let r = two_lists("sets.intersects", &args, |a, b| {
        a.iter().any(|x| b.iter().any(|y| y.equals(*x)))
    })?;
    Ok(CowVal::owned(CelBool::from(r)))
}

// ---------------------------------------------------------------------------------------
// regex

fn regex(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_member_overload!(env, fn find: (CelString, CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn find_all: (CelString, CelString) -> Result<CelList>)?;
    cel::add_member_overload!(env, fn find_all_n: (CelString, CelString, CelInt) -> Result<CelList>, name = "findAll")?;
    Ok(())
}

fn compile_regex(function: &str, pattern: &str) -> Result<regex::Regex, ExecutionError> {
    regex::Regex::new(pattern).map_err(|e| {
        let detail = e.to_string();
        let last = detail.lines().last().unwrap_or_default().trim().to_string();
        fail(function, format!("error parsing regexp: {last}"))
    })
}

fn find(s: &CelString<'_>, pattern: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    let re = compile_regex("find", pattern.inner())?;
    Ok(string(
        re.find(s.inner())
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
    ))
}

fn all_matches(s: &str, re: &regex::Regex, limit: i64) -> CelList<'static> {
    let take = usize::try_from(limit).unwrap_or(usize::MAX);
    let found: Vec<Box<dyn Val>> = re
        .find_iter(s)
        .take(take)
        .map(|m| Box::new(string(m.as_str().to_string())) as Box<dyn Val>)
        .collect();
    CelList::from(found)
}

fn find_all(
    s: &CelString<'_>,
    pattern: &CelString<'_>,
) -> Result<CelList<'static>, ExecutionError> {
    let re = compile_regex("findAll", pattern.inner())?;
    Ok(all_matches(s.inner(), &re, -1))
}

fn find_all_n(
    s: &CelString<'_>,
    pattern: &CelString<'_>,
    n: &CelInt,
) -> Result<CelList<'static>, ExecutionError> {
    let re = compile_regex("findAll", pattern.inner())?;
    Ok(all_matches(s.inner(), &re, *n.inner()))
}

// ---------------------------------------------------------------------------------------
// semver

/// A semantic version 2.0.0 (blang/semver's `Parse`): numbers without leading zeros,
/// pre-release identifiers compared as upstream, build metadata kept but not compared.
#[derive(Debug, Clone)]
pub(super) struct Semver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Vec<String>,
}

impl PartialEq for Semver {
    fn eq(&self, other: &Self) -> bool {
        self.cmp_to(other) == Ordering::Equal
    }
}

impl Semver {
    /// blang/semver's `Parse`, with its error words.
    fn parse(s: &str) -> Result<Semver, String> {
        if s.is_empty() {
            return Err("Version string empty".into());
        }
        let parts: Vec<&str> = s.splitn(3, '.').collect();
        if parts.len() != 3 {
            return Err("No Major.Minor.Patch elements found".into());
        }
        let number = |p: &str, what: &str, cap: &str| -> Result<u64, String> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "Invalid character(s) found in {what} number {}",
                    q(p)
                ));
            }
            if p.len() > 1 && p.starts_with('0') {
                return Err(format!(
                    "{cap} number must not contain leading zeroes {}",
                    q(p)
                ));
            }
            p.parse()
                .map_err(|_| format!("Invalid character(s) found in {what} number {}", q(p)))
        };
        let major = number(parts[0], "major", "Major")?;
        let minor = number(parts[1], "minor", "Minor")?;
        let cut = parts[2].find(['+', '-']).unwrap_or(parts[2].len());
        let (patch, mut rest) = parts[2].split_at(cut);
        let patch = number(patch, "patch", "Patch")?;
        let mut ids = Vec::new();
        if let Some(pre) = rest.strip_prefix('-') {
            let end = pre.find('+').unwrap_or(pre.len());
            rest = &pre[end..];
            for id in pre[..end].split('.') {
                if id.is_empty() {
                    return Err("Prerelease is empty".into());
                }
                let numeric = id.bytes().all(|b| b.is_ascii_digit());
                if numeric && id.len() > 1 && id.starts_with('0') {
                    return Err(format!(
                        "Numeric PreRelease version must not contain leading zeroes {}",
                        q(id)
                    ));
                }
                if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(format!(
                        "Invalid character(s) found in prerelease {}",
                        q(id)
                    ));
                }
                ids.push(id.to_string());
            }
        }
        if let Some(build) = rest.strip_prefix('+') {
            for id in build.split('.') {
                if id.is_empty() {
                    return Err("Build meta data is empty".into());
                }
                if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return Err(format!(
                        "Invalid character(s) found in build meta data {}",
                        q(id)
                    ));
                }
            }
        }
        Ok(Semver {
            major,
            minor,
            patch,
            pre: ids,
        })
    }

    /// Upstream's `normalize`: a leading `v` dropped, missing minor/patch filled with `0`,
    /// leading zeros of the numbers removed.
    fn normalize(s: &str) -> String {
        let s = s.strip_prefix('v').unwrap_or(s);
        let cut = s.find(['-', '+']).unwrap_or(s.len());
        let (core, tail) = s.split_at(cut);
        let mut parts: Vec<String> = core
            .split('.')
            .map(|p| {
                let t = p.trim_start_matches('0');
                if t.is_empty() && !p.is_empty() {
                    "0".to_string()
                } else {
                    t.to_string()
                }
            })
            .collect();
        while parts.len() < 3 {
            parts.push("0".into());
        }
        format!("{}{tail}", parts.join("."))
    }

    fn cmp_to(&self, o: &Semver) -> Ordering {
        let core = (self.major, self.minor, self.patch).cmp(&(o.major, o.minor, o.patch));
        if core != Ordering::Equal {
            return core;
        }
        match (self.pre.is_empty(), o.pre.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            _ => {}
        }
        for (a, b) in self.pre.iter().zip(&o.pre) {
            let ord = match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(x), Ok(y)) => x.cmp(&y),
                (Ok(_), Err(_)) => Ordering::Less,
                (Err(_), Ok(_)) => Ordering::Greater,
                _ => a.cmp(b),
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        self.pre.len().cmp(&o.pre.len())
    }
}

fn semver(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_overload!(env, fn to_semver: (CelString) -> Result<CelSemver>, name = "semver")?;
    cel::add_overload!(env, fn to_semver_normalize: (CelString, CelBool) -> Result<CelSemver>, name = "semver")?;
    cel::add_overload!(env, fn is_semver: (CelString) -> CelBool)?;
    cel::add_overload!(env, fn is_semver_normalize: (CelString, CelBool) -> CelBool, name = "isSemver")?;
    cel::add_member_overload!(env, fn major: (CelSemver) -> CelInt)?;
    cel::add_member_overload!(env, fn minor: (CelSemver) -> CelInt)?;
    cel::add_member_overload!(env, fn patch: (CelSemver) -> CelInt)?;
    cel::add_member_overload!(env, fn semver_greater: (CelSemver, CelSemver) -> CelBool, name = "isGreaterThan")?;
    cel::add_member_overload!(env, fn semver_less: (CelSemver, CelSemver) -> CelBool, name = "isLessThan")?;
    cel::add_member_overload!(env, fn semver_compare: (CelSemver, CelSemver) -> CelInt, name = "compareTo")?;
    Ok(())
}

fn semver_of(s: &str, normalize: bool) -> Result<CelSemver, ExecutionError> {
    let text = if normalize {
        Semver::normalize(s)
    } else {
        s.to_string()
    };
    Semver::parse(&text)
        .map(CelSemver)
        .map_err(|e| fail("semver", e))
}

fn to_semver(s: &CelString<'_>) -> Result<CelSemver, ExecutionError> {
    semver_of(s.inner(), false)
}

fn to_semver_normalize(s: &CelString<'_>, n: &CelBool) -> Result<CelSemver, ExecutionError> {
    semver_of(s.inner(), *n.inner())
}

fn is_semver(s: &CelString<'_>) -> CelBool {
    semver_of(s.inner(), false).is_ok().into()
}

fn is_semver_normalize(s: &CelString<'_>, n: &CelBool) -> CelBool {
    semver_of(s.inner(), *n.inner()).is_ok().into()
}

fn clamp(n: u64) -> CelInt {
    CelInt::from(i64::try_from(n).unwrap_or(i64::MAX))
}

fn major(v: &CelSemver) -> CelInt {
    clamp(v.0.major)
}

fn minor(v: &CelSemver) -> CelInt {
    clamp(v.0.minor)
}

fn patch(v: &CelSemver) -> CelInt {
    clamp(v.0.patch)
}

fn semver_greater(a: &CelSemver, b: &CelSemver) -> CelBool {
    (a.0.cmp_to(&b.0) == Ordering::Greater).into()
}

fn semver_less(a: &CelSemver, b: &CelSemver) -> CelBool {
    (a.0.cmp_to(&b.0) == Ordering::Less).into()
}

fn semver_compare(a: &CelSemver, b: &CelSemver) -> CelInt {
    ordering_int(a.0.cmp_to(&b.0))
}
