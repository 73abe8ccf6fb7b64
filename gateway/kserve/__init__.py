"""KServe V2 (the Open Inference Protocol): the codec, the HTTP routes and the gRPC service."""
