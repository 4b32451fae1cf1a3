"""Factories and fakes shared by the tests (and the benches that borrow them).

- ``tests.kit.dns``: ``CERTOK_ZONE``, the zone certok serves in the tests.
- ``tests.kit.ports``: ``free_port()``, a loopback port free for TCP and UDP.
- ``tests.kit.unbound``: ``running_unbound(workdir, stubs)``, a real unbound on loopback.
- ``tests.kit.certs``: ``self_signed``/``self_signed_pem``, ``FakeCa``, ``add_certificate``,
  ``add_issued_chain`` (the record of a given chain and key).
- ``tests.kit.rows``: ``order_row``/``add_tenant`` and ``Zone``/``make_zone`` (delegations and
  dns-01 TXT values as certok's other parts write them).
- ``tests.kit.loop``: ``LoopThread``, an asyncio loop in a background thread.
- ``tests.kit.waiting``: ``wait_until(condition, timeout)``, polling with a generous deadline.
"""
