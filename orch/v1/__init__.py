"""Generated from protos/orch/v1 by `./run proto`: do not edit."""
