import shoal


def test_lock_round_trip():
    lock = shoal.Lock()
    assert lock.acquire(timeout=1)
    assert not lock.acquire(block=False)
    lock.release()
