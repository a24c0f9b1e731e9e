"""The executor a plan names: the local pipeline, or Ray Data's with `--ray`.

Apart from the plan because both executors import the plan: building them there would be an
import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from codescan.scan.job import Executor
from codescan.scan.plan import ScanPlan


def make_executor(plan: ScanPlan, warn: Callable[[str], None]) -> Executor:
    """`warn` takes what goes wrong mid-scan without stopping it (a scan cache that cannot be written)."""
    if plan.ray is None:
        from codescan.scan.pipeline import Scanner

        return Scanner(plan=plan, warn=warn)
    from codescan.scan.ray_executor import RayExecutor

    shards = None if plan.output is None or plan.output.shards is None else Path(plan.output.shards)
    return RayExecutor(plan, plan.ray, shards)
