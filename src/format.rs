//! Numbers as people read them, in the report's tables and the verdict's sentences:
//! thousands separators, a dash for what was not measured, never `-0.000`.

/// `x` with `digits` decimals and thousands separators (`2,743,680`, `12,345.7`); `–` when
/// there is no value or it is not finite. A value that rounds to zero is written unsigned.
pub fn num(x: Option<f64>, digits: usize) -> String {
    match x {
        Some(v) if v.is_finite() => {
            let s = format!("{v:.digits$}");
            let s = match s.strip_prefix('-') {
                Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
                _ => s,
            };
            group_thousands(&s)
        }
        _ => "–".into(),
    }
}

/// The first 12 characters of a hash, as messages and tables show it.
pub fn short_hash(sha: &str) -> String {
    sha.chars().take(12).collect()
}

/// A setting's value as TOML writes it, for an error message: `0.1`, `1e-50` and `1e300`
/// (not fifty or three hundred digits), at the precision of its type (`0.1f32` reads `0.1`).
pub fn as_written<T: std::fmt::Display + std::fmt::LowerExp + Into<f64> + Copy>(x: T) -> String {
    match x.into().abs() {
        a if a != 0.0 && a.is_finite() && !(1e-4..1e16).contains(&a) => format!("{x:e}"),
        _ => format!("{x}"),
    }
}

/// An integer with thousands separators.
pub fn int(x: impl Into<u128>) -> String {
    group_thousands(&x.into().to_string())
}

/// A signed difference: `+0.123`, `−0.045` (a real minus sign), `0.000`.
pub fn signed(x: f64, digits: usize) -> String {
    let s = num(Some(x), digits);
    if s.starts_with('-') {
        s.replacen('-', "−", 1)
    } else if s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        format!("+{s}")
    } else {
        s
    }
}

/// An interval `lo–hi`, or `–` without one.
pub fn interval(x: Option<(f64, f64)>, digits: usize) -> String {
    match x {
        Some((lo, hi)) => format!("{} to {}", signed_if_neg(lo, digits), signed_if_neg(hi, digits)),
        None => "–".into(),
    }
}

fn signed_if_neg(x: f64, digits: usize) -> String {
    num(Some(x), digits).replacen('-', "−", 1)
}

/// Seconds as `42 s`, `12.5 min` or `2.3 h`.
pub fn duration(s: f64) -> String {
    // An empty sum of f64 is -0.0, which would print as "-0 s".
    let s = s + 0.0;
    if !s.is_finite() {
        "–".into()
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

fn group_thousands(s: &str) -> String {
    let (sign, rest) = s.strip_prefix('-').map_or(("", s), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// `arg` as a shell would need it typed.
pub fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_reads_as_toml_writes_it_at_its_own_precision() {
        let cases = [
            (as_written(1e-50), "1e-50"),
            (as_written(-1e300), "-1e300"),
            (as_written(0.5), "0.5"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        // 0.1 as a 32-bit float is 0.100000001490116… as a 64-bit one, and still reads 0.1.
        assert_eq!(as_written(0.1f32), "0.1");
        assert_eq!(as_written(0.99999999f64 as f32), "1");
        assert_eq!(as_written(0.0), "0");
    }

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(int(2_743_680u32), "2,743,680");
        assert_eq!(int(999u32), "999");
        assert_eq!(num(Some(12345.678), 1), "12,345.7");
        assert_eq!(num(Some(-0.0001), 3), "0.000");
        assert_eq!(num(Some(-1234.5), 0), "-1,234"); // round-half-even of .5 to 1234
        assert_eq!(num(None, 2), "–");
        assert_eq!(num(Some(f64::NAN), 2), "–");
        assert_eq!(signed(-0.2712, 3), "−0.271");
        assert_eq!(signed(0.05, 2), "+0.05");
        assert_eq!(signed(-0.0001, 3), "0.000");
        assert_eq!(interval(Some((-0.3, -0.24)), 2), "−0.30 to −0.24");
        assert_eq!(duration(30.2), "30 s");
        assert_eq!(duration(600.0), "10.0 min");
    }
}
