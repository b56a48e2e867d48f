"""The one resume mechanism: a unit of work is skipped only when its marker matches.

A unit's fingerprint digests its step, the parameters that shape the step's outputs and the identity
of the unit's inputs: what the upstream units wrote, named by their own fingerprints (or by a digest
of the content read). The marker is written last, after every output, and records the fingerprint and
the outputs. A rerun skips a unit when its marker holds the same fingerprint and every recorded output
exists; otherwise the unit is done again from scratch, and outputs of the previous run that this one
did not write are removed. Since a unit's outputs are a deterministic function of its fingerprint, the
fingerprint also serves as the identity of what it wrote: whatever is redone upstream changes the
fingerprints downstream, so after any failures, kills or mended inputs one more run converges to the
outputs of a clean run.

Markers live at ``output/<aoi>/runs/markers/<step>/<unit>.json``; outputs are recorded as the layout
stores paths (``Layout.stored``: relative to ``output/<aoi>/`` when under it, so a moved output keeps its
markers valid).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from geofm import storage
from geofm.digest import digest
from geofm.errors import InjectedFault, NotFoundError
from geofm.layout import Layout

FAULTS_ENV = "GEOFM_FAULTS"


@dataclass(frozen=True)
class Marker:
    """A finished unit: its fingerprint, the outputs it wrote and a summary of what it did.

    An incomplete unit (it finished, but part of its work failed, e.g. one unreadable chip of a scene)
    has a marker too, so that downstream units can use what it wrote; it is never skipped, and its
    identity changes with what it did, so that downstream units are redone once it completes."""

    step: str
    unit: str
    fingerprint: str
    outputs: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    complete: bool = True

    @property
    def identity(self) -> str:
        """What downstream units name among their inputs: the fingerprint of a complete unit (its
        outputs are a function of it), else a digest of the fingerprint and what the unit did."""
        return self.fingerprint if self.complete else digest([self.fingerprint, self.info])


def fingerprint(step: str, params: dict[str, Any], inputs: Any) -> str:
    """The digest a unit's marker must hold for the unit to be skipped."""
    return digest({"step": step, "params": params, "inputs": inputs})


def _file_name(unit: str) -> str:
    return unit.replace("/", "__")


def _unit_name(file_name: str) -> str:
    return file_name.removesuffix(".json").replace("__", "/")


def read(lay: Layout, step: str, unit: str) -> Marker | None:
    """The unit's marker, or None when it has none (a torn or foreign marker counts as none)."""
    url = lay.marker(step, _file_name(unit))
    try:
        obj = storage.read_json(url)
        return Marker(step, unit, str(obj["fingerprint"]), [lay.resolve(u) for u in obj["outputs"]],
                      dict(obj.get("info") or {}), bool(obj.get("complete", True)))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def write(lay: Layout, marker: Marker) -> None:
    storage.write_json(lay.marker(marker.step, _file_name(marker.unit)), {
        "step": marker.step, "unit": marker.unit, "fingerprint": marker.fingerprint,
        "finished": datetime.now(UTC).isoformat(), "info": marker.info, "complete": marker.complete,
        "outputs": [lay.stored(u) for u in marker.outputs],
    })


def upstream(lay: Layout, step: str, unit: str) -> str:
    """The identity of an upstream unit, which a downstream unit names among its inputs; a unit
    whose upstream never finished cannot run (:class:`~geofm.errors.NotFoundError`)."""
    m = read(lay, step, unit)
    if m is None:
        raise NotFoundError(f"{unit}: step {step!r} has not finished it (no marker under "
                            f"{lay.markers_dir(step)}); run {step} first")
    return m.identity


def _marked_units(lay: Layout, step: str) -> list[str]:
    return [_unit_name(url.rsplit("/", 1)[-1]) for url in storage.list_files(lay.markers_dir(step), ".json")]


def identities(lay: Layout, step: str, prefix: str = "") -> dict[str, str]:
    """unit -> identity of every finished unit of ``step`` whose name starts with ``prefix``."""
    out = {}
    for unit in _marked_units(lay, step):
        if unit.startswith(prefix) and (m := read(lay, step, unit)) is not None:
            out[unit] = m.identity
    return out


def prune(lay: Layout, step: str, keep: set[str]) -> list[str]:
    """Remove the outputs and markers of ``step``'s units that are no longer among its units (``keep``):
    a scene dropped from the input, a chip no longer made. Returns the pruned units."""
    gone = [u for u in _marked_units(lay, step) if u not in keep]
    for unit in gone:
        m = read(lay, step, unit)
        for url in m.outputs if m is not None else []:
            storage.remove(url)
        storage.remove(lay.marker(step, _file_name(unit)))
    return gone


def inject_fault(step: str, unit: str, point: str) -> None:
    """Test hook for resilience checks: with ``GEOFM_FAULTS="fail=0.2,kill=0.05,seed=3"`` a unit fails
    (or its process is killed) at ``point`` with that probability, the same for the same seed, step,
    unit and point. Unset (always, outside tests) it does nothing."""
    spec = os.environ.get(FAULTS_ENV)
    if not spec:
        return
    opts = dict(kv.split("=", 1) for kv in spec.split(",") if "=" in kv)
    draw = int(digest([opts.get("seed", "0"), step, unit, point]), 16) / 16 ** 16
    kill, fail = float(opts.get("kill", 0)), float(opts.get("fail", 0))
    if draw < kill:
        os.kill(os.getpid(), signal.SIGKILL)
    if draw < kill + fail:
        raise InjectedFault(f"injected fault ({FAULTS_ENV}) in {step} {unit} {point} its work")


def run(lay: Layout, step: str, unit: str, fp: str, work: Callable[[], Any], force: bool = False,
        intact: Callable[[Marker], bool] | None = None) -> tuple[Literal["done", "skipped"], dict[str, Any]]:
    """Skip ``unit`` when its marker matches ``fp``, it completed and its outputs exist (and, when given,
    ``intact(marker)`` says they still hold what it recorded); else run ``work()`` (which returns a
    :class:`~geofm.steps.base.UnitOutput`), remove the previous run's outputs it no longer writes, and
    write the marker last."""
    old = read(lay, step, unit)
    if (not force and old is not None and old.complete and old.fingerprint == fp
            and storage.all_exist(old.outputs) and (intact is None or intact(old))):
        return "skipped", old.info
    inject_fault(step, unit, "before")
    out = work()
    inject_fault(step, unit, "after")
    if old is not None:
        for url in sorted(set(old.outputs) - set(out.outputs)):
            storage.remove(url)
    write(lay, Marker(step, unit, fp, list(out.outputs), dict(out.info), out.complete))
    return "done", out.info
