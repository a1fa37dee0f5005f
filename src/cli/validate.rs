//! `mugflow validate`: check a manifest and print the resolved plan.

use std::fmt::Write as _;

use super::{load_plan, runtime, ManifestArgs};

/// Validate the manifest, list its inputs (unless offline), check field contracts, print the plan;
/// with `world`, also which shards each worker takes.
pub fn validate(args: &ManifestArgs, offline: bool, world: Option<usize>) -> anyhow::Result<()> {
    let registry = stages::registry();
    let plan = load_plan(args, &registry)?;
    let inputs = if offline {
        None
    } else {
        let inputs = runtime()?.block_on(pipeline::input::list_inputs(&plan.job.input))?;
        plan.check_fields(&inputs.fields, &registry).map_err(pipeline::PipelineError::from)?;
        Some(inputs)
    };
    print!("{}", plan.render(inputs.as_ref()));
    if let Some(world) = world.filter(|w| *w > 0) {
        let Some(inputs) = &inputs else { anyhow::bail!("--world needs the input listing; drop --offline") };
        let shards = inputs.items.len().div_ceil(plan.job.shard_size as usize);
        let mut out = format!("\nworkers ({world}; shard k goes to rank k mod {world})\n");
        for rank in 0..world {
            let mine: Vec<String> = (rank..shards).step_by(world).map(|k| k.to_string()).collect();
            let _ = writeln!(
                out,
                "  rank {rank}: {} shard(s): {}",
                mine.len(),
                if mine.is_empty() { "-".into() } else { mine.join(", ") }
            );
        }
        print!("{out}");
    }
    println!("\nok: {} is valid", args.manifest.display());
    Ok(())
}
