//! Random ids: `call_` / `toolu_` + 32 hex (16 random bytes), Responses
//! item ids with 24 hex (§3.7).

/// `prefix` + `bytes` random bytes as lowercase hex.
pub fn random_id(prefix: &str, bytes: usize) -> String {
    let mut s = String::with_capacity(prefix.len() + 2 * bytes);
    s.push_str(prefix);
    for _ in 0..bytes {
        let b: u8 = rand::random();
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_have_prefix_and_hex() {
        let a = super::random_id("call_", 16);
        let b = super::random_id("call_", 16);
        assert_eq!(a.len(), 5 + 32);
        assert!(a[5..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(super::random_id("fc_", 12).len(), 3 + 24);
    }
}
