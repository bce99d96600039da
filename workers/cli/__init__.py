"""The user's tools around the service: the `cased` command line, the demo, local servers to try it
by hand, the live view, benchmarks, the stream evaluation, and building the tiny world's package data.
The service itself (the worker) is the rest of `workers`; nothing there imports from here."""
