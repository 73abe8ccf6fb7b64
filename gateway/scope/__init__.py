"""The request scope: context, keys, limits, admission, cache, and the pipeline that applies
them to every request, HTTP or gRPC."""
