"""The tiers of the suite (not a test module): which tests start Ray, which start a
server, which are slow for other reasons. conftest.py marks every collected test with
`markers_of(item)`, so a module need not mark itself (it may: marks only add up).

    ray     starts Ray: a local instance, a ray.cluster_utils.Cluster or `ray start`
    server  starts a server process: `mlflow server`, an S3 server, a Ray head
    slow    takes seconds for another reason: training through a subprocess, a kill

The fast tier is what none of them marks: `pytest -m "not ray and not server and not
slow"`, the unit tests, under 30 s; `.ci/run` runs it first, then `-m "ray or server
or slow"`. A module missing from MODULES is slow until someone places it here: a new
module cannot slow the fast tier by being forgotten.
"""

from __future__ import annotations

RAY, SERVER, SLOW = "ray", "server", "slow"
TIERS = (RAY, SERVER, SLOW)

# Module -> markers of all its tests; () is the fast tier.
MODULES: dict[str, tuple[str, ...]] = {
    "test_bad_inputs": (),
    "test_benchmarks": (),  # the harness's smoke run: W-tiny, local mode, 3 steps
    "test_checkpoint": (),
    "test_cli": (),
    "test_config": (),
    "test_data": (),
    "test_early_stopping": (),
    "test_hostile_inputs": (),  # its trainings, kills, servers and Ray: FIXTURES and TESTS
    "test_layering": (),
    "test_doc_paths": (),  # the paths and modules the text names exist (reads files only)
    "test_network": (),
    "test_param_hash": (),  # its training with a real MLflow store: TESTS
    "test_balance": (),
    "test_rebalance": (),  # its Ray test: the ray_session fixture
    "test_rebalance_recovery": (RAY,),  # a worker killed after a rebalance, on a local Ray
    "test_pool_policy": (),  # the Ray pool's rules, without Ray
    "test_training": (),
    "test_bitwise": (),  # in-process pools of W-mnist's layers on 300 rows: ~15 s
    "test_bitwise_ray": (RAY, SLOW),  # 1-8 Ray workers, a resize and a replacement: ~2 min
    "test_remote_events": (),  # the Ray Client coordinator's events, over an in-process pool
    "test_checkpoint_uploads": (SLOW,),  # a real sqlite store: MLflow's import and tables
    "test_logged_models": (SERVER, SLOW),  # an `mlflow server`; training in this process, no Ray
    "test_system_metrics": (RAY, SLOW),  # two raylets (ray.cluster_utils) and a training subprocess
    "test_fingerprint": (RAY, SLOW),
    "test_hung_worker": (RAY, SLOW),
    "test_ray_client": (RAY, SERVER, SLOW),
    "test_resume_run_config": (SLOW,),
    "test_submit_lines": (SLOW,),  # job_python.sh under real Python parents
    "test_sweep_resume": (SLOW,),
    "test_ui_stop": (SERVER, SLOW),
    "test_ui_new_store": (SERVER, SLOW),
    "test_worker_warnings": (RAY,),  # one job on a local Ray: ~15 s
    "test_cluster_readme": (RAY, SERVER, SLOW),
    "test_elastic": (RAY, SLOW),
    "test_listeners": (RAY,),
    "test_mlflow": (RAY, SERVER, SLOW),
    "test_multinode": (RAY,),
    "test_node_plane": (RAY,),
    "test_ray_pool": (RAY,),
    "test_ray_start_stop": (RAY,),
    "test_remote": (RAY, SERVER),
    "test_resume": (SLOW,),
    "test_store_loss": (SERVER, SLOW),
    "test_outbox_race": (SERVER,),  # an `mlflow server` behind a gate that holds log-batch calls
    "test_sweep_parallel": (RAY, SLOW),
    "test_sweep_worker_loss": (RAY,),
    "test_sweep_reuse": (RAY, SLOW),  # sweeps whose trials reuse worker processes, on a local Ray: ~1 min
    "test_uris": (RAY, SERVER),
    "test_worker_loss": (RAY,),
    "test_solo": (RAY,),  # one-worker pools training inside their worker, on a local Ray: ~20 s
}

# Modules collected first, longest first: `.ci/run` splits the rest tier over two
# processes a module at a time (pytest-xdist, --dist loadfile), and the README's cluster
# walk-through alone takes ~3 min: started last, it would run on while the other
# process sat idle.
FIRST = ("test_cluster_readme", "test_ray_client", "test_remote", "test_elastic")

# Fixture -> markers of every test that uses it, in any module: what starts a process.
FIXTURES: dict[str, tuple[str, ...]] = {
    "ray_session": (RAY,),
    "head": (RAY, SERVER),
    "head_without_pyarrow": (RAY, SERVER),
    "mlflow_server": (SERVER,),
    "s3": (SERVER,),
    "s3_with_a_user": (SERVER,),
    "spirals_run": (SLOW,),  # test_cli: trains through the installed command (a subprocess)
    "killed_run": (SLOW,),  # test_hostile_inputs: a real run, stopped
    "small_disk": (SLOW,),  # test_hostile_inputs: a tmpfs mounted, trainings into it
}

# "module::test function" -> markers: the slow tests of a fast module.
TESTS: dict[str, tuple[str, ...]] = {
    # Without --local: starts a Ray before it reads the data.
    "test_cli::test_installed_command_bad_input_is_one_line": (RAY, SLOW),
    "test_cli::test_train_xor_end_to_end": (SLOW,),  # 300 epochs and a first MLflow store: seconds
    "test_data::test_a_teacher_set_generates_only_the_rows_up_to_the_highest_read": (SLOW,),
    "test_data::test_teacher_mnist_shape": (SLOW,),
    # Generates teacher-mnist (60,000 x 784) and trains 2 epochs on one thread: ~5 s.
    "test_benchmarks::test_numpy_mode_trains_as_local_mode_both_timed_by_one_threads_cpu": (SLOW,),
    "test_param_hash::test_a_run_logs_each_epochs_hash_and_the_final_one": (SLOW,),  # MLflow's import and tables
    "test_hostile_inputs::test_sigterm_while_ray_starts_leaves_no_ray_behind": (RAY, SLOW),
    "test_hostile_inputs::test_predict_into_a_pipe_closed_early_is_quiet": (SLOW,),  # the installed command
}


def markers_of(item) -> set[str]:
    module = item.module.__name__.rpartition(".")[2] if item.module else ""
    found = set(MODULES.get(module, (SLOW,)))
    for fixture in getattr(item, "fixturenames", ()):
        found.update(FIXTURES.get(fixture, ()))
    found.update(TESTS.get(f"{module}::{item.originalname}", ()))
    return found
