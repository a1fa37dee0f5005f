//! Every stage a mugflow manifest can name, and the registry that maps names to stages.
//!
//! One stage = one module = one config struct (serde + schemars) with a `build()`.

pub mod aesthetic;
pub mod batch;
pub mod checkpoints;
pub mod clip_filter;
pub mod encode_mp4;
pub mod enhance;
pub mod export_clips;
pub mod i2v_generate;
pub mod load_image;
pub mod load_tensors;
pub mod probe;
mod row;
pub mod scene_split;
pub mod t5_encode;
pub mod vae_decode;
pub mod vae_encode;
pub mod video;
pub mod write;

use pipeline::Registry;

/// All stage kinds, in the order `mugflow stages` lists them.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<probe::ProbeConfig>()
        .register::<scene_split::SceneSplitConfig>()
        .register::<clip_filter::ClipFilterConfig>()
        .register::<export_clips::ExportClipsConfig>()
        .register::<aesthetic::AestheticConfig>()
        .register::<vae_encode::VaeEncodeConfig>()
        .register::<t5_encode::T5EncodeConfig>()
        .register::<load_tensors::LoadTensorsConfig>()
        .register::<load_image::LoadImageConfig>()
        .register::<i2v_generate::I2vGenerateConfig>()
        .register::<vae_decode::VaeDecodeConfig>()
        .register::<enhance::EnhanceConfig>()
        .register::<encode_mp4::EncodeMp4Config>()
        .register::<write::WriteConfig>();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered stage's example parses and validates as part of a manifest.
    #[test]
    fn every_example_validates() {
        let reg = registry();
        for kind in reg.kinds() {
            let text = format!(
                "[job]\nname = \"t\"\ninput = \"x/*.mp4\"\noutput = \"out\"\n\n{}{}",
                kind.example(),
                if kind.name() == "write" { "" } else { "\n[[stage]]\nkind = \"write\"\n" }
            );
            let m = pipeline::manifest::Manifest::from_text(std::path::Path::new("example.toml"), text, &[], &|_| None)
                .unwrap();
            if let Err(e) = pipeline::Plan::from_manifest(&m, &reg) {
                panic!("example of `{}` does not validate:\n{e}", kind.name());
            }
        }
    }
}
