"""Ray backend for batch jobs (optional extra: pip install 'bayescale[ray]').

`ray_runner(job, shards)` sends each shard (data sets of one law) to a Ray worker, which runs the same
`bayescale.jobs.run_shard` as the local backend: one vmapped program per shard (on the worker's GPU when
JAX sees one there, `num_gpus` per task), writing its fit files into the job's output directory (which must
be on storage every worker can reach). Failed shards (a worker dies, or the task raises) are retried by Ray
up to `max_retries` times; results are yielded to `run_job` as shards finish, in any order, and `run_job`
records them in the manifest, so a driver killed mid-job resumes like a local one.

Connects to a running cluster if Ray is already initialised (`ray.init(address=...)`), else starts a local
one with the default settings.
"""

from __future__ import annotations

from collections.abc import Sequence


def _shard_task(job, law: str, names: list[str]):
    import bayescale  # noqa: F401  (before other JAX use on the worker: float64, devices, compile cache)
    from bayescale.jobs import run_shard

    return run_shard(job, law, names)


def ray_runner(job, shards: Sequence[tuple[str, list[str]]], *, max_retries: int = 3, num_cpus: float = 1,
               num_gpus: float = 0, max_in_flight: int | None = None):
    try:
        import ray
    except ImportError as err:
        raise ImportError("the Ray backend needs Ray: pip install 'bayescale[ray]'") from err
    if not ray.is_initialized():
        ray.init()
    task = ray.remote(max_retries=max_retries, retry_exceptions=True, num_cpus=num_cpus,
                      num_gpus=num_gpus)(_shard_task)
    job_ref = ray.put(job)  # the data sets travel once, not once per shard
    limit = max_in_flight or max(1, int(ray.available_resources().get("CPU", 1) // max(num_cpus, 1e-9)))
    queue = list(shards)
    pending = []
    while queue or pending:
        while queue and len(pending) < limit:
            law, names = queue.pop(0)
            pending.append(task.remote(job_ref, law, list(names)))
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])
