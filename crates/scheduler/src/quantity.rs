//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) as integers, rounded up the way
//! upstream's `Quantity.MilliValue()` and `Quantity.Value()` round.

/// Parses a quantity into nano-units (value × 10⁹). `None` if it is not a valid quantity.
fn nanos(s: &str) -> Option<i128> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "." {
        return None;
    }
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|c| c.is_ascii_digit())
    {
        return None;
    }
    // value × 10⁹ from the digits (fractions below a nano-unit are rounded up).
    let mut value: i128 = 0;
    for c in int_part.bytes() {
        value = value.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
    }
    value = value.checked_mul(1_000_000_000)?;
    let mut scale: i128 = 100_000_000;
    let mut rest = false;
    for c in frac_part.bytes() {
        if scale == 0 {
            rest |= c != b'0';
            continue;
        }
        value += i128::from(c - b'0') * scale;
        scale /= 10;
    }
    if rest {
        value += 1;
    }
    let (mul, div): (i128, i128) = match suffix {
        "" => (1, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1000),
        "k" => (1000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if !(-9..=18).contains(&e) {
                return None;
            }
            if e >= 0 {
                (10i128.pow(e.unsigned_abs()), 1)
            } else {
                (1, 10i128.pow(e.unsigned_abs()))
            }
        }
        _ => return None,
    };
    let scaled = value.checked_mul(mul)?;
    let v = (scaled + div - 1) / div;
    Some(if negative { -v } else { v })
}

fn ceil_div(v: i128, d: i128) -> i64 {
    let q = if v >= 0 { (v + d - 1) / d } else { v / d };
    i64::try_from(q).unwrap_or(if q > 0 { i64::MAX } else { i64::MIN })
}

/// The quantity in thousandths, rounded up (`MilliValue`): how CPU is counted.
pub fn milli_value(s: &str) -> Option<i64> {
    nanos(s).map(|n| ceil_div(n, 1_000_000))
}

/// The quantity in units, rounded up (`Value`): how memory, storage and counts are counted.
pub fn value(s: &str) -> Option<i64> {
    nanos(s).map(|n| ceil_div(n, 1_000_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millis() {
        assert_eq!(milli_value("100m"), Some(100));
        assert_eq!(milli_value("1"), Some(1000));
        assert_eq!(milli_value("1.5"), Some(1500));
        assert_eq!(milli_value("0.0001"), Some(1));
        assert_eq!(milli_value("2e3"), Some(2_000_000));
        assert_eq!(milli_value("250000n"), Some(1));
    }

    #[test]
    fn memory_in_bytes() {
        assert_eq!(value("1Gi"), Some(1 << 30));
        assert_eq!(value("128Mi"), Some(128 << 20));
        assert_eq!(value("1.5Ki"), Some(1536));
        assert_eq!(value("1k"), Some(1000));
        assert_eq!(value("100m"), Some(1));
        assert_eq!(value("110"), Some(110));
        assert_eq!(value("1E"), Some(1_000_000_000_000_000_000));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(value(""), None);
        assert_eq!(value("Gi"), None);
        assert_eq!(value("1Xi"), None);
        assert_eq!(value("1.2.3"), None);
    }
}
