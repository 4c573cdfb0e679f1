"""The controller: store, scheduler (pure), reconciler and the gRPC API."""
