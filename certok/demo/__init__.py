"""`certok demo` and the loopback rig it runs (Pebble, unbound, NSD, nginx); the end-to-end
tests use the same rig through tests/rig."""
