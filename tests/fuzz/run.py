"""Coverage-guided fuzzing with atheris (libFuzzer), bounded:

    python -m tests.fuzz.run gossip_packet -runs=50000 -max_total_time=60
    python -m tests.fuzz.run job_file -runs=5000

Targets: gossip_packet, stream_frame, endpoints, snapshot, grpc_message, job_file,
job_message, dns_query (tests/fuzz/targets.py says what each checks).

The corpus starts from the target's well-formed seeds (in a temporary directory unless
``-corpus DIR`` is given). A crash prints the input and exits non-zero, as libFuzzer does.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["orch.gossip", "orch.jobspec", "agent.lb.discovery",
                                         "agent.runtime.convert", "controller.scheduler", "agent.dns",
                                         "tests.fuzz"]):
    from tests.fuzz import targets

TARGETS = {"gossip_packet": (targets.gossip_packet, targets.gossip_seeds),
           "stream_frame": (targets.stream_frame, targets.stream_seeds),
           "endpoints": (targets.endpoints, targets.endpoint_seeds),
           "snapshot": (targets.snapshot, targets.snapshot_seeds),
           "grpc_message": (targets.grpc_message, targets.grpc_seeds),
           "job_file": (targets.job_file, targets.job_seeds),
           "job_message": (targets.job_message, targets.job_message_seeds),
           "dns_query": (targets.dns_query, targets.dns_seeds)}


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags]")
    fn, seeds = TARGETS[argv[1]]
    flags = argv[2:]
    corpus = next((f.split("=", 1)[1] for f in flags if f.startswith("-corpus=")), None)
    flags = [f for f in flags if not f.startswith("-corpus=")]
    d = Path(corpus or tempfile.mkdtemp(prefix=f"fuzz-{argv[1]}-"))
    d.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds()):
        (d / f"seed-{i}").write_bytes(seed)
    atheris.Setup([argv[0], *flags, str(d)], fn)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
