//! The synthetic layout against the published file sizes, computed from
//! `synth::plan` without writing any data.

use std::collections::BTreeMap;

use ds4_gguf::{encode_header, GgufFile};
use ds4_model::layout::layer_of;
use ds4_model::synth::{plan, Preset, SynthSpec};
use ds4_model::Config;

fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// What decides a layer's tensor list: its compress ratio and whether it is
/// hash-routed.
fn kind(cfg: &Config, il: usize) -> (usize, bool) {
    (cfg.compress_ratios[il], il < cfg.n_hash_layer)
}

/// Per-layer tensor sizes of a short plan, times each layer kind's count in
/// the 43-layer schedule, plus the global tensors, give the published
/// totals (MODEL.md §2.2) and the full plan's total.
#[test]
fn per_layer_sizes_times_the_schedule_give_the_published_sizes() {
    let flash = Config::flash();
    for (preset, published_gib) in [(Preset::FlashQ2, 80.76), (Preset::FlashQ4, 153.32)] {
        // Five layers cover every kind: 0-1 window+hash, 2 ratio 4+hash,
        // 3 ratio 128, 4 ratio 4 with learned routing.
        let short = plan(&SynthSpec::new(preset).layers(5)).unwrap();
        let mut per_layer = vec![0u64; short.config.n_layer];
        let mut globals = 0u64;
        for (t, &size) in short.tensors.iter().zip(&short.sizes) {
            match layer_of(&t.name) {
                Some(il) => per_layer[il] += size,
                None => globals += size,
            }
        }
        let mut per_kind: BTreeMap<(usize, bool), u64> = BTreeMap::new();
        for (il, &bytes) in per_layer.iter().enumerate() {
            let previous = per_kind.insert(kind(&short.config, il), bytes);
            assert!(previous.is_none_or(|p| p == bytes), "layer {il}");
        }
        assert_eq!(per_kind.len(), 4, "{per_kind:?}");

        let total: u64 = globals
            + (0..flash.n_layer)
                .map(|il| per_kind[&kind(&flash, il)])
                .sum::<u64>();
        println!(
            "{preset}: globals {globals} B, per layer kind {per_kind:?}, total {total} B = {:.3} GiB",
            gib(total)
        );
        assert!(
            (gib(total) - published_gib).abs() < 0.01,
            "{preset}: {:.3} GiB, published {published_gib}",
            gib(total)
        );

        let full = plan(&SynthSpec::new(preset)).unwrap();
        assert_eq!(full.tensors.len(), 1328);
        assert_eq!(full.data_bytes(), total);
        let (_, layout) = encode_header(&full.metadata, &full.tensors).unwrap();
        let padding = layout.file_size - layout.data_offset - total;
        assert!(padding < 32 * full.tensors.len() as u64);
        println!(
            "{preset}: file {} B ({:.3} GiB): header {} B + data + {padding} B alignment padding",
            layout.file_size,
            gib(layout.file_size),
            layout.data_offset
        );
    }
}

/// The metadata of a full-size plan reads back as exactly the production
/// config (every key present, with a type ds4 accepts).
#[test]
fn production_metadata_reads_back_as_flash() {
    for preset in [Preset::FlashQ2, Preset::FlashQ4] {
        let p = plan(&SynthSpec::new(preset)).unwrap();
        let (header, _) = encode_header(&p.metadata, &[]).unwrap();
        let file = GgufFile::from_bytes(header).unwrap();
        let cfg = Config::from_gguf(&file).unwrap();
        assert_eq!(cfg, Config::flash());
        assert!(cfg.production_mismatches().is_empty());
        assert_eq!(
            file.get("general.architecture").and_then(|v| v.as_str()),
            Some("deepseek4")
        );
    }
    // Fewer layers: same widths, truncated per-layer arrays.
    let p = plan(&SynthSpec::new(Preset::FlashQ2).layers(2)).unwrap();
    let (header, _) = encode_header(&p.metadata, &[]).unwrap();
    let cfg = Config::from_gguf(&GgufFile::from_bytes(header).unwrap()).unwrap();
    assert_eq!(cfg, p.config);
    assert_eq!(
        (cfg.n_layer, cfg.d_model, cfg.compress_ratios.len()),
        (2, 4096, 2)
    );
}
