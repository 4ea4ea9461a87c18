//! Character classes used by the pre-tokenizer, with the same Unicode tables as the regex
//! engine (`regex-syntax`), so the hand-written splitter and the `fancy-regex` reference agree
//! by construction on every code point.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

pub const L: u8 = 1; // \p{L}
pub const M: u8 = 2; // \p{M}
pub const N: u8 = 4; // \p{N}
pub const P: u8 = 8; // \p{P}
pub const S: u8 = 16; // \p{S}
pub const WS: u8 = 32; // \s (Unicode White_Space)
pub const CJK: u8 = 64; // [一-龥぀-ゟ゠-ヿ]

const BLOCK_BITS: u32 = 7;
const BLOCK: usize = 1 << BLOCK_BITS;
const N_CP: usize = 0x11_0000;

/// Two-level lookup table: `blocks[index[cp >> 7]][cp & 127]`.
pub struct ClassTable {
    index: Vec<u16>,
    blocks: Vec<[u8; BLOCK]>,
    ascii: [u8; 128],
}

impl ClassTable {
    #[inline]
    pub fn get(&self, c: char) -> u8 {
        let cp = c as u32;
        if cp < 128 {
            return self.ascii[cp as usize];
        }
        let blk = self.index[(cp >> BLOCK_BITS) as usize] as usize;
        self.blocks[blk][(cp as usize) & (BLOCK - 1)]
    }
}

fn ranges(pattern: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .expect("static class pattern parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(cls)) => cls
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        other => panic!("pattern {pattern} is not a unicode class: {other:?}"),
    }
}

fn build() -> ClassTable {
    let mut flat = vec![0u8; N_CP];
    let sets: [(&str, u8); 7] = [
        (r"\p{L}", L),
        (r"\p{M}", M),
        (r"\p{N}", N),
        (r"\p{P}", P),
        (r"\p{S}", S),
        (r"\s", WS),
        ("[一-龥぀-ゟ゠-ヿ]", CJK),
    ];
    for (pat, bit) in sets {
        for (lo, hi) in ranges(pat) {
            for f in &mut flat[lo as usize..=hi as usize] {
                *f |= bit;
            }
        }
    }
    let mut ascii = [0u8; 128];
    ascii.copy_from_slice(&flat[..128]);
    let mut index = Vec::with_capacity(N_CP / BLOCK);
    let mut blocks: Vec<[u8; BLOCK]> = Vec::new();
    let mut seen = rustc_hash::FxHashMap::default();
    for chunk in flat.chunks_exact(BLOCK) {
        let mut blk = [0u8; BLOCK];
        blk.copy_from_slice(chunk);
        let id = *seen.entry(blk).or_insert_with(|| {
            blocks.push(blk);
            blocks.len() - 1
        });
        index.push(u16::try_from(id).expect("few distinct blocks"));
    }
    ClassTable {
        index,
        blocks,
        ascii,
    }
}

pub fn table() -> &'static ClassTable {
    static TABLE: OnceLock<ClassTable> = OnceLock::new();
    TABLE.get_or_init(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spot_checks() {
        let t = table();
        assert_eq!(t.get('a'), L);
        assert_eq!(t.get('5'), N);
        assert_eq!(t.get(','), P);
        assert_eq!(t.get('+'), S);
        assert_eq!(t.get(' '), WS);
        assert_eq!(t.get('\u{3000}'), WS);
        assert_eq!(t.get('\u{85}'), WS);
        assert_eq!(t.get('好'), L | CJK);
        assert_eq!(t.get('・'), P | CJK);
        assert_eq!(t.get('\u{301}'), M);
        assert_eq!(t.get('\u{200d}'), 0);
        assert_eq!(t.get('🚀'), S);
    }
}
