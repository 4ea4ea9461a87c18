mod common;

use std::path::Path;

use ds4_gguf::{GgmlType, GgufFile, GgufWriter, Value};

#[test]
fn writer_output_parses_back_identically() {
    let file = GgufFile::from_bytes(common::sample_file()).unwrap();
    assert_eq!(file.version, 3);
    assert_eq!(file.metadata(), &common::sample_metadata()[..]);
    let specs = common::sample_tensors();
    assert_eq!(file.tensors().len(), specs.len());
    for (i, (t, s)) in file.tensors().iter().zip(&specs).enumerate() {
        assert_eq!(t.name, s.name);
        assert_eq!(t.dims, s.dims);
        assert_eq!(t.ggml_type, s.ggml_type);
        assert_eq!(t.offset % file.alignment, 0);
        let data = file.tensor_data(t);
        assert_eq!(data.len() as u64, s.size().unwrap());
        assert!(data.iter().all(|&b| b == i as u8 + 1));
    }
    assert_eq!(file.tensor("c.iq2").unwrap().size, 2 * 66);
    assert_eq!(file.get("test.u32"), Some(&Value::U32(4096)));
}

#[test]
fn streaming_writer_on_disk_with_custom_alignment() {
    let dir = std::env::temp_dir().join(format!("ds4-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.gguf");
    let mut meta = common::sample_metadata();
    meta.push(("general.alignment".into(), Value::U32(64)));
    let w = GgufWriter::create(&path, &meta, common::sample_tensors()).unwrap();
    // Fill tensor 1 in two pieces and out of order, as a threaded writer would.
    let size1 = w.layout().placements[1].1 as usize;
    let half = size1 / 2;
    w.write_tensor_at(1, half as u64, &vec![9u8; size1 - half])
        .unwrap();
    w.write_tensor_at(1, 0, &vec![8u8; half]).unwrap();
    assert!(w.write_tensor_at(1, 1, &vec![0u8; size1]).is_err());
    assert!(w.write_tensor(0, &[1, 2, 3]).is_err());
    w.write_tensor(0, &[0u8; 12]).unwrap();
    w.finish().unwrap();

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    let t = f.tensor("b.q8_0").unwrap();
    assert_eq!(t.ggml_type, GgmlType::Q8_0);
    let d = f.tensor_data(t);
    assert!(d[..half].iter().all(|&b| b == 8));
    assert!(d[half..].iter().all(|&b| b == 9));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The published-layout oracle model; present in CI and dev checkouts, not in
/// a user's fresh clone.
#[test]
fn parses_oracle_tiny_model() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/oracle/tiny_a/tiny_ds4.gguf");
    if !path.exists() {
        eprintln!("skipping: {} is absent", path.display());
        return;
    }
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 178);
    assert_eq!(
        f.get("general.architecture").and_then(Value::as_str),
        Some("deepseek4")
    );
    let t = f.tensor("blk.0.ffn_gate_exps.weight").unwrap();
    assert_eq!(t.ggml_type, GgmlType::IQ2_XXS);
    assert_eq!(t.dims, vec![256, 256, 8]);
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(tokens.len(), 1024);
}
