"""The Ray executor on a real two-node Ray cluster (loopback, own network namespace).

Drivers are small scripts run inside the namespace that map a ``UnitTask`` over units with the
``RayExecutor``; their steps live in ``__main__`` so Ray ships them by value, as it would the steps of the
installed package by reference.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from fixtures.ray_cluster import RayTestCluster
from fixtures.s3_server import MotoServer

pytestmark = [pytest.mark.ray, pytest.mark.slow]

DRIVER = textwrap.dedent('''
    import json, os, sys, time
    from pathlib import Path
    from typing import ClassVar

    import ray

    from geofm import storage
    from geofm.config import PipelineConfig
    from geofm.executors import UnitTask
    from geofm.executors.ray import RayExecutor
    from geofm.report import StepReport
    from geofm.steps.base import Step, UnitOutput

    out, address, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    UNITS = ["bad", *[f"u{i}" for i in range(8)]]
    _MODEL = {}

    class Where(Step):
        """Records the node and process each unit ran on; one unit fails on purpose."""
        name: ClassVar[str] = "test-where"
        params: ClassVar[tuple[str, ...]] = ()

        def units(self, cfg):
            return UNITS

        def inputs(self, cfg, unit):
            return unit

        def process(self, cfg, unit):
            if unit == "bad":
                raise ValueError("unit bad is broken on purpose")
            time.sleep(0.3)  # long enough that one node cannot take every unit
            return UnitOutput([], {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                                   "endpoint": os.environ.get("AWS_ENDPOINT_URL")})

    class WithModel(Where):
        """A model step: each long-lived worker loads its "model" once (counted by files)."""
        name: ClassVar[str] = "test-model"
        model_worker: ClassVar[bool] = True

        def setup_worker(self, cfg):
            _MODEL["weights"] = os.getpid()
            (out / f"load-{os.getpid()}").write_text("loaded")

        def process(self, cfg, unit):
            if _MODEL.get("weights") != os.getpid():
                raise RuntimeError("model not loaded in this worker")
            if unit == "bad":
                raise ValueError("unit bad is broken on purpose")
            return UnitOutput([], {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()})

    class ToS3(Where):
        """Writes an object through geofm.storage: the worker must see the driver's AWS_* settings."""
        name: ClassVar[str] = "test-s3"

        def units(self, cfg):
            return [f"u{i}" for i in range(4)]

        def process(self, cfg, unit):
            url = f"{cfg.output_root}/{unit}.json"
            storage.write_json(url, {"unit": unit, "node": ray.get_runtime_context().get_node_id()})
            return UnitOutput([url], {"url": url})

    def run(step, cfg):
        results = []
        with RayExecutor(cfg) as executor:
            executor.map(UnitTask(step, cfg), step.units(cfg), results.append)
        return StepReport(step.name, results)

    cfg = PipelineConfig(output_root=str(out), executor="ray", ray_address=address, retries=1)
    ray.init(address=address)  # only to list nodes; the executor connects again
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    ray.shutdown()
    if mode == "tasks":
        report = run(Where(), cfg)
    elif mode == "actors":
        report = run(WithModel(), cfg)
    else:
        import boto3
        bucket = "geofm-ray"
        boto3.client("s3").create_bucket(Bucket=bucket)
        cfg = cfg.model_copy(update={"output_root": f"s3://{bucket}/out"})
        report = run(ToS3(), cfg)
        readback = {u: storage.read_json(f"s3://{bucket}/out/{u}.json") for u in ToS3().units(cfg)}
        (out / "readback.json").write_text(json.dumps(readback))
    (out / "report.json").write_text(json.dumps({"nodes": nodes, "report": report.to_dict()}))
''')


def _drive(cluster: RayTestCluster, tmp_path: Path, mode: str, env: dict[str, str] | None = None) -> dict:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cluster.python(script, str(tmp_path), cluster.address, mode, env=env, timeout=240)
    return json.loads((tmp_path / "report.json").read_text())


def test_tasks_spread_over_both_nodes_and_failure_is_recorded(ray_cluster: RayTestCluster, tmp_path: Path) -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}  # only the driver has it: must reach the workers
    out = _drive(ray_cluster, tmp_path, "tasks", env=env)
    assert len(out["nodes"]) == 2  # both nodes alive
    results = {r["unit"]: r for r in out["report"]["results"]}
    assert results["bad"]["status"] == "failed"
    assert results["bad"]["error"] == "ValueError: unit bad is broken on purpose"
    assert results["bad"]["attempts"] == 2  # retried once, then recorded
    done = [r for u, r in results.items() if u != "bad"]
    assert len(done) == 8 and all(r["status"] == "done" for r in done)
    assert {r["info"]["node"] for r in done} == set(out["nodes"])  # both nodes got work
    assert {r["info"]["endpoint"] for r in done} == {env["AWS_ENDPOINT_URL"]}


def test_actors_load_model_once_each(ray_cluster: RayTestCluster, tmp_path: Path) -> None:
    out = _drive(ray_cluster, tmp_path, "actors")
    results = {r["unit"]: r for r in out["report"]["results"]}
    assert results["bad"]["status"] == "failed" and "broken on purpose" in results["bad"]["error"]
    done = [r for u, r in results.items() if u != "bad"]
    assert len(done) == 8 and all(r["status"] == "done" for r in done)
    actor_pids = {r["info"]["pid"] for r in done}
    assert len(actor_pids) == 2  # one actor per CPU of the 2-node, 1-CPU-each cluster
    loads = sorted(p.name for p in tmp_path.glob("load-*"))
    assert loads == sorted(f"load-{pid}" for pid in actor_pids)  # 9 units, 2 model loads
    assert {r["info"]["node"] for r in done} == set(out["nodes"])


def test_workers_write_the_drivers_bucket(ray_cluster: RayTestCluster, ray_cluster_s3: MotoServer,
                                          tmp_path: Path) -> None:
    out = _drive(ray_cluster, tmp_path, "s3", env=ray_cluster_s3.env)
    assert out["report"]["counts"] == {"done": 4, "skipped": 0, "failed": 0}
    readback = json.loads((tmp_path / "readback.json").read_text())
    assert sorted(readback) == ["u0", "u1", "u2", "u3"]
    assert all(v["unit"] == u and v["node"] in out["nodes"] for u, v in readback.items())


def test_bad_ray_address_is_a_clear_error(ray_cluster: RayTestCluster, tmp_path: Path) -> None:
    script = tmp_path / "bad.py"
    script.write_text(textwrap.dedent('''
        from geofm.config import PipelineConfig
        from geofm.errors import RayError
        from geofm.executors.ray import RayExecutor
        try:
            RayExecutor(PipelineConfig(executor="ray", ray_address="127.0.0.1:1")).check()
        except RayError as exc:
            print("ERROR:", exc)
    '''))
    proc = ray_cluster.python(script, timeout=180)
    assert "ERROR: cannot connect to Ray cluster at '127.0.0.1:1' (ray_address)" in proc.stdout
