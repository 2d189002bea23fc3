import pytest
from parecer import db
from tests.test_state_machine import test_queue_state_machine

MUTATIONS = {
    "release ignores retry_count": ("release", "CASE WHEN a.retry_count = 0 THEN 'pending' ELSE 'failed' END", "'pending'"),
    "expiry leaves attempt open": ("_expire_leases", "t.outcome IS NULL", "false"),
    "force leaves attempt open": ("enqueue", "WHERE force_reprocess AND NOT ins.inserted", "WHERE false AND NOT ins.inserted"),
    "terminal off by one": ("mark_failed", "a.retry_count + 1 >= v_max", "a.retry_count + 1 > v_max"),
}

@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutant(db_url, name):
    fn, old, new = MUTATIONS[name]
    with db.connect(db_url) as c:
        d = c.execute("SELECT pg_get_functiondef(p.oid) AS d FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname='parecer' AND p.proname=%s", (fn,)).fetchone()["d"]
        assert old in d, (fn, old)
        c.execute(d.replace(old, new).encode())
    with pytest.raises(Exception) as ei:
        test_queue_state_machine(db_url)
    print(name, "->", str(ei.value).splitlines()[0][:200])
