"""The gateway's gRPC API: stubs generated from ``server/proto/anytime.proto`` (the one copy; regenerate with
``scripts/protos``). Importing this package pulls in grpcio and protobuf only, so thin clients can use it."""
