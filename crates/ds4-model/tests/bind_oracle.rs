use std::path::PathBuf;

use ds4_gguf::{GgmlType, GgufFile};
use ds4_model::{AttentionKind, Config, Model};

fn oracle_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/tiny_a/tiny_ds4.gguf")
}

#[test]
fn tiny_a_binds_with_its_own_shape() {
    let model = Model::open(oracle_path()).unwrap();
    let c = &model.config;
    assert_eq!(
        (c.n_layer, c.d_model, c.vocab_size, c.head_dim),
        (6, 256, 1024, 256)
    );
    assert_eq!(c.compress_ratios, vec![0, 0, 4, 16, 4, 16]);
    assert_eq!(c.attention_kind(3), AttentionKind::Heavy);
    assert!(!c.production_mismatches().is_empty());
    let w = &model.weights;
    assert!(w.layers[2].attn.indexer.is_some());
    assert!(w.layers[3].attn.indexer.is_none() && w.layers[3].attn.compressor.is_some());
    assert_eq!(w.expert_types()[0], (GgmlType::IQ2_XXS, GgmlType::Q2_K));
    assert_eq!(model.bytes(&w.output).len(), 278_528);
}

#[test]
fn a_wrong_shape_is_one_clear_line() {
    let bytes = std::fs::read(oracle_path()).unwrap();
    let good = GgufFile::from_bytes(bytes.clone()).unwrap();
    let info = good.tensor("blk.1.attn_kv.weight").unwrap();
    let name = b"blk.1.attn_kv.weight";
    let pos = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let mut bad = bytes.clone();
    // After the name: n_dims (u32), ne0 (u64), ne1 (u64). Halve ne1.
    assert_eq!(
        u64::from_le_bytes(bad[pos + 12..pos + 20].try_into().unwrap()),
        info.dims[1]
    );
    bad[pos + 12..pos + 20].copy_from_slice(&128u64.to_le_bytes());
    let file = GgufFile::from_bytes(bad).unwrap();
    let err = Model::from_file(std::sync::Arc::new(file))
        .err()
        .unwrap()
        .to_string();
    assert_eq!(
        err,
        "tensor 'blk.1.attn_kv.weight': expected shape [256, 256], found shape [256, 128]"
    );

    let cfg = Config::from_gguf(&good).unwrap();
    assert!(cfg
        .production_mismatches()
        .iter()
        .any(|m| m == "n_layer: expected 43, found 6"));
}
