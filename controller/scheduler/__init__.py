"""The scheduler: pure placement of a job's allocations onto a cluster snapshot.

::

    plan = schedule(job, snapshot, now=time.time(), seed=eval_index)
    print("\\n".join(plan.explain()))
    print(render_plan(plan))            # the whole plan as text, for people

``snapshot``     NodeInfo, AllocInfo and the incrementally kept ClusterSnapshot
``scheduler``    ``schedule()``: reconcile, stop, place (service, batch, system)
``reconcile``    what a group's existing allocations need (update, replace, stop, ...)
``placer``       bounded sampling of feasible nodes and the choice among them
``feasibility``  node state, class checks (cached per node class), node checks
``ranking``      bin-pack/spread fit, job anti-affinity, affinities, spread targets
``ports``        static port checks, dynamic port choice
``plan``         the plan and its explanations
``diff``         what changed in a group's spec, and the plan as text for people (the
                 controller sends ``orchctl`` a PlanSummary instead: ``controller.planner``)
``config``       SchedulerConfig
"""

from controller.scheduler.config import SchedulerConfig
from controller.scheduler.diff import FieldChange, diff_groups, render_plan
from controller.scheduler.plan import GroupPlan, InPlaceUpdate, NodeMetrics, Placement, Plan, Stop
from controller.scheduler.scheduler import schedule
from controller.scheduler.snapshot import (
    AllocInfo,
    ClusterSnapshot,
    NodeInfo,
    alloc_info_from_proto,
    node_info_from_proto,
)

__all__ = [
    "AllocInfo", "ClusterSnapshot", "FieldChange", "GroupPlan", "InPlaceUpdate", "NodeInfo",
    "NodeMetrics", "Placement", "Plan", "SchedulerConfig", "Stop", "alloc_info_from_proto",
    "diff_groups", "node_info_from_proto", "render_plan", "schedule",
]
