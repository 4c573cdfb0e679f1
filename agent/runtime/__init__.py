"""The agent's task runtime: runs the node's allocations on task drivers.

runtime      Runtime: converge to the desired set, adopt, collect garbage, report, sample
allocrunner  AllocRunner: the tasks of one allocation, their environment and labels
taskrunner   TaskRunner: one task's life (start, watch, checks, restarts, stop)
driver       the driver interface and its types (TaskConfig, TaskHandle, ExitResult, ...)
docker       the docker driver (aiodocker; the engine's event stream)
process      the process driver, and process_shim, the supervisor of one process task
restart      restart policy decisions (pure)
health       check verdicts from consecutive results (pure); probes: tcp, http, exec
logfiles     log files rotated by size and count, read from an offset
ports        host ports for an allocation (pure)
labels       the labels marking a container as orch's; container names; spec hashes
state        AllocSpec in; AllocStatus, TaskStatus, TaskEvent, DriverStatus out
config       RuntimeConfig
convert      Allocation messages to AllocSpec, AllocStatus to Allocation messages

Imports stay out of this file: ``process_shim`` runs as ``python -m`` and must start fast.
"""
