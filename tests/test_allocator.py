"""Finding tcmalloc for the CPU launch hint (trace_jax/allocator.py)."""

from trace_jax import allocator

LDCONFIG = """\
1234 libs found in cache `/etc/ld.so.cache'
	libtcmalloc_minimal.so.4 (libc6,x86-64) => /lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
	libtcmalloc_debug.so.4 (libc6,x86-64) => /lib/x86_64-linux-gnu/libtcmalloc_debug.so.4
	libtcmalloc.so.4 (libc6,x86-64) => /lib/x86_64-linux-gnu/libtcmalloc.so.4
	libc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
"""


def test_ldconfig_listing_gives_the_full_library_first_then_the_minimal_one():
    assert allocator.tcmalloc_in_ldconfig(LDCONFIG) == "/lib/x86_64-linux-gnu/libtcmalloc.so.4"
    minimal_only = "\n".join(line for line in LDCONFIG.splitlines() if "tcmalloc.so.4" not in line)
    assert allocator.tcmalloc_in_ldconfig(minimal_only) == (
        "/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
    )
    assert allocator.tcmalloc_in_ldconfig(LDCONFIG.splitlines()[-1]) is None


def test_process_maps_tell_whether_tcmalloc_is_loaded():
    loaded = "7f00-7f10 r-xp 00000000 08:01 42 /usr/lib/x86_64-linux-gnu/libtcmalloc.so.4.5.9\n"
    assert allocator.tcmalloc_loaded(loaded) is True
    assert allocator.tcmalloc_loaded("7f00-7f10 r-xp 0 08:01 7 /lib/libc.so.6\n") is False


def test_cpu_launch_hint_names_the_preload_or_the_package_and_nothing_on_tcmalloc(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda: False)
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/opt/libtcmalloc.so.4")
    assert "LD_PRELOAD=/opt/libtcmalloc.so.4" in allocator.cpu_launch_hint()
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert "libgoogle-perftools4" in allocator.cpu_launch_hint()
    for state in (True, None):  # on tcmalloc, or not Linux
        monkeypatch.setattr(allocator, "tcmalloc_loaded", lambda state=state: state)
        assert allocator.cpu_launch_hint() is None
