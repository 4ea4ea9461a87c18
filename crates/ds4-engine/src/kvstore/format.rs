//! The `KVC` checkpoint file (SERVING.md §6.3), byte-compatible with ds4's
//! `<sha1>.kv` files: a 48-byte header, `u32` text length, the cache text,
//! the DS4 session payload, and an optional `KTM` tool-id map.
//!
//! One addition, invisible to ds4: the reserved `u32` at offset 20 holds a
//! CRC-32 (IEEE) of every immutable byte of the file (header without the
//! hit count, last-used time and the CRC itself; text; payload; trailer).
//! ds4 writes 0 there and never reads it; we verify it when it is non-zero
//! and accept 0 as "written by ds4, no checksum" (a real CRC of 0 is then
//! stored as 0 too: 1 in 2³² files go unverified). ds4's own touch rewrites
//! the header with 0 in that field, which simply turns verification off.

use std::io::{self, Write};

use sha1::{Digest, Sha1};

pub const MAGIC: &[u8; 3] = b"KVC";
pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 48;
/// Header plus the `u32` text length.
pub const FIXED_BYTES: usize = HEADER_BYTES + 4;
pub const TOOL_MAP_MAGIC: &[u8; 3] = b"KTM";
pub const TOOL_MAP_VERSION: u8 = 1;
/// Limits of a tool-map entry (ds4's).
pub const MAX_TOOL_ID_BYTES: u32 = 256;
pub const MAX_TOOL_DSML_BYTES: u32 = 512 << 20;

/// Extension flag bits (header offset 6).
pub const FLAG_TOOL_MAP: u8 = 1;
pub const FLAG_RESPONSES_VISIBLE: u8 = 2;
pub const FLAG_THINKING_VISIBLE: u8 = 4;

/// Why a checkpoint was written (header offset 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaveReason {
    Unknown = 0,
    Cold = 1,
    Continued = 2,
    Evict = 3,
    Shutdown = 4,
    AgentSystem = 5,
    AgentSession = 6,
}

impl SaveReason {
    /// Values above 6 read as unknown, as in ds4.
    pub fn from_code(c: u8) -> Self {
        match c {
            1 => Self::Cold,
            2 => Self::Continued,
            3 => Self::Evict,
            4 => Self::Shutdown,
            5 => Self::AgentSystem,
            6 => Self::AgentSession,
            _ => Self::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Cold => "cold",
            Self::Continued => "continued",
            Self::Evict => "evict",
            Self::Shutdown => "shutdown",
            Self::AgentSystem => "agent-system",
            Self::AgentSession => "agent-session",
        }
    }
}

/// The fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    pub quant_bits: u8,
    pub reason: SaveReason,
    pub flags: u8,
    pub tokens: u32,
    pub hits: u32,
    pub ctx: u32,
    /// CRC-32 of the immutable bytes (0: none, see the module docs).
    pub checksum: u32,
    pub created: u64,
    pub last_used: u64,
    pub payload_bytes: u64,
}

/// Why bytes are not a checkpoint file we can trust.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("file is {0} bytes, shorter than the 52-byte fixed header")]
    Short(u64),
    #[error("bad magic or version (not a KVC v1 file)")]
    Magic,
    #[error("routed-expert quant bits {0} (2 or 4 expected)")]
    QuantBits(u8),
    #[error("cached token count is 0")]
    NoTokens,
    #[error("file is {have} bytes, header and lengths need {needed}")]
    Truncated { needed: u64, have: u64 },
    #[error("cache text is not valid UTF-8")]
    Text,
    #[error("checksum mismatch: header says {stored:#010x}, content gives {actual:#010x}")]
    Checksum { stored: u32, actual: u32 },
    #[error("tool-id map: {0}")]
    ToolMap(String),
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..3].copy_from_slice(MAGIC);
        h[3] = VERSION;
        h[4] = self.quant_bits;
        h[5] = self.reason as u8;
        h[6] = self.flags;
        h[8..12].copy_from_slice(&self.tokens.to_le_bytes());
        h[12..16].copy_from_slice(&self.hits.to_le_bytes());
        h[16..20].copy_from_slice(&self.ctx.to_le_bytes());
        h[20..24].copy_from_slice(&self.checksum.to_le_bytes());
        h[24..32].copy_from_slice(&self.created.to_le_bytes());
        h[32..40].copy_from_slice(&self.last_used.to_le_bytes());
        h[40..48].copy_from_slice(&self.payload_bytes.to_le_bytes());
        h
    }

    /// Parses and checks the header as ds4 does (magic, version, quant bits
    /// 2 or 4, token count ≠ 0).
    pub fn parse(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_BYTES {
            return Err(FormatError::Short(b.len() as u64));
        }
        if &b[..3] != MAGIC || b[3] != VERSION {
            return Err(FormatError::Magic);
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4"));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8"));
        let h = Self {
            quant_bits: b[4],
            reason: SaveReason::from_code(b[5]),
            flags: b[6],
            tokens: u32_at(8),
            hits: u32_at(12),
            ctx: u32_at(16),
            checksum: u32_at(20),
            created: u64_at(24),
            last_used: u64_at(32),
            payload_bytes: u64_at(40),
        };
        if h.quant_bits != 2 && h.quant_bits != 4 {
            return Err(FormatError::QuantBits(h.quant_bits));
        }
        if h.tokens == 0 {
            return Err(FormatError::NoTokens);
        }
        Ok(h)
    }

    /// Header bytes that never change after the write (what the CRC covers).
    fn immutable_bytes(&self) -> [u8; HEADER_BYTES - 16] {
        let h = self.encode();
        let mut out = [0u8; HEADER_BYTES - 16];
        out[..12].copy_from_slice(&h[..12]);
        out[12..16].copy_from_slice(&h[16..20]);
        out[16..24].copy_from_slice(&h[24..32]);
        out[24..32].copy_from_slice(&h[40..48]);
        out
    }
}

/// Bytes a file needs: header, text length, text, payload.
pub fn required_bytes(text_bytes: u64, payload_bytes: u64) -> Option<u64> {
    (FIXED_BYTES as u64)
        .checked_add(text_bytes)?
        .checked_add(payload_bytes)
}

/// A tool call id and the exact DSML block that produced it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ToolMapping {
    pub id: String,
    pub dsml: String,
}

pub fn encode_tool_map(map: &[ToolMapping]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(TOOL_MAP_MAGIC);
    out.push(TOOL_MAP_VERSION);
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for m in map {
        out.extend_from_slice(&(m.id.len() as u32).to_le_bytes());
        out.extend_from_slice(&(m.dsml.len() as u32).to_le_bytes());
        out.extend_from_slice(m.id.as_bytes());
        out.extend_from_slice(m.dsml.as_bytes());
    }
    out
}

/// Parses a tool map with ds4's limits: at most `max_entries`, ids of
/// 1..=256 bytes, DSML of 1 byte..=512 MiB, all inside `b`.
pub fn parse_tool_map(b: &[u8], max_entries: u64) -> Result<Vec<ToolMapping>, FormatError> {
    let err = |s: &str| FormatError::ToolMap(s.to_string());
    if b.len() < 8 || &b[..3] != TOOL_MAP_MAGIC || b[3] != TOOL_MAP_VERSION {
        return Err(err("missing KTM v1 section"));
    }
    let count = u32::from_le_bytes(b[4..8].try_into().expect("4")) as u64;
    if count > max_entries {
        return Err(err(&format!(
            "{count} entries exceed the limit {max_entries}"
        )));
    }
    let mut at = 8usize;
    let mut out = Vec::new();
    for i in 0..count {
        let lens = b
            .get(at..at + 8)
            .ok_or_else(|| err("entry header truncated"))?;
        let id_len = u32::from_le_bytes(lens[..4].try_into().expect("4"));
        let dsml_len = u32::from_le_bytes(lens[4..].try_into().expect("4"));
        if id_len == 0
            || id_len > MAX_TOOL_ID_BYTES
            || dsml_len == 0
            || dsml_len > MAX_TOOL_DSML_BYTES
        {
            return Err(err(&format!(
                "entry {i}: id {id_len} / dsml {dsml_len} bytes out of range"
            )));
        }
        at += 8;
        let end = at
            .checked_add(id_len as usize + dsml_len as usize)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| err(&format!("entry {i} runs past the end of the file")))?;
        let id =
            std::str::from_utf8(&b[at..at + id_len as usize]).map_err(|_| err("id not UTF-8"))?;
        let dsml = std::str::from_utf8(&b[at + id_len as usize..end])
            .map_err(|_| err("DSML not UTF-8"))?;
        out.push(ToolMapping {
            id: id.to_string(),
            dsml: dsml.to_string(),
        });
        at = end;
    }
    Ok(out)
}

/// CRC-32 over the immutable parts of a file.
pub fn checksum(header: &Header, text: &[u8], payload: &[u8], trailer: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&header.immutable_bytes());
    h.update(&(text.len() as u32).to_le_bytes());
    h.update(text);
    h.update(payload);
    h.update(trailer);
    h.finalize()
}

/// Writes a whole file to `w`. `header.checksum` is computed here.
pub fn write_file<W: Write + ?Sized>(
    w: &mut W,
    header: &Header,
    text: &str,
    payload: &[u8],
    trailer: &[u8],
) -> io::Result<()> {
    let text_len = u32::try_from(text.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cache text over 4 GiB"))?;
    let mut h = *header;
    h.payload_bytes = payload.len() as u64;
    h.checksum = checksum(&h, text.as_bytes(), payload, trailer);
    w.write_all(&h.encode())?;
    w.write_all(&text_len.to_le_bytes())?;
    w.write_all(text.as_bytes())?;
    w.write_all(payload)?;
    w.write_all(trailer)?;
    w.flush()
}

/// A file read and checked, borrowing its bytes.
#[derive(Debug)]
pub struct ParsedFile<'a> {
    pub header: Header,
    pub text: &'a str,
    pub payload: &'a [u8],
    /// Bytes after the payload (the tool map when flagged; ds4 ignores
    /// anything else there).
    pub trailer: &'a [u8],
    /// Whether a checksum was present and matched (`false`: absent).
    pub checksum_verified: bool,
}

/// Checks a whole file: header, lengths (before touching the body), UTF-8
/// text, and the checksum when present. The payload itself is checked by
/// [`ds4_model::payload::SessionPayload::decode`] against the model.
pub fn parse_file(b: &[u8]) -> Result<ParsedFile<'_>, FormatError> {
    let header = Header::parse(b)?;
    if b.len() < FIXED_BYTES {
        return Err(FormatError::Short(b.len() as u64));
    }
    let text_bytes = u32::from_le_bytes(b[HEADER_BYTES..FIXED_BYTES].try_into().expect("4")) as u64;
    let needed = required_bytes(text_bytes, header.payload_bytes).unwrap_or(u64::MAX);
    if (b.len() as u64) < needed {
        return Err(FormatError::Truncated {
            needed,
            have: b.len() as u64,
        });
    }
    let text_end = FIXED_BYTES + text_bytes as usize;
    let payload_end = needed as usize;
    let text = std::str::from_utf8(&b[FIXED_BYTES..text_end]).map_err(|_| FormatError::Text)?;
    let payload = &b[text_end..payload_end];
    let trailer = &b[payload_end..];
    let checksum_verified = header.checksum != 0;
    if checksum_verified {
        let actual = checksum(&header, text.as_bytes(), payload, trailer);
        if actual != header.checksum {
            return Err(FormatError::Checksum {
                stored: header.checksum,
                actual,
            });
        }
    }
    Ok(ParsedFile {
        header,
        text,
        payload,
        trailer,
        checksum_verified,
    })
}

/// Lowercase hex SHA-1 of the cache text: the file's name without `.kv`.
pub fn sha1_hex(text: &[u8]) -> String {
    let digest = Sha1::digest(text);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-1 in a cache file name (`<40 hex>.kv`, hex case-insensitive),
/// lowercased; `None` for any other name.
pub fn sha_of_name(name: &str) -> Option<String> {
    let stem = name.strip_suffix(".kv")?;
    (stem.len() == 40 && stem.bytes().all(|c| c.is_ascii_hexdigit()))
        .then(|| stem.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_known_vector() {
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    }

    #[test]
    fn names() {
        let s = "A9993E364706816ABA3E25717850C26C9CD0D89D.kv";
        assert_eq!(
            sha_of_name(s).unwrap(),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert!(sha_of_name("a9993e36.kv").is_none());
        assert!(sha_of_name("a9993e364706816aba3e25717850c26c9cd0d89d.kv.tmp.12").is_none());
        assert!(sha_of_name("README").is_none());
    }

    #[test]
    fn tool_map_round_trip_and_limits() {
        let m = vec![ToolMapping {
            id: "call_1".into(),
            dsml: "<dsml/>".into(),
        }];
        let b = encode_tool_map(&m);
        assert_eq!(parse_tool_map(&b, 10).unwrap(), m);
        assert!(parse_tool_map(&b, 0).is_err());
        assert!(parse_tool_map(&b[..b.len() - 1], 10).is_err());
        let mut bad = b.clone();
        bad[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_tool_map(&bad, 10).is_err());
    }
}
