"""The engine as a service: one server process per store, reached over a Unix socket.

``server`` hosts the engine (the store, the executor, the timers and every live run) in a
process of its own that outlives the kernels and scripts that use it; ``client`` is what a
process uses to reach it, starting it when none runs. ``places`` says where a store's
socket, lock and log live; ``wire`` how messages are framed; ``ops`` which calls a client
may make.
"""
