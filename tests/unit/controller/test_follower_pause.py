"""How long a follower waits between its reads of the store."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.leadership import FOLLOWER_RELOAD_SHARE, follower_pause


def test_a_small_state_is_read_every_refresh() -> None:
    assert follower_pause(1.0, 0.0) == 1.0
    assert follower_pause(1.0, 0.05) == 1.0


def test_a_long_reload_is_followed_by_a_longer_pause() -> None:
    assert follower_pause(1.0, 3.0) == 27.0  # 3 s of every 30 s


@given(st.floats(0.01, 60), st.floats(0, 600))
def test_reloading_takes_at_most_its_share_of_the_time(refresh: float, reload_s: float) -> None:
    pause = follower_pause(refresh, reload_s)
    assert pause >= refresh
    assert reload_s <= FOLLOWER_RELOAD_SHARE * (reload_s + pause) * (1 + 1e-9)
