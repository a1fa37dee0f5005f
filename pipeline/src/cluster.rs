//! Which slice of the job this process works on: rank and world size from the engine that
//! launched it (Slurm, Kubernetes indexed Jobs, torchrun-style variables, or explicit flags).
//!
//! mugflow has no scheduler of its own: the workload manager starts N copies, each finds its
//! rank here, takes its shards, and commits through the shared journal.

use std::fmt;

use crate::PipelineError;

/// This worker's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// 0-based rank of this worker.
    pub rank: usize,
    /// Number of workers.
    pub world: usize,
    /// Where rank and world came from ("flags", "slurm", "slurm array", "kubernetes", "torchrun", "single").
    pub source: &'static str,
    /// The GPU this worker should use, when the launcher says (SLURM_LOCALID, LOCAL_RANK, CUDA_VISIBLE_DEVICES).
    pub local_gpu: Option<String>,
}

impl fmt::Display for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rank {} of {} ({})", self.rank, self.world, self.source)?;
        if let Some(g) = &self.local_gpu {
            write!(f, ", gpu {g}")?;
        }
        Ok(())
    }
}

impl Cluster {
    /// A single worker doing the whole job.
    pub fn single() -> Self {
        Cluster { rank: 0, world: 1, source: "single", local_gpu: None }
    }

    /// Whether this worker takes shard `k` under static sharding (shard k goes to rank k mod world).
    pub fn owns(&self, shard: usize) -> bool {
        shard % self.world == self.rank
    }

    /// Rank and world from explicit flags, else from the launcher's environment.
    ///
    /// Precedence: `--rank/--world`; a Slurm job array (each element x its srun tasks);
    /// Slurm `srun` tasks; a Kubernetes indexed Job (JOB_COMPLETION_INDEX, with the count from
    /// `--world` or MUGFLOW_WORLD_SIZE); torchrun's RANK/WORLD_SIZE; else a single worker.
    pub fn detect(
        rank: Option<usize>,
        world: Option<usize>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Cluster, PipelineError> {
        let num = |name: &str| -> Result<Option<usize>, PipelineError> {
            match env(name) {
                None => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    PipelineError::Input(format!("environment variable {name}={v} is not a non-negative integer"))
                }),
            }
        };
        let local_gpu = env("SLURM_LOCALID").or_else(|| env("LOCAL_RANK")).or_else(|| {
            // With one visible device, that device is ours; with several, the rank picks later.
            env("CUDA_VISIBLE_DEVICES").filter(|v| !v.contains(',') && !v.is_empty())
        });
        let (rank, world, source) = match (rank, world) {
            (Some(r), Some(w)) => (r, w, "flags"),
            (Some(_), None) | (None, Some(_)) if num("JOB_COMPLETION_INDEX")?.is_none() => {
                return Err(PipelineError::Input("give both --rank and --world".into()));
            }
            _ => {
                let (procid, ntasks) = (num("SLURM_PROCID")?, num("SLURM_NTASKS")?);
                if let Some(task) = num("SLURM_ARRAY_TASK_ID")? {
                    let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                    let count = match num("SLURM_ARRAY_TASK_COUNT")? {
                        Some(c) => c,
                        None => num("SLURM_ARRAY_TASK_MAX")?.map(|max| max + 1 - min).ok_or_else(|| {
                            PipelineError::Input(
                                "SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT or _MAX".into(),
                            )
                        })?,
                    };
                    let in_step = env("SLURM_STEP_ID").is_some();
                    let (p, n) = if in_step { (procid.unwrap_or(0), ntasks.unwrap_or(1).max(1)) } else { (0, 1) };
                    ((task - min) * n + p, count * n, "slurm array")
                } else if let (Some(p), Some(n), true) = (procid, ntasks, env("SLURM_STEP_ID").is_some()) {
                    // Only inside an `srun` step do SLURM_PROCID/NTASKS name this process; a batch
                    // script started with `--ntasks 2` but no srun is still one process.
                    (p, n, "slurm")
                } else if let Some(index) = num("JOB_COMPLETION_INDEX")? {
                    let w = world.or(num("MUGFLOW_WORLD_SIZE")?).ok_or_else(|| {
                        PipelineError::Input(
                            "JOB_COMPLETION_INDEX is set: give the Job's completions as --world N or MUGFLOW_WORLD_SIZE".into(),
                        )
                    })?;
                    (index, w, "kubernetes")
                } else if let (Some(r), Some(w)) = (num("RANK")?, num("WORLD_SIZE")?) {
                    (r, w, "torchrun")
                } else {
                    (0, 1, "single")
                }
            }
        };
        if world == 0 || rank >= world {
            return Err(PipelineError::Input(format!(
                "rank {rank} is outside a world of {world} worker(s) ({source})"
            )));
        }
        Ok(Cluster { rank, world, source, local_gpu })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(vars: &[(&str, &str)], rank: Option<usize>, world: Option<usize>) -> Result<Cluster, PipelineError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Cluster::detect(rank, world, &move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn launchers_map_to_rank_and_world() {
        assert_eq!(detect(&[], None, None).unwrap(), Cluster::single());
        let step = ("SLURM_STEP_ID", "0");
        let c =
            detect(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_LOCALID", "1"), step], None, None).unwrap();
        assert_eq!((c.rank, c.world, c.source, c.local_gpu.as_deref()), (1, 2, "slurm", Some("1")));
        let array = [("SLURM_ARRAY_TASK_ID", "7"), ("SLURM_ARRAY_TASK_MIN", "5"), ("SLURM_ARRAY_TASK_COUNT", "4")];
        let c = detect(&array, None, None).unwrap();
        assert_eq!((c.rank, c.world, c.source), (2, 4, "slurm array"));
        let arr = [array[0], array[1], ("SLURM_ARRAY_TASK_MAX", "8"), ("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")];
        let c = detect(&[arr[0], arr[1], arr[2], arr[3], arr[4], step], None, None).unwrap();
        assert_eq!((c.rank, c.world), (5, 8), "array element 2 of 4, task 1 of 2");
        let c = detect(&arr, None, None).unwrap();
        assert_eq!((c.rank, c.world), (2, 4), "a batch script without srun is one process per element");
        let c = detect(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")], None, None).unwrap();
        assert_eq!(c, Cluster::single(), "sbatch -n 2 without srun");
        let c = detect(&[("JOB_COMPLETION_INDEX", "3")], None, Some(5)).unwrap();
        assert_eq!((c.rank, c.world, c.source), (3, 5, "kubernetes"));
        assert!(detect(&[("JOB_COMPLETION_INDEX", "3")], None, None).is_err());
        let c = detect(&[("RANK", "0"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "0")], None, None).unwrap();
        assert_eq!((c.world, c.source, c.local_gpu.as_deref()), (8, "torchrun", Some("0")));
        let c = detect(&[("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2")], Some(0), Some(3)).unwrap();
        assert_eq!((c.rank, c.world, c.source), (0, 3, "flags"));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert!(detect(&[], Some(3), Some(3)).unwrap_err().to_string().contains("outside a world of 3"));
        assert!(detect(&[("SLURM_PROCID", "x"), ("SLURM_NTASKS", "2"), ("SLURM_STEP_ID", "0")], None, None)
            .unwrap_err()
            .to_string()
            .contains("SLURM_PROCID=x"));
        assert!(detect(&[], Some(1), None).is_err());
    }

    #[test]
    fn static_sharding_is_round_robin() {
        let c = Cluster { rank: 1, world: 3, source: "flags", local_gpu: None };
        assert_eq!((0..8).filter(|k| c.owns(*k)).collect::<Vec<_>>(), [1, 4, 7]);
    }
}
