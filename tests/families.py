"""The optional env families in the tests: their tests skip, with the install command, where a
family is not installed, except where the environment says it must be: the README's test command
installs MaMuJoCo, SMAX and SUMO (requirements-dev.txt) and sets
CLEANMARL_REQUIRE_FAMILIES=mujoco,smax,atsc, so there a missing or broken install fails the run
instead of passing it with skips."""

import os

REQUIRED = {name.strip() for name in os.environ.get("CLEANMARL_REQUIRE_FAMILIES", "").split(",") if name.strip()}


def installed(family, probe, install):
    """Whether probe() (which imports the family's packages) succeeds. Any exception counts as not
    installed (a broken install raises more than ImportError), unless the family is required."""
    try:
        probe()
        return True
    except Exception as e:
        if family in REQUIRED:
            raise RuntimeError(f"{family} is required here (CLEANMARL_REQUIRE_FAMILIES) but does not import: {e!r}; "
                               f"{install}") from e
        return False
