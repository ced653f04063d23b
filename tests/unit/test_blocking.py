"""The blocking-query rules (saltconsul_blocking) both watchers follow."""

import saltconsul_blocking as blocking


def test_next_index():
    assert blocking.next_index(None, 10) == (10, False)
    assert blocking.next_index(10, 12) == (12, False)
    assert blocking.next_index(10, 10) == (10, False)
    # An agent back without its data answers a lower index: take it, say so.
    assert blocking.next_index(500, 3) == (3, True)
    # Consul never blocks on 0.
    assert blocking.next_index(None, 0) == (1, False)
    assert blocking.next_index(7, None) == (None, False)


def test_backoff_grows_capped_with_jitter():
    top = [blocking.backoff(n, 0.5, 10, rand=lambda: 1.0) for n in range(1, 8)]
    assert top == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    low = blocking.backoff(3, 0.5, 10, rand=lambda: 0.0)
    assert low == 1.5  # 2.0 * 0.75
    assert blocking.backoff(1, 0.5, 10, permanent=True) == 10


def test_pacing():
    assert blocking.not_before(100.0, 0.25) == 100.25
