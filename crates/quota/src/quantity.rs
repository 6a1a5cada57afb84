//! Resource quantities (`250m`, `1.5Gi`, `2e3`), exactly as upstream's `resource.Quantity`
//! parses them, for comparisons and sums in admission.
//!
//! A quantity is kept as an exact count of nano-units in an `i128`: the smallest suffix is `n`
//! (10⁻⁹) and the largest `E`/`Ei` (~10¹⁸), so every value a client can write fits.

use std::cmp::Ordering;

/// A parsed quantity, in nano-units (`1` is 1,000,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity (upstream's wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub fn parse(s: &str) -> Result<Quantity, QuantityError> {
        let s = s.trim();
        let (sign, rest) = match s.as_bytes().first() {
            Some(b'-') => (-1, &s[1..]),
            Some(b'+') => (1, &s[1..]),
            _ => (1, s),
        };
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(end);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(QuantityError);
        }
        // Up to 9 fraction digits are exact; more are below a nano-unit (upstream rounds up).
        let mut value: i128 = 0;
        for c in whole.chars() {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(i128::from(c as u8 - b'0')))
                .ok_or(QuantityError)?;
        }
        value = value.checked_mul(NANO).ok_or(QuantityError)?;
        let mut scale = NANO / 10;
        let mut rounded_up = false;
        for c in frac.chars() {
            let digit = i128::from(c as u8 - b'0');
            if scale == 0 {
                rounded_up |= digit != 0;
                continue;
            }
            value += digit * scale;
            scale /= 10;
        }
        if rounded_up {
            value += 1;
        }
        let (mul, div) = suffix_factor(suffix)?;
        let nanos = value
            .checked_mul(mul)
            .map(|v| v / div)
            .ok_or(QuantityError)?;
        Ok(Quantity {
            nanos: sign * nanos,
        })
    }

    pub const ONE: Quantity = Quantity { nanos: NANO };

    /// The quantity as text: whole units, else milli-units, else nano-units; with `binary`,
    /// the largest binary suffix that divides it exactly (`1Gi`), as upstream writes a sum of
    /// binary quantities.
    pub fn to_text(self, binary: bool) -> String {
        if binary && self.nanos % NANO == 0 && self.nanos != 0 {
            let units = self.nanos / NANO;
            for (power, suffix) in [
                (6, "Ei"),
                (5, "Pi"),
                (4, "Ti"),
                (3, "Gi"),
                (2, "Mi"),
                (1, "Ki"),
            ] {
                let base = 1i128 << (10 * power);
                if units % base == 0 {
                    return format!("{}{suffix}", units / base);
                }
            }
        }
        if self.nanos % NANO == 0 {
            format!("{}", self.nanos / NANO)
        } else if self.nanos % (NANO / 1000) == 0 {
            format!("{}m", self.nanos / (NANO / 1000))
        } else {
            format!("{}n", self.nanos)
        }
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// `self / other` as a float (for limit-to-request ratios).
    pub fn ratio(self, other: Quantity) -> f64 {
        self.nanos as f64 / other.nanos as f64
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;
    fn add(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_add(other.nanos),
        }
    }
}

impl std::ops::Sub for Quantity {
    type Output = Quantity;
    fn sub(self, other: Quantity) -> Quantity {
        Quantity {
            nanos: self.nanos.saturating_sub(other.nanos),
        }
    }
}

/// The factor of a suffix as (multiplier, divisor) applied to nano-units.
fn suffix_factor(suffix: &str) -> Result<(i128, i128), QuantityError> {
    let binary = |power: u32| Ok((1i128 << (10 * power), 1));
    let decimal = |exp: i32| {
        if exp >= 0 {
            Ok((10i128.pow(exp.unsigned_abs()), 1))
        } else {
            Ok((1, 10i128.pow(exp.unsigned_abs())))
        }
    };
    match suffix {
        "" => decimal(0),
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        "n" => decimal(-9),
        "u" => decimal(-6),
        "m" => decimal(-3),
        "k" => decimal(3),
        "M" => decimal(6),
        "G" => decimal(9),
        "T" => decimal(12),
        "P" => decimal(15),
        "E" => decimal(18),
        _ => {
            let exp = suffix
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<i32>().ok())
                .filter(|e| (-9..=18).contains(e))
                .ok_or(QuantityError)?;
            decimal(exp)
        }
    }
}

impl PartialOrd<i128> for Quantity {
    fn partial_cmp(&self, other: &i128) -> Option<Ordering> {
        self.nanos.partial_cmp(&(other * NANO))
    }
}

impl PartialEq<i128> for Quantity {
    fn eq(&self, other: &i128) -> bool {
        self.nanos == other * NANO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn suffixes_scale_exactly() {
        assert_eq!(q("1"), 1);
        assert_eq!(q("1000m"), q("1"));
        assert_eq!(q("250m") + q("750m"), q("1"));
        assert_eq!(q("1Ki"), 1024);
        assert_eq!(q("1.5Gi"), 1_610_612_736);
        assert_eq!(q("2e3"), 2000);
        assert_eq!(q("1E3"), 1000);
        assert_eq!(q("1k"), 1000);
        assert_eq!(q("1M"), 1_000_000);
        assert_eq!(q("100n"), q("0.0000001"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("-1"), -1);
        assert_eq!(q("+2"), 2);
        assert_eq!(q(".5"), q("500m"));
        assert!(q("1Mi") > q("1M"));
        assert!(q("100m") < q("1"));
        assert!(q("0").is_zero());
        assert_eq!(q("1Ei"), 1_152_921_504_606_846_976);
        // Below a nano-unit rounds up, as upstream.
        assert_eq!(q("0.0000000001"), q("1n"));
        assert!((q("2").ratio(q("500m")) - 4.0).abs() < 1e-9);
        assert_eq!((q("512Mi") + q("512Mi")).to_text(true), "1Gi");
        assert_eq!((q("600m") + q("600m")).to_text(false), "1200m");
        assert_eq!((q("600m") + q("400m")).to_text(false), "1");
        assert_eq!(q("1n").to_text(false), "1n");
        assert_eq!(q("1500").to_text(true), "1500");
    }

    #[test]
    fn malformed_quantities_are_errors() {
        for bad in [
            "", "m", "1.2.3", "1x", "1KiB", "abc", "1e", "1e99", "--1", "1 Gi",
        ] {
            assert_eq!(Quantity::parse(bad), Err(QuantityError), "{bad:?}");
        }
    }
}
