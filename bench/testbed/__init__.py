"""A network-namespace testbed: N emulated hosts and an origin, each with its own address and rate.

Run as root.  Every name carries a prefix (default ``rfy``) and every address lies in a private
/24 that only these namespaces hold, so nothing here collides with the machine's own network or
with another engineer's Ray cluster.  :class:`Testbed` tears everything down on every exit.
"""

from bench.testbed.netns import Testbed, TestbedConfig, cleanup_prefix

__all__ = ["Testbed", "TestbedConfig", "cleanup_prefix"]
