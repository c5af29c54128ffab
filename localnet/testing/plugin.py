"""pytest plugin (entry point `localnet` in the `pytest11` group): registers a hypothesis profile `localnet`
without deadlines — a JIT backend compiles on its first call, which trips hypothesis's default 200 ms deadline
(DESIGN §7) — and loads it unless the run chose a profile with `--hypothesis-profile`. Disable with
`-p no:localnet`."""

from __future__ import annotations

PROFILE = "localnet"


def pytest_configure(config):
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # hypothesis is not installed: nothing to configure
        return
    settings.register_profile(PROFILE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    chosen = None
    try:
        chosen = config.getoption("hypothesis_profile")
    except (ValueError, AttributeError):
        pass
    if not chosen:
        settings.load_profile(PROFILE)
