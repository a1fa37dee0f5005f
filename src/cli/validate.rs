//! `mugflow validate`: check a manifest and print the resolved plan.

use super::{load_plan, runtime, ManifestArgs};

/// Validate the manifest, list its inputs (unless offline), check field contracts, print the plan.
pub fn validate(args: &ManifestArgs, offline: bool) -> anyhow::Result<()> {
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
    println!("\nok: {} is valid", args.manifest.display());
    Ok(())
}
