"""Which backend and layout a local job gets from the machine's cores."""

from __future__ import annotations

from modnet_batch.execution.resources import INLINE_MAX_CPUS, local_backend


def test_a_small_cpu_machine_runs_matte_inline_and_a_bigger_one_on_ray() -> None:
    assert local_backend("cpu", cpus=1) == "inline"
    assert local_backend(None, cpus=INLINE_MAX_CPUS) == "inline"
    assert local_backend("cpu", cpus=INLINE_MAX_CPUS + 1) == "ray"
    assert local_backend("gpu", cpus=1) == "ray"  # devices keep their per-device actors
