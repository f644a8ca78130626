//! Text forms the command line uses for image options: supermin's `--size`
//! syntax and the usual hyphenated UUID form.

use crate::error::{SizeError, UuidError};

/// supermin's --size syntax `^[.0-9]+[bKMG]$` (b = bytes, K/M/G binary
/// multiples). Like supermin, the number may have a fraction ("1.5G") and the
/// result is truncated to whole bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let syntax = || SizeError::Syntax {
        input: s.to_owned(),
    };
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let scale: f64 = match unit {
        "b" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(syntax()),
    };
    if num.is_empty() || !num.bytes().all(|b| b == b'.' || b.is_ascii_digit()) {
        return Err(syntax());
    }
    let value: f64 = num.parse().map_err(|_| syntax())?;
    let bytes = value * scale;
    // 2^64 is exactly representable; anything at or above it does not fit.
    if !bytes.is_finite() || bytes >= 18_446_744_073_709_551_616.0 {
        return Err(SizeError::TooLarge {
            input: s.to_owned(),
        });
    }
    // `bytes` is finite, not negative (digits and dots only) and below 2^64,
    // checked above; the cast drops the fraction of a byte.
    #[allow(clippy::cast_possible_truncation)]
    Ok(bytes as u64)
}

/// Lower-case `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(uuid: &[u8; 16]) -> String {
    let mut out = String::with_capacity(36);
    for (i, b) in uuid.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Parses the hyphenated form (either case). Hyphens must be where
/// [`format_uuid`] puts them.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], UuidError> {
    let err = || UuidError {
        input: s.to_owned(),
    };
    let bytes = s.as_bytes();
    if bytes.len() != 36 {
        return Err(err());
    }
    let mut out = [0u8; 16];
    let mut digits = Vec::with_capacity(32);
    for (i, &c) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return Err(err());
            }
            continue;
        }
        let d = (c as char).to_digit(16).ok_or_else(err)?;
        digits.push(u8::try_from(d).map_err(|_| err())?);
    }
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = (pair[0] << 4) | pair[1];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_by_binary_units() {
        assert_eq!(parse_size("512b").unwrap(), 512);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("20M").unwrap(), 20 << 20);
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
    }

    #[test]
    fn sizes_may_have_fractions_and_truncate() {
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert_eq!(parse_size(".5K").unwrap(), 512);
        assert_eq!(parse_size("1.7b").unwrap(), 1);
        assert_eq!(parse_size("2.K").unwrap(), 2048);
    }

    #[test]
    fn sizes_outside_the_syntax_are_rejected() {
        for bad in [
            "", "4", "G", "4g", "4k", "4T", "-1G", "1e3M", " 4G", "4G ", "1.2.3M", ".M", "4 G",
        ] {
            assert!(
                matches!(parse_size(bad), Err(SizeError::Syntax { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes_too_large_for_u64_are_rejected() {
        assert!(matches!(
            parse_size("99999999999999999999G"),
            Err(SizeError::TooLarge { .. })
        ));
    }

    #[test]
    fn uuid_formats_and_parses_back() {
        let u: [u8; 16] = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
            0x32, 0x10,
        ];
        let s = format_uuid(&u);
        assert_eq!(s, "01234567-89ab-cdef-fedc-ba9876543210");
        assert_eq!(parse_uuid(&s).unwrap(), u);
        assert_eq!(parse_uuid(&s.to_uppercase()).unwrap(), u);
    }

    #[test]
    fn malformed_uuids_are_rejected() {
        for bad in [
            "",
            "0123456789abcdeffedcba9876543210",
            "01234567-89ab-cdef-fedc-ba987654321",
            "01234567-89ab-cdef-fedc-ba98765432100",
            "0123456-789ab-cdef-fedc-ba9876543210",
            "01234567-89ab-cdef-fedc-ba987654321g",
            "01234567+89ab-cdef-fedc-ba9876543210",
        ] {
            assert!(parse_uuid(bad).is_err(), "{bad:?}");
        }
    }
}
