"""The gRPC edge: authentication, conversion to and from protobuf, servicers, server."""
